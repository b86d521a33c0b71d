"""The funding status, posted on the instance where members see it (``[coop] announce = true``).

Each app posts it where its members see it, the way the app allows: its catalog entry's ``announce``
(``provision/apps/<app>.py``, where what each app really offers is written down, checked in its source).
This module holds what they share: the text, the marked section it replaces, requests as data and their
sender (httpx, bounded timeouts, one try each), and the TLS trust of the stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from provision.errors import HookError

START = "[//]: # (fedi-funding-start)"  # a markdown link definition: renders as nothing
END = "[//]: # (fedi-funding-end)"
MARKER = "(funding status posted by fedi)"  # ends the text, so fedi finds its own (plain-text announcements)
TIMEOUT_S = 15.0


def funding_text(report: Any, today: date | None = None, *, markdown: bool = True) -> str:
    """The members' paragraph: ``report`` is a :class:`provision.dues.DuesReport`.

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


# ---- HTTP requests as data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # below the instance's base URL
    json: dict[str, Any] | None = field(default=None, repr=False)  # repr=False: a login body holds a password
    bearer: bool = False  # send the session token


def send(client: Any, base_url: str, request: Request, token: str = "") -> dict[str, Any]:
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


# ---- what the billing events carry ------------------------------------------------------------------


def event_data(
    spec: Any, outputs: Any = None, cost: Any = None, *, previous_size: str | None = None, account: Any = None
) -> dict[str, Any]:
    """The ``data`` of a billing event: the stack, its size, the cost breakdown and the dues figures.

    Holds nothing secret: names, sizes, prices and public addresses only. The dues figures need a
    monthly cost and a valid [coop] table; otherwise ``dues`` is null and ``dues_error`` says why.
    With ``account`` (an :class:`provision.account.AccountBill`; the cost.monthly event), ``cost`` is the
    stack's own lines plus its share of the shared lines, ``account`` the account's whole bill, and the
    dues are figured on the account's total (``dues_basis``: "account"), as `fedi coop dues` does.
    """
    from provision.dues import compute_dues, parse_coop
    from provision.errors import FediError

    data: dict[str, Any] = {
        "stack": spec.stack_name,
        "domain": spec.domain,
        "software": spec.software,
        "app": spec.app,
        "size": spec.size,
        "location": spec.location,
        "provider": spec.provider,
        "ephemeral": spec.ephemeral,
    }
    if previous_size:
        data["previous_size"] = previous_size
    if outputs is not None:
        data["server_type"] = outputs.server_type
        data["ipv4"], data["ipv6"] = outputs.ipv4, outputs.ipv6
    data["cost"] = cost.as_dict() if cost is not None else None
    data["dues"] = None
    if account is not None:
        data["account"] = account.as_dict()
        data["dues_basis"] = "account"
    coop = (spec.extra or {}).get("coop")
    if coop and cost is not None and getattr(cost, "hours", None) is None:
        try:
            data["dues"] = compute_dues(parse_coop(coop), account if account is not None else cost).as_dict()
        except FediError as err:
            data["dues_error"] = err.line()
    return data


def announce(spec: Any, report: Any, provider: Any, *, base_url: str | None = None, run: Any = None) -> str:
    """Post ``report`` on ``spec``'s instance the way its app allows (see the module docstring).

    ``provider`` gives the stack's outputs (SSH access, for Mastodon; the CA to trust) and its stored
    secrets (the Lemmy admin's password; read only); ``run`` is :func:`provision.remote.run`;
    ``base_url`` defaults to https://<domain>. The certificate is always verified: against the stack's
    own CA bundle where it has one (Caddy's internal CA on the local provider), else the system's roots.
    """
    from provision import apps

    base_url = base_url or f"https://{spec.domain}"
    outputs = provider.outputs(spec.stack_name)
    return apps.get(spec.app).announce(spec, report, provider, outputs, base_url=base_url, run=run)


def tls_context(spec: Any, outputs: Any) -> Any:
    """What to trust for the stack's HTTPS: its CA bundle (as the health checks do), else the system's roots."""
    import ssl

    from provision.lifecycle import health_target, staging_issuer_path

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
    from provision.dues import parse_coop
    from provision.hooks import parse_hooks

    parse_hooks(config)
    if "coop" in config:
        parse_coop(config["coop"])
