"""The funding status, posted on the instance where members see it (``[coop] announce = true``).

What each app really offers (checked in each app's source):

- **Mastodon** has no API to create announcements: ``/api/v1/announcements`` only lists and dismisses
  them, and there is no ``/api/v1/admin/announcements``; admins create them in the web admin
  (``Admin::AnnouncementsController``). fedi does what that controller does - ``Announcement.create``
  (published at once when it has no ``scheduled_at``) then ``PublishScheduledAnnouncementWorker`` - in
  ``bin/rails runner`` inside the ``web`` container, over SSH, and removes its previous funding
  announcement the way the controller's ``destroy`` does. No token is needed; the text travels in an
  environment variable of ``docker compose exec``, never inside the Ruby code.
- **Lemmy** (0.19) has no announcements; the site sidebar (markdown, on every front page) is the place.
  fedi logs in as the admin (``POST /api/v3/user/login``), reads the sidebar (``GET /api/v3/site``) and
  writes it back (``PUT /api/v3/site``) with its own section replaced between two invisible markdown
  comments, leaving the rest of the sidebar as the admins wrote it.
- **mbin** keeps instance pages (about, contact, faq, terms, privacyPolicy): ``GET /api/instance`` reads
  them and ``PUT /api/instance/about`` with ``{"body": ...}`` writes one; it needs an OAuth2 token of an
  admin with the ``admin:instance:information:edit`` scope, read from ``$FEDI_MBIN_TOKEN``.

Requests and commands are built as data by pure functions; :func:`post_lemmy` and :func:`post_mbin` send
them with httpx (bounded timeouts, one try each).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from provision.errors import HookError, MissingPrerequisite

START = "[//]: # (fedi-funding-start)"  # a markdown link definition: renders as nothing
END = "[//]: # (fedi-funding-end)"
MARKER = "(funding status posted by fedi)"  # ends the Mastodon announcement, so fedi finds its own
MBIN_TOKEN_ENV = "FEDI_MBIN_TOKEN"
TIMEOUT_S = 15.0
APP_DIR = "/opt/fedi/app"


def funding_text(report: Any, today: date | None = None, *, markdown: bool = True) -> str:
    """The members' paragraph: ``report`` is a :class:`provision.billing.dues.DuesReport`.

    Mastodon shows announcements as plain text (links and hashtags only), Lemmy and mbin as markdown.
    """
    today = today or date.today()
    title = f"Funding, {today:%B %Y}"
    return f"{f'**{title}**' if markdown else title}\n\n{report.summary()}\n\n{MARKER}"


def replace_section(markdown: str, section: str) -> str:
    """``markdown`` with fedi's section (between START and END) replaced by ``section``, or appended."""
    block = f"{START}\n{section}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(markdown or ""):
        return pattern.sub(lambda _: block, markdown, count=1)
    return f"{markdown.rstrip()}\n\n{block}" if markdown and markdown.strip() else block


# ---- Mastodon: rails runner over SSH --------------------------------------------------------------

# Runs inside the web container. Mirrors Admin::AnnouncementsController#create and #destroy.
MASTODON_RUBY = (
    "text = ENV.fetch('FEDI_FUNDING'); "
    "old = Announcement.where('text LIKE ?', '%' + ENV.fetch('FEDI_FUNDING_MARKER')).to_a; "
    "a = Announcement.create!(text: text); "
    "PublishScheduledAnnouncementWorker.perform_async(a.id); "
    "old.each { |o| o.destroy!; UnpublishAnnouncementWorker.perform_async(o.id) if o.published? }; "
    "puts a.id"
)


def mastodon_argv(text: str, *, app_dir: str = APP_DIR, service: str = "web") -> list[str]:
    """The command (run as the admin user over SSH) that publishes ``text`` as an announcement."""
    return [
        "sudo", "-n", "--",
        "docker", "compose", "--project-directory", app_dir, "-p", "fedi",
        "exec", "-T",
        "-e", f"FEDI_FUNDING={text}",
        "-e", f"FEDI_FUNDING_MARKER={MARKER}",
        service, "bin/rails", "runner", MASTODON_RUBY,
    ]  # fmt: skip


# ---- Lemmy and mbin: HTTP requests as data ------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # below the instance's base URL
    json: dict[str, Any] | None = field(default=None, repr=False)  # repr=False: a login body holds a password
    bearer: bool = False  # send the session token


def lemmy_login(username: str, password: str) -> Request:
    return Request("POST", "/api/v3/user/login", {"username_or_email": username, "password": password})


def lemmy_get_site() -> Request:
    return Request("GET", "/api/v3/site", bearer=True)


def lemmy_edit_sidebar(current: str, text: str) -> Request:
    return Request("PUT", "/api/v3/site", {"sidebar": replace_section(current, text)}, bearer=True)


def mbin_get_pages() -> Request:
    return Request("GET", "/api/instance", bearer=True)


