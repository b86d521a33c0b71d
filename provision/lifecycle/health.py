"""Is the instance up? HTTPS with a valid certificate, HTTP -> HTTPS, nodeinfo, the app's API, webfinger,
and an instance actor with a public key (an instance that cannot sign cannot federate).

Certificates are always verified: against the system CAs, or against a given CA bundle (Caddy's
internal root for local stacks). Verification is never turned off. A ``Target`` may name the address to connect
to (a local stack with no DNS): the domain is still the TLS server name (SNI and certificate check)
and the Host header, so the checks see exactly what a visitor would.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from provision import apps
from provision.apps import CheckFailed, field_of
from provision.errors import HealthError

FRONT_CHECKS = ("https", "http-redirect")  # what is checked when the app's containers are not started

NODEINFO_SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/"

# The instance's own ActivityPub actor, whose key signs the instance's fetches and deliveries: each app
# serves it as JSON with publicKey.publicKeyPem at its catalog entry's ``actor_path`` (sources named there).
ACTIVITYPUB_ACCEPT = 'application/activity+json, application/ld+json; profile="https://www.w3.org/ns/activitystreams"'


@dataclass(frozen=True)
class Target:
    domain: str  # the instance's hostname: SNI, certificate name and Host header
    app: str  # mastodon | lemmy | mbin
    admin_username: str = "admin"  # webfinger acct:<admin_username>@<domain>
    address: str | None = None  # connect here instead of resolving the domain (local stacks)
    https_port: int = 443
    http_port: int = 80
    ca_bundle: Path | None = None  # PEM certificates to trust instead of the system's roots: Caddy's internal
    # root (local stacks) or the Let's Encrypt staging intermediate read from the server (ephemeral stacks)
    netns: str | None = None  # run the checks from inside this network namespace (/proc/<pid>/ns/net)
    app_started: bool = True  # False where the app's images cannot be pulled: the app's checks are skipped


@dataclass(frozen=True)
class Check:
    name: str  # https | http-redirect | nodeinfo | api | webfinger | actor
    ok: bool  # False for a skipped check: it proved nothing
    detail: str  # what was seen (or why it was not checked), one line
    skipped: bool = False  # True: it could not run (the app's containers are not started)


@dataclass(frozen=True)
class HealthReport:
    target: Target
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """No check that ran failed (skipped checks are not failures; see ``complete``)."""
        return all(c.ok for c in self.checks if not c.skipped)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok and not c.skipped)

    @property
    def skipped(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.skipped)

    @property
    def complete(self) -> bool:
        """Every check ran and passed: the app itself answered."""
        return self.ok and not self.skipped

    def line(self) -> str:
        if self.ok:
            line = f"https://{self.target.domain} is healthy"
            if self.skipped:
                line += f" (not checked: {', '.join(c.name for c in self.skipped)}: {self.skipped[0].detail})"
            return line
        return "; ".join(f"{c.name}: {c.detail}" for c in self.failed)


class _Probe:
    def __init__(self, target: Target, timeout: float):
        import httpx

        self.target = target
        self.timeout = timeout
        cafile = str(target.ca_bundle) if target.ca_bundle else None
        context = ssl.create_default_context(cafile=cafile)  # system roots unless a bundle is given
        if cafile:  # trust exactly the given certificates, even an intermediate (Let's Encrypt staging's)
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.client = httpx.Client(verify=context, timeout=timeout, follow_redirects=False, trust_env=False)

    def get(self, path: str, *, scheme: str = "https", accept: str | None = None) -> Any:
        import httpx

        t = self.target
        port = t.https_port if scheme == "https" else t.http_port
        default = 443 if scheme == "https" else 80
        url = httpx.URL(scheme=scheme, host=t.address or t.domain, port=port, raw_path=path.encode())
        headers = {
            "Host": t.domain if port == default else f"{t.domain}:{port}",
            "Accept": accept or "application/json, application/jrd+json;q=0.9, */*;q=0.1",
            "User-Agent": "fedi-health/1",
        }
        extensions = {"sni_hostname": t.domain} if scheme == "https" else {}
        try:
            return self.client.get(url, headers=headers, extensions=extensions)
        except httpx.TimeoutException:
            raise CheckFailed(f"no answer within {self.timeout:g}s ({scheme}://{t.domain}{path})") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason.lower():
                raise CheckFailed(f"certificate not valid for {t.domain}: {_ssl_reason(reason)}") from None
            raise CheckFailed(f"cannot connect to {scheme}://{t.domain}{path}: {reason}") from None

    def json(self, path: str, *, accept: str | None = None) -> Any:
        response = self.get(path, accept=accept)
        if response.status_code != 200:
            raise CheckFailed(f"{path} answered {response.status_code}")
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            raise CheckFailed(f"{path} did not answer JSON") from None

    def close(self) -> None:
        self.client.close()


def _ssl_reason(text: str) -> str:
    marker = "certificate verify failed:"
    if marker in text:
        return text.split(marker, 1)[1].split("(_ssl")[0].strip()
    return text


def _https(p: _Probe) -> str:
    response = p.get("/")
    status, domain = response.status_code, p.target.domain
    if status < 400:
        return f"HTTPS {status}, certificate valid for {domain}"
    if not p.target.app_started and status in (502, 503, 504):  # the proxy answers; its app is not there
        return f"HTTPS {status} from the proxy, certificate valid for {domain} (the app's containers are not started)"
    raise CheckFailed(f"/ answered {status} over HTTPS")


def _redirect(p: _Probe) -> str:
    response = p.get("/", scheme="http")
    location = response.headers.get("location", "")
    if response.status_code not in (301, 302, 307, 308):
        raise CheckFailed(f"http:// answered {response.status_code} instead of redirecting to https://")
    if not location.startswith(f"https://{p.target.domain}"):
        raise CheckFailed(f"http:// redirects to {location!r}, not to https://{p.target.domain}")
    return f"{response.status_code} -> {location}"


def _nodeinfo(p: _Probe) -> str:
    index = p.json("/.well-known/nodeinfo")
    links = [
        link
        for link in (index.get("links", []) if isinstance(index, dict) else [])
        if isinstance(link, dict) and str(link.get("rel", "")).startswith(NODEINFO_SCHEMA)
    ]
    if not links:
        raise CheckFailed("/.well-known/nodeinfo lists no nodeinfo schema link")
    href = str(max(links, key=lambda link: str(link["rel"]))["href"])
    parts = urlsplit(href)
    if parts.scheme != "https" or parts.hostname != p.target.domain:
        raise CheckFailed(f"nodeinfo links to {href!r}, not to https://{p.target.domain}")
    doc = p.json(parts.path + (f"?{parts.query}" if parts.query else ""))
    software = doc.get("software", {}) if isinstance(doc, dict) else {}
    name, expected = software.get("name"), apps.get(p.target.app).nodeinfo_name
    if name != expected:
        raise CheckFailed(f"nodeinfo says the software is {name!r}, expected {expected!r}")
    return f"{name} {software.get('version', '?')}"


def _api(p: _Probe) -> str:
    """The app's own API describes this domain (the check is the app's: its catalog entry's ``api_check``)."""
    return apps.get(p.target.app).api_check(p.json, p.target.domain)


