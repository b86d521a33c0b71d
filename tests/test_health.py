"""Health checks against real HTTPS and HTTP servers on loopback, with test CAs made here.

The servers are Python's http.server (TLS through ssl) serving nodeinfo, webfinger and each app's API
as the real apps shape them; the client connects to 127.0.0.1 with the domain as SNI and Host.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provision import apps
from provision.errors import HealthError
from provision.lifecycle import health

DOMAIN = "social.example.test"


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def pem(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, tmp: Path, name: str, *, chain: bool = False) -> tuple[Path, Path]:
        """A server certificate for ``name`` (followed by this CA's, with ``chain``); returns (cert, key) files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = tmp / f"{name}-{id(cert)}.crt", tmp / f"{name}-{id(cert)}.key"
        pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_path.write_bytes(pem + (self.cert.public_bytes(serialization.Encoding.PEM) if chain else b""))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


def make_ca(name: str, parent: CA | None = None) -> CA:
    """A root CA, or an intermediate signed by ``parent``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.cert.subject if parent else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(parent.key if parent else key, hashes.SHA256())
    )
    return CA(key, cert)


Route = Callable[[], tuple[int, Any]]  # -> (status, JSON body)
AP = "activitypub "  # route key prefix: answered only to an ActivityPub Accept header (Lemmy's "/")
_RSA_PEM: list[str] = []


def rsa_public_pem() -> str:
    """A real RSA public key in PEM, as the apps store it (made once per test session: RSA is slow)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not _RSA_PEM:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        _RSA_PEM.append(pem.decode())
    return _RSA_PEM[0]


def actor_document(app: str, domain: str = DOMAIN) -> dict[str, Any]:
    """The instance actor in each app's shape (sources named at each app's actor_path in provision/apps/)."""
    actor_id = f"https://{domain}" + {"mastodon": "/actor", "lemmy": "/", "mbin": "/i/actor"}[app]
    return {
        "@context": ["https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"],
        "id": actor_id,
        "type": "Application",
        "preferredUsername": domain,
        "inbox": f"https://{domain}/inbox",
        "publicKey": {"id": f"{actor_id}#main-key", "owner": actor_id, "publicKeyPem": rsa_public_pem()},
    }


def app_routes(app: str, domain: str = DOMAIN) -> dict[str, Route]:
    """What the apps answer, in the shapes their APIs use."""
    routes: dict[str, Route] = {
        "/": lambda: (200, "<html>welcome</html>"),
        "/.well-known/nodeinfo": lambda: (
            200,
            {
                "links": [
                    {
                        "rel": "http://nodeinfo.diaspora.software/ns/schema/2.0",
                        "href": f"https://{domain}/nodeinfo/2.0",
                    },
                    {
                        "rel": "http://nodeinfo.diaspora.software/ns/schema/2.1",
                        "href": f"https://{domain}/nodeinfo/2.1",
                    },
                ]
            },
        ),
        "/nodeinfo/2.1": lambda: (
            200,
            {"version": "2.1", "software": {"name": apps.get(app).nodeinfo_name, "version": "9.9"}},
        ),
        "/nodeinfo/2.0": lambda: (500, {"error": "2.0 must not be used when 2.1 is offered"}),
        f"/.well-known/webfinger?resource=acct:admin@{domain}": lambda: (
            200,
            {
                "subject": f"acct:admin@{domain}",
                "links": [
                    {"rel": "self", "type": "application/activity+json", "href": f"https://{domain}/users/admin"}
                ],
            },
        ),
    }
    routes[AP + apps.get(app).actor_path] = lambda: (200, actor_document(app, domain))
    if app == "mastodon":
        routes["/api/v2/instance"] = lambda: (200, {"domain": domain, "version": "4.7.3", "title": "Mastodon"})
    elif app == "lemmy":
        routes["/api/v3/site"] = lambda: (
            200,
            {"site_view": {"site": {"name": "lemmy", "actor_id": f"https://{domain}/"}}, "version": "0.19.20"},
        )
    else:
        routes["/api/info"] = lambda: (
            200,
            {"softwareName": "mbin", "softwareVersion": "1.10.1", "websiteDomain": domain},
        )
    return routes


@dataclass
class Site:
    """An HTTPS server and an HTTP server on loopback; tests change ``routes`` and ``redirect`` freely."""

    https_port: int = 0
    http_port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    redirect: bool = True
    hits: dict[str, int] = field(default_factory=dict)
    hosts: list[tuple[str, str]] = field(default_factory=list)  # (Host header, SNI) per HTTPS request


def serve(site: Site, cert: Path, key: Path) -> list[ThreadingHTTPServer]:
    sni_seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if not isinstance(self.connection, ssl.SSLSocket):
                if site.redirect:
                    self.send_response(308)
                    self.send_header("Location", f"https://{DOMAIN}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(200, "plain http")
                return
            site.hits[self.path] = site.hits.get(self.path, 0) + 1
            site.hosts.append((self.headers.get("Host", ""), sni_seen[-1] if sni_seen else ""))
            activitypub = "activity+json" in self.headers.get("Accept", "")
            route = (site.routes.get(AP + self.path) if activitypub else None) or site.routes.get(self.path)
            self._send(*(route() if route else (404, {"error": "not found"})))

        def _send(self, status: int, body: Any) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: sni_seen.append(name or "")
    https = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    https.socket = context.wrap_socket(https.socket, server_side=True)
    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    site.https_port, site.http_port = https.server_address[1], http.server_address[1]
    for server in (https, http):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return [https, http]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    good, other = make_ca("fedi test CA"), make_ca("some other CA")
    return {"ca": good, "other": other, "bundle": good.pem(tmp_path / "ca.pem"), "tmp": tmp_path}


@contextlib.contextmanager
def serving(site: Site, pki: dict[str, Any]) -> Iterator[Site]:
    """``site`` on https and http with a certificate for DOMAIN from the test CA, shut down afterwards."""
    servers = serve(site, *pki["ca"].issue(pki["tmp"], DOMAIN))
    try:
        yield site
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def site(pki: dict[str, Any]) -> Iterator[Site]:
    with serving(Site(routes=app_routes("mastodon")), pki) as s:
        yield s


def target(site: Site, pki: dict[str, Any], app: str = "mastodon", **kw: Any) -> health.Target:
    return health.Target(
        domain=DOMAIN,
        app=app,
        address="127.0.0.1",
        https_port=site.https_port,
        http_port=site.http_port,
        ca_bundle=pki["bundle"],
        **kw,
    )


@pytest.mark.parametrize("app", ["mastodon", "lemmy", "mbin"])
def test_a_healthy_instance(site: Site, pki: dict[str, Any], app: str) -> None:
    site.routes = app_routes(app)
    report = health.check(target(site, pki, app))
    assert report.ok, report.line()
    assert [c.name for c in report.checks] == ["https", "http-redirect", "nodeinfo", "api", "webfinger", "actor"]
    details = {c.name: c.detail for c in report.checks}
    assert details["nodeinfo"] == f"{apps.get(app).nodeinfo_name} 9.9"  # the 2.1 document, the newest offered
    assert details["http-redirect"] == f"308 -> https://{DOMAIN}/"
    assert details["webfinger"] == f"acct:admin@{DOMAIN} -> https://{DOMAIN}/users/admin"
    assert details["actor"] == f"https://{DOMAIN}{apps.get(app).actor_path} has a 2048-bit RSA public key"
    assert site.hits.get("/nodeinfo/2.0") is None
    # connected to 127.0.0.1, but spoke to the domain: Host header and TLS server name
    assert {host for host, _ in site.hosts} == {f"{DOMAIN}:{site.https_port}"}
    assert {sni for _, sni in site.hosts} == {DOMAIN}
    assert report.line() == f"https://{DOMAIN} is healthy"


def test_a_certificate_from_another_ca_fails(pki: dict[str, Any]) -> None:
    s = Site(routes=app_routes("mastodon"))
    servers = serve(s, *pki["other"].issue(pki["tmp"], DOMAIN))
    try:
        report = health.check(target(s, pki))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert not report.ok
    https = report.checks[0]
    assert https.name == "https" and not https.ok
    assert https.detail.startswith(f"certificate not valid for {DOMAIN}: ")
    assert "unable to get local issuer certificate" in https.detail
    assert s.hits == {}  # no request was ever sent over the untrusted connection
    assert report.checks[1].ok  # plain HTTP still redirects


def test_a_certificate_for_another_name_fails(pki: dict[str, Any]) -> None:
    s = Site(routes=app_routes("mastodon"))
    servers = serve(s, *pki["ca"].issue(pki["tmp"], "other.example.test"))
    try:
        report = health.check(target(s, pki))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert not report.checks[0].ok
    assert "certificate not valid" in report.checks[0].detail and "mismatch" in report.checks[0].detail.lower()


def test_system_roots_do_not_trust_a_private_ca(site: Site, pki: dict[str, Any]) -> None:
    report = health.check(replace(target(site, pki), ca_bundle=None))
    assert not report.checks[0].ok and "certificate not valid" in report.checks[0].detail


def test_failing_api_wrong_software_missing_redirect_and_unknown_admin(site: Site, pki: dict[str, Any]) -> None:
    site.routes["/api/v2/instance"] = lambda: (503, {"error": "starting"})
    site.routes["/nodeinfo/2.1"] = lambda: (200, {"software": {"name": "lemmy", "version": "0.19.20"}})
    site.routes.pop(f"/.well-known/webfinger?resource=acct:admin@{DOMAIN}")
    site.redirect = False
    report = health.check(target(site, pki))
    failed = {c.name: c.detail for c in report.failed}
    assert failed == {
        "http-redirect": "http:// answered 200 instead of redirecting to https://",
        "nodeinfo": "nodeinfo says the software is 'lemmy', expected 'mastodon'",
        "api": "/api/v2/instance answered 503",
        "webfinger": f"/.well-known/webfinger?resource=acct:admin@{DOMAIN} answered 404",
    }
    assert report.checks[0].ok


def test_api_for_another_domain_fails(site: Site, pki: dict[str, Any]) -> None:
    site.routes = app_routes("mastodon", domain="elsewhere.example")
    site.routes["/nodeinfo/2.1"] = app_routes("mastodon")["/nodeinfo/2.1"]
    report = health.check(target(site, pki))
    failed = {c.name: c.detail for c in report.failed}
    assert failed["api"] == f"/api/v2/instance names domain 'elsewhere.example', not '{DOMAIN}'"
    assert failed["nodeinfo"] == f"nodeinfo links to 'https://elsewhere.example/nodeinfo/2.1', not to https://{DOMAIN}"


def test_wait_reports_which_check_failed(site: Site, pki: dict[str, Any]) -> None:
    site.routes["/api/v2/instance"] = lambda: (502, "bad gateway")
    seen: list[str] = []
    with pytest.raises(HealthError) as err:
        health.wait(target(site, pki), timeout=1, first_delay=0.2, progress=seen.append)
    line = err.value.line()
    assert line.startswith(f"https://{DOMAIN} is not healthy after 1s (")
    assert line.endswith("api: /api/v2/instance answered 502")
    assert 2 <= err.value.attempts <= 5  # type: ignore[attr-defined]
    assert seen == [f"waiting for https://{DOMAIN}: api: /api/v2/instance answered 502"]  # said once, not per try


def test_wait_returns_once_the_instance_comes_up(site: Site, pki: dict[str, Any]) -> None:
    calls = {"n": 0}

    def booting() -> tuple[int, Any]:
        calls["n"] += 1
        return (503, "starting") if calls["n"] < 3 else (200, {"domain": DOMAIN, "version": "4.7.3"})

    site.routes["/api/v2/instance"] = booting
    report = health.wait(target(site, pki), timeout=60, first_delay=0.05)
    assert report.ok and calls["n"] == 3


def test_a_server_that_never_answers_is_bounded(pki: dict[str, Any]) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        t = health.Target(
            DOMAIN, "mastodon", address="127.0.0.1", https_port=port, http_port=port, ca_bundle=pki["bundle"]
        )
        report = health.check(t, timeout=0.3)
        assert not report.ok
        assert all(c.detail.startswith("no answer within 0.3s") for c in report.checks)
        with pytest.raises(HealthError) as err:
            health.wait(t, timeout=1, attempt_timeout=0.3, first_delay=0.1)
        assert err.value.attempts >= 1  # type: ignore[attr-defined]


def test_no_port_listening_is_a_clear_connect_failure(pki: dict[str, Any]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = health.Target(DOMAIN, "lemmy", address="127.0.0.1", https_port=port, http_port=port, ca_bundle=pki["bundle"])
    report = health.check(t, timeout=2)
    assert report.checks[0].detail.startswith(f"cannot connect to https://{DOMAIN}/: ")


def test_the_module_never_turns_verification_off() -> None:
    source = Path(health.__file__).read_text()
    assert "verify=False" not in source and "CERT_NONE" not in source and "check_hostname = False" not in source


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_checks_run_from_inside_a_network_namespace(pki: dict[str, Any]) -> None:
    from provision.remote.netns import call_in_netns

    holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep 300"])
    servers: list[ThreadingHTTPServer] = []
    try:
        netns = f"/proc/{holder.pid}/ns/net"
        for _ in range(100):  # bounded: until lo is up inside the new namespace
            probe = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "link", "show", "lo"], capture_output=True)
            if b"UP" in probe.stdout.split(b"mtu")[0]:
                break
            time.sleep(0.05)
        s = Site(routes=app_routes("lemmy"))
        servers = call_in_netns(netns, lambda: serve(s, *pki["ca"].issue(pki["tmp"], DOMAIN)))
        t = target(s, pki, "lemmy")
        outside = health.check(t, timeout=2)
        assert not outside.ok and outside.checks[0].detail.startswith("cannot connect")
        inside = health.check(replace(t, netns=netns), timeout=5)
        assert inside.ok, inside.line()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        holder.kill()
        holder.wait()


def test_without_the_app_only_the_https_front_is_checked(site: Site, pki: dict[str, Any]) -> None:
    site.routes = {"/": lambda: (502, "bad gateway")}  # Caddy in front of containers that were never started
    assert not health.check(target(site, pki)).ok
    site.hits.clear()
    report = health.check(target(site, pki, app_started=False))
    assert report.ok, report.line()
    assert not report.complete  # ...but the app was never seen: the app's checks are skipped, not passed
    assert [(c.name, c.ok, c.skipped) for c in report.checks] == [
        ("https", True, False),
        ("http-redirect", True, False),
        ("nodeinfo", False, True),
        ("api", False, True),
        ("webfinger", False, True),
        ("actor", False, True),
    ]
    assert report.failed == ()
    assert "the app's containers are not started" in report.checks[0].detail
    assert report.line() == (
        f"https://{DOMAIN} is healthy (not checked: nodeinfo, api, webfinger, actor: {health.NOT_STARTED})"
    )
    assert report.complete is False
    assert set(site.hits) == {"/"}  # nothing was asked of the app
    site.routes = {"/": lambda: (404, "no site here")}  # a wrong site still fails
    assert not health.check(target(site, pki, app_started=False)).ok


@pytest.mark.parametrize("app", ["mastodon", "lemmy", "mbin"])
def test_an_instance_that_cannot_sign_fails_the_actor_check(site: Site, pki: dict[str, Any], app: str) -> None:
    """mbin without `mbin:ap:keys:update` has no site key pair: its /i/actor fails (500), or, with a site
    row and no key, serves no usable publicKeyPem. Every other check still passes on such an instance."""
    site.routes = app_routes(app)
    path = apps.get(app).actor_path
    site.routes[AP + path] = lambda: (500, {"error": "Internal Server Error"})
    if app == "lemmy":  # "/" without the ActivityPub Accept header is lemmy-ui's page, still fine
        assert site.routes["/"]()[0] == 200
    report = health.check(target(site, pki, app))
    assert [(c.name, c.detail) for c in report.failed] == [
        ("actor", f"{path} answered 500: no instance actor, so the instance cannot sign")
    ]
    document = actor_document(app)
    document["publicKey"] = {"id": document["id"] + "#main-key", "owner": document["id"], "publicKeyPem": None}
    site.routes[AP + path] = lambda: (200, document)
    failed = health.check(target(site, pki, app)).failed
    assert [c.detail for c in failed] == [
        f"the instance actor {path} has no publicKey.publicKeyPem: the instance cannot sign"
    ]
    broken = dict(
        document, publicKey={"publicKeyPem": "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"}
    )
    site.routes[AP + path] = lambda: (200, broken)
    failed = health.check(target(site, pki, app)).failed
    assert [c.detail for c in failed] == [f"the instance actor {path} has a publicKeyPem that is not an RSA public key"]
    foreign = actor_document(app, domain="elsewhere.example")
    site.routes[AP + path] = lambda: (200, foreign)
    failed = health.check(target(site, pki, app)).failed
    assert [c.detail for c in failed] == [
        f"the instance actor {path} has id 'https://elsewhere.example{path}', not one on {DOMAIN}"
    ]


def test_the_actor_is_asked_for_with_an_activitypub_accept_header(site: Site, pki: dict[str, Any]) -> None:
    site.routes = app_routes("lemmy")
    site.routes.pop(AP + "/")  # lemmy-ui's HTML page is all that "/" serves: no actor
    failed = health.check(target(site, pki, "lemmy")).failed
    assert [c.name for c in failed] == ["actor"]
    assert failed[0].detail == "/ did not answer JSON: no instance actor, so the instance cannot sign"


def test_an_intermediate_read_from_the_server_can_be_the_trust_anchor(pki: dict[str, Any]) -> None:
    # Let's Encrypt staging: root unknown to every system; Caddy holds the leaf and the intermediate
    staging_root = make_ca("(STAGING) test root")
    intermediate = make_ca("(STAGING) test intermediate", parent=staging_root)
    sibling = make_ca("(STAGING) another intermediate", parent=staging_root)
    s = Site(routes=app_routes("mastodon"))
    servers = serve(s, *intermediate.issue(pki["tmp"], DOMAIN, chain=True))
    try:
        t = target(s, pki)
        assert health.check(replace(t, ca_bundle=intermediate.pem(pki["tmp"] / "int.pem"))).ok
        assert health.check(replace(t, ca_bundle=staging_root.pem(pki["tmp"] / "root.pem"))).ok
        wrong = health.check(replace(t, ca_bundle=sibling.pem(pki["tmp"] / "sibling.pem")))
        assert not wrong.checks[0].ok and "certificate not valid" in wrong.checks[0].detail
        assert not health.check(replace(t, ca_bundle=None)).checks[0].ok  # and never trusted by the system
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
