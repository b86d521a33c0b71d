"""The billing hook against a real loopback receiver that verifies with the Standard Webhooks library."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from provision.billing import hooks
from provision.errors import ValidationError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the spec's own example secret (test only)
OTHER = hooks.new_secret()


class Receiver:
    """A webhook endpoint on loopback: verifies each request with the reference library, 204 or 400."""

    def __init__(self, port: int = 0, status: int = 204):
        self.accepted: list[tuple[str, dict]] = []
        self.rejected: list[str] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    payload = Webhook(SECRET).verify(body, dict(self.headers.items()))
                except WebhookVerificationError as exc:
                    receiver.rejected.append(str(exc))
                    code = 400
                else:
                    code = receiver.status
                    if 200 <= code < 300:
                        receiver.accepted.append((self.headers["webhook-id"], payload))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hooks/fedi?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FEDI_WEBHOOK_SECRET", SECRET)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def config(*urls: str, **extra) -> dict:
    return {"hooks": {"urls": list(urls), **extra}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DATA = {"stack": "social-example-org", "size": "small", "cost": {"total_gross": 18.52, "currency": "EUR"}}


def test_events_verify_with_the_reference_library(receiver):
    ids = hooks.emit("stack.created", DATA, config(receiver.url))
    assert len(ids) == 1
    assert receiver.rejected == []
    [(msg_id, payload)] = receiver.accepted
    assert msg_id == ids[0]
    assert payload["type"] == "stack.created" and payload["data"] == DATA
    datetime.fromisoformat(payload["timestamp"])
    assert hooks.list_pending() == []  # delivered, so removed


def test_one_event_per_url_each_with_its_id(receiver):
    second = Receiver()
    try:
        ids = hooks.emit("cost.monthly", DATA, config(receiver.url, second.url))
        assert len(set(ids)) == 2
        assert [i for i, _ in receiver.accepted + second.accepted] == ids
    finally:
        second.stop()


def test_our_signature_matches_the_library_and_our_verify_matches_theirs():
    body = json.dumps({"type": "stack.resized", "timestamp": "2026-11-28T21:00:00+00:00", "data": DATA})
    now = int(time.time())
    headers = hooks.signed_headers(SECRET, "msg_1", body, now)
    ts = datetime.fromtimestamp(now, tz=UTC)
    assert headers["webhook-signature"] == Webhook(SECRET).sign("msg_1", ts, body)
    assert Webhook(SECRET).verify(body, headers)["type"] == "stack.resized"
    assert hooks.verify_signature(SECRET, headers, body)["data"] == DATA
    # headers are case-insensitive; several signatures may be given (secret rotation)
    rotated = {k.upper(): v for k, v in headers.items()}
    rotated["WEBHOOK-SIGNATURE"] = f"{hooks.sign(OTHER, 'msg_1', now, body)} {headers['webhook-signature']}"
    assert hooks.verify_signature(SECRET, rotated, body)
    assert Webhook(SECRET).verify(body, rotated)


def test_tampered_body_is_rejected_by_both(receiver):
    body = json.dumps({"type": "cost.monthly", "data": {"total_gross": 18.52}})
    headers = hooks.signed_headers(SECRET, "msg_2", body)
    tampered = body.replace("18.52", "1.85")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)
    with pytest.raises(hooks.SignatureError, match="no signature matches"):
        hooks.verify_signature(SECRET, headers, tampered)
    with pytest.raises(hooks.SignatureError):
        hooks.verify_signature(OTHER, headers, body)
    answer = httpx.post(receiver.url, content=tampered, headers=headers)
    assert answer.status_code == 400 and receiver.rejected == ["No matching signature found"]


def test_replayed_old_timestamp_is_rejected_by_both(receiver):
    hooks.emit("stack.destroyed", DATA, config(receiver.url))
    [(msg_id, payload)] = receiver.accepted
    body = json.dumps(payload)
    # the same, validly signed request sent again ten minutes later: a replay
    old = int(time.time()) - 600
    replay = hooks.signed_headers(SECRET, msg_id, body, old)
    assert httpx.post(receiver.url, content=body, headers=replay).status_code == 400
    assert receiver.rejected == ["Message timestamp too old"]
    with pytest.raises(hooks.SignatureError, match="tolerance 300"):
        hooks.verify_signature(SECRET, replay, body)
    fresh = hooks.signed_headers(SECRET, msg_id, body, old)
    assert hooks.verify_signature(SECRET, fresh, body, now=old + 10)  # in time, it was fine
    with pytest.raises(hooks.SignatureError, match="missing"):
        hooks.verify_signature(SECRET, {"webhook-id": "x"}, body)


def test_receiver_down_then_back_delivers_each_event_once():
    port = free_port()
    url = f"http://127.0.0.1:{port}/fedi"
    waits: list[float] = []
    ids = hooks.emit("stack.created", DATA, config(url), deliver=False)
    ids += hooks.emit("stack.resized", {**DATA, "size": "medium"}, config(url), deliver=False)
    report = hooks.deliver_pending(sleep=waits.append)
    # nobody listens: bounded tries for the first event, the second waits behind it; nothing is lost
    assert report.delivered == ()
    assert waits == [hooks.BACKOFF_S[0], hooks.BACKOFF_S[1]]
    assert [p.id for p in report.pending] == ids
    assert "ConnectError" in report.errors[0] and "/fedi" not in report.errors[0]
    first = hooks.list_pending()[0]
    assert first.attempts == 1 and datetime.fromisoformat(first.next_attempt_at) > datetime.now(UTC)
    for event in hooks.list_pending():
        assert stat.S_IMODE(os.stat(event.path).st_mode) == 0o600
    # a normal run before the retry time leaves them alone
    assert hooks.deliver_pending(sleep=waits.append).errors == ()

    receiver = Receiver(port=port)
    try:
        later = datetime.now(UTC) + timedelta(minutes=2)
        report = hooks.deliver_pending(now=later, sleep=waits.append)
        assert report.delivered == tuple(ids) and report.pending == ()
        assert hooks.deliver_pending(force=True).delivered == ()
        assert [i for i, _ in receiver.accepted] == ids  # once each, in order
        assert [p["type"] for _, p in receiver.accepted] == ["stack.created", "stack.resized"]
    finally:
        receiver.stop()


def test_server_errors_are_retried_with_backoff_then_kept():
    receiver = Receiver(status=503)
    try:
        waits: list[float] = []
        [msg_id] = hooks.emit("cost.monthly", DATA, config(receiver.url), deliver=False)
        report = hooks.deliver_pending(sleep=waits.append, attempts=3)
        assert report.errors == (f"{msg_id} to http://127.0.0.1:{receiver.port}/…: HTTP 503",)
        assert len(waits) == 2 and [p.id for p in report.pending] == [msg_id]
        again = hooks.deliver_pending(force=True, sleep=waits.append)
        assert hooks.list_pending()[0].attempts == 2 and again.delivered == ()
        receiver.status = 200
        assert hooks.deliver_pending(force=True).delivered == (msg_id,)
        assert receiver.rejected == []
    finally:
        receiver.stop()


def test_missing_secret_keeps_the_event(monkeypatch, receiver):
    monkeypatch.delenv("FEDI_WEBHOOK_SECRET")
    [msg_id] = hooks.emit("stack.created", DATA, config(receiver.url, secret_env="COOP_HOOK_SECRET"))
    assert receiver.accepted == [] and hooks.list_pending()[0].id == msg_id
    report = hooks.deliver_pending(force=True)
    assert report.errors == (f"{msg_id}: not sent, $COOP_HOOK_SECRET is not set",)
    monkeypatch.setenv("COOP_HOOK_SECRET", SECRET)
    assert hooks.deliver_pending(force=True).delivered == (msg_id,)
    # the outbox never held the secret
    assert SECRET not in json.dumps(receiver.accepted)


def test_outbox_files_hold_no_secret_and_drop_works(receiver):
    [msg_id] = hooks.emit("stack.created", DATA, config(receiver.url), deliver=False)
    text = (hooks.outbox_dir() / f"{msg_id}.json").read_text()
    assert SECRET not in text and SECRET[6:] not in text
    assert hooks.drop(msg_id) and not hooks.drop(msg_id)
    assert receiver.accepted == [] and hooks.list_pending() == []


def test_no_urls_no_events():
    assert hooks.emit("stack.created", DATA, {}) == []
    assert hooks.list_pending() == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"hooks": {"urls": "https://x.org"}}, "hooks/urls: must be a list"),
        ({"hooks": {"urls": ["ftp://x.org"]}}, "hooks/urls[0]: 'ftp://x.org' is not an http(s) URL"),
        ({"hooks": {"urls": [], "secret": "whsec_abc"}}, "hooks/secret: put the whsec_ secret in $FEDI_WEBHOOK_SECRET"),
        ({"hooks": {"urls": [], "secret_env": "NOT-A-NAME"}}, "hooks/secret_env: 'NOT-A-NAME' is not"),
        ({"hooks": {"url": []}}, "hooks/url: unknown key"),
    ],
)
def test_bad_hook_settings(raw, message):
    with pytest.raises(ValidationError) as err:
        hooks.parse_hooks(raw)
    assert str(err.value).startswith(message)


def test_unknown_event_type():
    with pytest.raises(ValidationError, match="event: 'stack.moved' is not one of"):
        hooks.emit("stack.moved", {}, config("https://books.example.coop/hook"))


def test_secret_shape():
    assert len(hooks.secret_key(hooks.new_secret())) == 32
    for bad in ("abc", "whsec_", "whsec_!!!", "whsec_" + "QUJD"):
        with pytest.raises(Exception, match="webhook secret"):
            hooks.secret_key(bad)


def test_emit_lifecycle_carries_stack_cost_and_dues(receiver, monkeypatch, tmp_path):
    from provision.billing.cost import monthly_cost
    from provision.model import HostAccess, StackOutputs
    from provision.spec import build_spec

    monkeypatch.setenv("FEDI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HCLOUD_TOKEN", raising=False)
    cfg = {"hooks": {"urls": [receiver.url]}, "coop": {"dues": 5, "members": 200, "subsidized": 10}}
    spec = build_spec({"software": "lemmy", "size": "small", "domain": "lemmy.example.coop"}, cfg)
    outputs = StackOutputs(
        "lemmy-example-coop",
        "hetzner",
        HostAccess("203.0.113.7", host_key="ssh-ed25519 AAAA"),
        ipv4="203.0.113.7",
        server_type="cx33",
    )
    cost = monthly_cost(spec)
    [msg_id] = hooks.emit_lifecycle("stack.created", spec=spec, outputs=outputs, cost=cost)
    [(got_id, payload)] = receiver.accepted
    data = payload["data"]
    assert got_id == msg_id and payload["type"] == "stack.created"
    assert (data["stack"], data["size"], data["app"], data["server_type"]) == (
        "lemmy-example-coop",
        "small",
        "lemmy",
        "cx33",
    )
    assert data["cost"]["total_gross"] == float(round(cost.total_gross, 2))
    assert data["cost"]["source"].startswith("table ")
    assert data["dues"]["members"] == 200 and data["dues"]["members_to_cover"] > 0
    assert "ssh-ed25519" not in json.dumps(payload)  # nothing about access travels

    bad = build_spec(
        {"software": "lemmy", "size": "small", "domain": "lemmy.example.coop"}, {**cfg, "coop": {"dues": 0}}
    )
    hooks.emit_lifecycle("stack.destroyed", spec=bad, outputs=None, cost=cost)
    last = receiver.accepted[-1][1]["data"]
    assert last["dues"] is None and last["dues_error"].startswith("coop/dues:")


def test_verify_rejects_non_text_and_non_json_bodies():
    headers = hooks.signed_headers(SECRET, "msg_3", "not json")
    with pytest.raises(hooks.SignatureError, match="not JSON"):
        hooks.verify_signature(SECRET, headers, "not json")
    with pytest.raises(hooks.SignatureError, match="UTF-8"):
        hooks.verify_signature(SECRET, headers, b"\xff\xfe")
    assert hooks.deliver_pending() == hooks.DeliveryReport((), (), ())


def test_one_delivering_process_at_a_time(receiver):
    [msg_id] = hooks.emit("stack.created", DATA, config(receiver.url), deliver=False)
    with hooks._outbox_lock() as locked:
        assert locked
        busy = hooks.deliver_pending(force=True)
    assert busy.delivered == () and busy.errors == ("another fedi command is delivering the outbox",)
    assert receiver.accepted == []
    assert hooks.deliver_pending(force=True).delivered == (msg_id,)
