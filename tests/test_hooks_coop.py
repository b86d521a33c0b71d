"""The funding status on the instance: requests and commands as data, sent to a loopback stand-in.

The stand-ins answer with the shapes of Lemmy 0.19's and mbin's APIs as their source defines them
(LoginResponse.jwt, GetSiteResponse.site_view.site.sidebar, EditSite.sidebar; SiteResponseDto, PageDto);
they are not the apps themselves.
"""

from __future__ import annotations

import json
import shlex
import threading
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provision.apps import lemmy as lemmy_app
from provision.apps import mastodon as mastodon_app
from provision.apps import mbin as mbin_app
from provision.billing import coop, funding
from provision.billing.cost import CostBreakdown, CostLine, Price
from provision.billing.dues import compute_dues, parse_coop
from provision.errors import HookError, MissingPrerequisite

PASSWORD = "admin-password-for-the-test"
JWT = "jwt-for-the-test"


def report():
    price = Price(Decimal("10"), Decimal("11.90"))
    cost = CostBreakdown((CostLine("server", Decimal(1), "month", price, price),), "EUR", "table 2026-05-27")
    return compute_dues(parse_coop({"dues": 5, "period": "year", "members": 40, "subsidized": 2}), cost)


class App:
    """A loopback HTTP server with Lemmy's or mbin's endpoints for the sidebar / about page."""

    def __init__(self, kind: str, page: str = "", token: str = JWT):
        self.kind, self.page, self.token, self.calls = kind, page, token, []
        app = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code, body=None):
                payload = json.dumps(body or {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def _authorized(self):
                return self.headers.get("Authorization") == f"Bearer {app.token}"

            def do_POST(self):  # noqa: N802
                body = self._body()
                app.calls.append(("POST", self.path, body))
                if app.kind == "lemmy" and self.path == "/api/v3/user/login":
                    ok = body == {"username_or_email": "admin", "password": PASSWORD}
                    return self._reply(200 if ok else 400, {"jwt": JWT} if ok else {"error": "incorrect_login"})
                self._reply(404)

            def do_GET(self):  # noqa: N802
                app.calls.append(("GET", self.path, None))
                if not self._authorized():
                    return self._reply(401)
                if app.kind == "lemmy" and self.path == "/api/v3/site":
                    return self._reply(200, {"site_view": {"site": {"name": "l", "sidebar": app.page}}, "admins": []})
                if app.kind == "mbin" and self.path == "/api/instance":
                    return self._reply(
                        200, {"about": app.page, "contact": None, "faq": None, "terms": None, "privacyPolicy": None}
                    )
                self._reply(404)

            def do_PUT(self):  # noqa: N802
                body = self._body()
                app.calls.append(("PUT", self.path, body))
                if not self._authorized():
                    return self._reply(401)
                if app.kind == "lemmy" and self.path == "/api/v3/site" and set(body) == {"sidebar"}:
                    app.page = body["sidebar"]
                    return self._reply(200, {"site_view": {"site": {"sidebar": app.page}}})
                if app.kind == "mbin" and self.path == "/api/instance/about" and set(body) == {"body"}:
                    app.page = body["body"]
                    return self._reply(200, {"about": app.page})
                self._reply(400)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lemmy():
    app = App("lemmy", page="Welcome! Be excellent to each other.")
    yield app
    app.stop()


@pytest.fixture
def mbin():
    app = App("mbin", page="About us.")
    yield app
    app.stop()


def test_funding_text():
    text = funding.funding_text(report(), date(2026, 11, 1))
    assert text.startswith("**Funding, November 2026**") and text.endswith(funding.MARKER)
    assert "paying members cover it" in text
    plain = funding.funding_text(report(), date(2026, 11, 1), markdown=False)
    assert plain.startswith("Funding, November 2026\n") and "**" not in plain


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", f"{funding.START}\nNEW\n{funding.END}"),
        ("Rules.", f"Rules.\n\n{funding.START}\nNEW\n{funding.END}"),
        (
            f"Rules.\n\n{funding.START}\nOLD\n{funding.END}\n\nMore.",
            f"Rules.\n\n{funding.START}\nNEW\n{funding.END}\n\nMore.",
        ),
    ],
)
def test_replace_section(before, after):
    assert funding.replace_section(before, "NEW") == after


def test_lemmy_sidebar_is_updated_in_place(lemmy):
    text = funding.funding_text(report(), date(2026, 11, 1))
    assert "sidebar" in lemmy_app.post(lemmy.url, "admin", PASSWORD, text)
    assert lemmy.page.startswith("Welcome! Be excellent to each other.\n\n" + funding.START)
    assert text in lemmy.page
    # next month: the section is replaced, not added again
    lemmy_app.post(lemmy.url, "admin", PASSWORD, funding.funding_text(report(), date(2026, 12, 1)))
    assert lemmy.page.count(funding.START) == 1 and "December 2026" in lemmy.page and "November" not in lemmy.page
    methods = [(m, p) for m, p, _ in lemmy.calls]
    assert methods[:3] == [("POST", "/api/v3/user/login"), ("GET", "/api/v3/site"), ("PUT", "/api/v3/site")]
    # the password goes in the login body only
    assert all(PASSWORD not in json.dumps(body) for m, _, body in lemmy.calls if m != "POST")


def test_lemmy_wrong_password_is_one_line(lemmy):
    with pytest.raises(HookError, match=r"POST /api/v3/user/login: HTTP 400"):
        lemmy_app.post(lemmy.url, "admin", "wrong", "text")
    assert lemmy.page == "Welcome! Be excellent to each other."