def mbin_edit_about(current: str, text: str) -> Request:
    return Request("PUT", "/api/instance/about", {"body": replace_section(current, text)}, bearer=True)


def _send(client: Any, base_url: str, request: Request, token: str = "") -> dict[str, Any]:
    import httpx

    headers = {"Accept": "application/json"}
    if request.bearer:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = client.request(
            request.method, base_url.rstrip("/") + request.path, json=request.json, headers=headers
        )
    except httpx.HTTPError as exc:
        raise HookError(f"{request.method} {request.path}: {type(exc).__name__}") from None
    if response.status_code >= 300:
        raise HookError(f"{request.method} {request.path}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise HookError(f"{request.method} {request.path}: the answer is not JSON") from None


def post_lemmy(base_url: str, username: str, password: str, text: str, *, verify: Any = True) -> str:
    """Log in as the admin and put ``text`` in the site sidebar. Returns a line saying what was done."""
    import httpx

    with httpx.Client(timeout=TIMEOUT_S, verify=verify, follow_redirects=False) as client:
        jwt = _send(client, base_url, lemmy_login(username, password)).get("jwt")
        if not jwt:
            raise HookError("Lemmy login returned no token (is the admin's e-mail verified?)")
        site = _send(client, base_url, lemmy_get_site(), jwt)
        current = ((site.get("site_view") or {}).get("site") or {}).get("sidebar") or ""
        _send(client, base_url, lemmy_edit_sidebar(current, text), jwt)
    return "funding status written to the Lemmy site sidebar"


def post_mbin(base_url: str, text: str, *, token: str | None = None, verify: Any = True) -> str:
    """Put ``text`` on mbin's About page with an admin OAuth2 token."""
    import os

    import httpx

    token = token or os.environ.get(MBIN_TOKEN_ENV, "")
    if not token:
        raise MissingPrerequisite(
            f"set ${MBIN_TOKEN_ENV} to an mbin admin OAuth2 token with the admin:instance:information:edit scope"
        )
    with httpx.Client(timeout=TIMEOUT_S, verify=verify, follow_redirects=False) as client:
        pages = _send(client, base_url, mbin_get_pages(), token)
        _send(client, base_url, mbin_edit_about(pages.get("about") or "", text), token)
    return "funding status written to the mbin About page"


# ---- what the billing events carry ------------------------------------------------------------------


def announce(spec: Any, report: Any, provider: Any, *, base_url: str | None = None, run: Any = None) -> str:
    """Post ``report`` on ``spec``'s instance the way its app allows (see the module docstring).

    ``provider`` gives the stack's outputs (SSH access, for Mastodon; the CA to trust) and its stored
    secrets (the Lemmy admin's password; read only); ``run`` is :func:`provision.remote.run`;
    ``base_url`` defaults to https://<domain>. The certificate is always verified: against the stack's
    own CA bundle where it has one (Caddy's internal CA on the local provider), else the system's roots.
    """
    base_url = base_url or f"https://{spec.domain}"
    outputs = provider.outputs(spec.stack_name)
    if spec.app == "mastodon":
        if run is None:
            from provision.remote import run
        rc, out, err = run(outputs.access, mastodon_argv(funding_text(report, markdown=False)))
        if rc != 0:
            last = (err or out).strip().splitlines()[-1:] or [f"exit {rc}"]
            raise HookError(f"the Mastodon announcement failed: {last[0][:200]}")
        announcement_id = (out.strip().splitlines() or [""])[-1]
        return f"funding status published as Mastodon announcement {announcement_id}".rstrip()
    verify = tls_context(spec, outputs)
    if spec.app == "lemmy":
        password = provider.stored_secrets(spec.stack_name).get("admin_password", "")
        if not password:
            raise MissingPrerequisite(f"no admin password in the secrets of stack {spec.stack_name}")
        return post_lemmy(base_url, spec.admin_username, password, funding_text(report), verify=verify)
    return post_mbin(base_url, funding_text(report), verify=verify)


def tls_context(spec: Any, outputs: Any) -> Any:
    """What to trust for the stack's HTTPS: its CA bundle (as the health checks do), else the system's roots."""
    import ssl

    from provision.lifecycle.stack import health_target, staging_issuer_path

    ca = health_target(spec, outputs).ca_bundle
    if ca is None and spec.ephemeral and staging_issuer_path(outputs.stack).exists():
        ca = staging_issuer_path(outputs.stack)
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca:  # a staging intermediate is trusted on its own, as the health checks trust it
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def validate_config(config: dict[str, Any]) -> None:
    """Check fedi.toml's [hooks] and (if present) [coop] at the edge, before anything is created.

    Raises ValidationError with the bad key's path (``hooks/urls[0]: ...``, ``coop/dues: ...``).
    """
    from provision.billing.dues import parse_coop
    from provision.billing.hooks import parse_hooks

    parse_hooks(config)
    if "coop" in config:
        parse_coop(config["coop"])