def _webfinger(p: _Probe) -> str:
    acct = f"acct:{p.target.admin_username}@{p.target.domain}"
    data = p.json(f"/.well-known/webfinger?resource={quote(acct, safe=':@')}")
    if str(field_of(data, "subject") or "").lower() != acct.lower():
        raise CheckFailed(f"webfinger for {acct} answered subject {field_of(data, 'subject')!r}")
    selves = [
        link
        for link in (data.get("links") or [])
        if isinstance(link, dict) and link.get("rel") == "self" and "activity+json" in str(link.get("type", ""))
    ]
    if not selves:
        raise CheckFailed(f"webfinger for {acct} has no ActivityPub self link")
    return f"{acct} -> {selves[0].get('href')}"


def _actor(p: _Probe) -> str:
    """The instance actor has a usable public key: the instance can sign its fetches and deliveries."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    path = apps.get(p.target.app).actor_path
    try:
        data = p.json(path, accept=ACTIVITYPUB_ACCEPT)
    except CheckFailed as exc:
        raise CheckFailed(f"{exc}: no instance actor, so the instance cannot sign") from None
    actor_id = str(field_of(data, "id") or "")
    if urlsplit(actor_id).hostname != p.target.domain:
        raise CheckFailed(f"the instance actor {path} has id {actor_id!r}, not one on {p.target.domain}")
    pem = field_of(field_of(data, "publicKey"), "publicKeyPem")
    if not isinstance(pem, str) or not pem.strip():
        raise CheckFailed(f"the instance actor {path} has no publicKey.publicKeyPem: the instance cannot sign")
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, RSAPublicKey):  # HTTP signatures between these apps are RSA (rsa-sha256)
        raise CheckFailed(f"the instance actor {path} has a publicKeyPem that is not an RSA public key")
    return f"{actor_id} has a {key.key_size}-bit RSA public key"


CHECKS: tuple[tuple[str, Callable[[_Probe], str]], ...] = (
    ("https", _https),
    ("http-redirect", _redirect),
    ("nodeinfo", _nodeinfo),
    ("api", _api),
    ("webfinger", _webfinger),
    ("actor", _actor),
)
NOT_STARTED = "not checked: the app's containers are not started"


def check(target: Target, *, timeout: float = 10) -> HealthReport:
    """Run every check once (without the app, its checks are reported as skipped); each request is bounded
    by ``timeout``."""
    apps.get(target.app)  # ValueError for an app the catalog does not hold

    def run() -> HealthReport:
        probe = _Probe(target, timeout)
        results = []
        try:
            for name, fn in CHECKS:
                if not target.app_started and name not in FRONT_CHECKS:
                    results.append(Check(name, False, NOT_STARTED, skipped=True))
                    continue
                try:
                    results.append(Check(name, True, fn(probe)))
                except CheckFailed as exc:
                    results.append(Check(name, False, str(exc)))
        finally:
            probe.close()
        return HealthReport(target, tuple(results))

    if target.netns:
        from provision.remote.netns import call_in_netns  # light: no paramiko

        return call_in_netns(target.netns, run)
    return run()


def wait(
    target: Target,
    *,
    timeout: float = 600,
    attempt_timeout: float = 10,
    first_delay: float = 2,
    max_delay: float = 30,
    progress: Callable[[str], None] | None = None,
) -> HealthReport:
    """Check until healthy, with exponential backoff; HealthError naming the failing checks after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay, attempts, last_line = first_delay, 0, ""
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        report = check(target, timeout=max(0.2, min(attempt_timeout, remaining)))
        if report.ok:
            return report
        if progress and report.line() != last_line:
            progress(f"waiting for https://{target.domain}: {report.line()}")
        last_line = report.line()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            err = HealthError(
                f"https://{target.domain} is not healthy after {timeout:g}s ({attempts} attempts): {report.line()}"
            )
            err.report = report  # type: ignore[attr-defined]
            err.attempts = attempts  # type: ignore[attr-defined]
            raise err
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_delay)