def test_mbin_about_page(mbin, monkeypatch):
    monkeypatch.setenv(mbin_app.TOKEN_ENV, JWT)
    mbin_app.post(mbin.url, funding.funding_text(report(), date(2026, 11, 1)))
    assert mbin.page.startswith("About us.\n\n" + funding.START) and funding.MARKER in mbin.page
    assert [(m, p) for m, p, _ in mbin.calls] == [("GET", "/api/instance"), ("PUT", "/api/instance/about")]


def test_mbin_needs_a_token(mbin, monkeypatch):
    monkeypatch.delenv(mbin_app.TOKEN_ENV, raising=False)
    with pytest.raises(MissingPrerequisite, match="FEDI_MBIN_TOKEN"):
        mbin_app.post(mbin.url, "text")
    with pytest.raises(HookError, match="GET /api/instance: HTTP 401"):
        mbin_app.post(mbin.url, "text", token="wrong")
    assert mbin.page == "About us."


def test_unreachable_instance_is_one_line():
    app = App("lemmy")
    url = app.url
    app.stop()
    with pytest.raises(HookError, match="ConnectError"):
        lemmy_app.post(url, "admin", PASSWORD, "text")


def test_mastodon_command_as_data():
    text = funding.funding_text(report(), date(2026, 11, 1), markdown=False) + '\nIt\'s "quoted"; $(not run)'
    argv = mastodon_app.announce_argv(text, "fedi")
    assert argv[:13] == [
        "sudo", "-n", "-H", "--",
        "docker", "compose", "--project-directory", "/opt/fedi/app", "-f", "/opt/fedi/app/compose.yaml",
        "exec", "-T", "-e",
    ]  # fmt: skip
    assert argv[13] == f"FEDI_FUNDING={text}"
    assert argv[14:16] == ["-e", f"FEDI_FUNDING_MARKER={funding.MARKER}"]
    assert argv[16:19] == ["web", "bin/rails", "runner"]
    ruby = argv[19]
    # the text reaches Rails only through the environment, never inside the Ruby source
    assert "Funding" not in ruby and "ENV.fetch('FEDI_FUNDING')" in ruby
    assert "Announcement.create!" in ruby and "PublishScheduledAnnouncementWorker" in ruby
    # over SSH the argv is joined with shlex.join: the remote shell gets the text back intact
    assert shlex.split(shlex.join(argv)) == argv


class Stack:
    """What coop.announce asks of a provider: the stack's outputs and secrets (the Provider protocol)."""

    def __init__(self, secrets=None):
        self._secrets = secrets or {}

    def stored_secrets(self, stack):
        return self._secrets

    def outputs(self, stack):
        from provision.model import HostAccess, StackOutputs

        return StackOutputs(stack, "hetzner", HostAccess("203.0.113.9", host_key="ssh-ed25519 AAAA"))


def _spec(software):
    from provision.spec import build_spec

    return build_spec({"software": software, "size": "tiny", "domain": f"{software}.example.coop"})


def test_announce_lemmy_with_the_stack_admin_password(lemmy):
    line = coop.announce(_spec("lemmy"), report(), Stack({"admin_password": PASSWORD}), base_url=lemmy.url)
    assert "sidebar" in line and funding.MARKER in lemmy.page
    with pytest.raises(MissingPrerequisite, match="no admin password"):
        coop.announce(_spec("lemmy"), report(), Stack({}), base_url=lemmy.url)


def test_announce_mastodon_runs_the_command_over_the_stack_access():
    calls = []

    def run(access, argv):
        calls.append((access.address, argv))
        return 0, "107\n", ""

    line = coop.announce(_spec("mastodon"), report(), Stack(), run=run)
    [(address, argv)] = calls
    assert address == "203.0.113.9" and argv[-4:-1] == ["web", "bin/rails", "runner"]
    assert argv[13].startswith("FEDI_FUNDING=Funding, ") and line.endswith("announcement 107")

    def failing(access, argv):
        return 1, "", "ActiveRecord::RecordInvalid: Validation failed\n"

    with pytest.raises(HookError, match="RecordInvalid"):
        coop.announce(_spec("mastodon"), report(), Stack(), run=failing)


def test_validate_config_at_the_edge():
    from provision.errors import ValidationError

    coop.validate_config({})
    coop.validate_config({"hooks": {"urls": ["https://books.example.coop/h"]}, "coop": {"dues": 5}})
    with pytest.raises(ValidationError, match=r"^hooks/urls\[0\]"):
        coop.validate_config({"hooks": {"urls": ["books.example.coop"]}})
    with pytest.raises(ValidationError, match="^coop/period"):
        coop.validate_config({"coop": {"dues": 5, "period": "weekly"}})


def _ca_pem(common_name: str) -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_announce_on_a_local_stack_verifies_against_its_ca(tmp_path, monkeypatch):
    """Caddy's internal CA of a local stack is trusted, and nothing else: TLS verification stays on."""
    import ssl

    from provision.model import HostAccess, StackOutputs
    from provision.spec import build_spec

    ca = tmp_path / "root.crt"
    ca.write_bytes(_ca_pem("Caddy Local Authority - test"))
    spec = build_spec({"software": "lemmy", "size": "tiny", "domain": "lemmy.localhost", "provider": "local"})

    class LocalStack(Stack):
        def outputs(self, stack):
            return StackOutputs(stack, "local", HostAccess("10.213.0.2"), extra={"ca_bundle": str(ca)})

    seen = {}

    def post(base_url, username, password, text, *, verify):
        seen["verify"] = verify
        return "posted"

    monkeypatch.setattr(lemmy_app, "post", post)
    assert coop.announce(spec, report(), LocalStack({"admin_password": PASSWORD})) == "posted"
    context = seen["verify"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    names = [dict(x[0] for x in c["subject"]).get("commonName") for c in context.get_ca_certs()]
    assert names == ["Caddy Local Authority - test"]
