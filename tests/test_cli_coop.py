"""`fedi cost` and `fedi coop ...` through the real CLI entry point (its one error boundary included)."""

from __future__ import annotations

import io
import json
import sys

import pytest
from test_hooks import SECRET, Receiver

from provision.billing import hooks
from provision.cli.app import main

TABLE_DATE = json.loads(
    (__import__("pathlib").Path(__file__).parents[1] / "provision" / "data" / "prices.json").read_text()
)["_date"]


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FEDI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HCLOUD_TOKEN", raising=False)
    monkeypatch.setenv("FEDI_WEBHOOK_SECRET", SECRET)
    return tmp_path


def toml(path, text):
    (path / "fedi.toml").write_text(text)


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cost_works_offline_and_says_so(capsys):
    rc, out, err = run(capsys, "cost", "--software", "mastodon", "--size", "small")
    assert rc == 0, err
    assert "server cx33 (fsn1)" in out and "volume 40 GB" in out
    assert f"offline: prices from the table of {TABLE_DATE}" in out
    rc, out, _ = run(
        capsys, "cost", "--software", "kbin", "--size", "tiny", "--location", "hel1", "--backups", "--json"
    )
    data = json.loads(out)
    assert rc == 0 and data["note"] == f"offline: prices from the table of {TABLE_DATE}"
    assert data["source"] == f"table {TABLE_DATE}" and data["app"] == "mbin" and data["currency"] == "EUR"
    assert any(line["name"].startswith("Hetzner backups") for line in data["lines"])
    assert data["total_gross"] > data["total_net"] > 0


def test_cost_hours_and_errors(capsys):
    rc, out, _ = run(capsys, "cost", "--software", "lemmy", "--size", "tiny", "--hours", "3", "--json")
    assert rc == 0 and json.loads(out)["period"] == "3 hours"
    assert run(capsys, "cost", "--software", "lemmy", "--size", "smal")[0:3:2] == (
        2,
        "fedi: size: 'smal' is not one of tiny, small, medium, large\n",
    )
    rc, _, err = run(capsys, "cost", "--software", "lemmy", "--size", "tiny", "--location", "sin")
    assert rc == 2 and err == "fedi: location: 'sin' is not one of fsn1, nbg1, hel1\n"


def test_cost_reads_fedi_toml_and_local_costs_nothing(capsys, workdir):
    toml(workdir, 'software = "lemmy"\nsize = "medium"\nprovider = "local"\n')
    rc, out, _ = run(capsys, "cost", "--json")
    data = json.loads(out)
    assert rc == 0 and data["lines"] == [] and data["total_gross"] == 0 and data["source"] == "local"


def test_coop_dues(capsys, workdir):
    toml(workdir, 'software = "mastodon"\nsize = "tiny"\n[coop]\ndues = 5\nmembers = 60\nsubsidized = 6\n')
    rc, out, _ = run(capsys, "coop", "dues")
    assert rc == 0 and "paying members cover it" in out and f"table of {TABLE_DATE}" in out
    rc, out, _ = run(capsys, "coop", "dues", "--json")
    data = json.loads(out)
    assert data["members"] == 60 and data["paying"] == 54 and data["period"] == "year"
    assert data["note"].startswith("offline: prices from the table of")
    toml(workdir, 'software = "mastodon"\nsize = "tiny"\n[coop]\ndues = 5\nmembers = 6\nsubsidized = 7\n')
    assert run(capsys, "coop", "dues")[::2] == (2, "fedi: coop/subsidized: 7 is more than coop/members (6)\n")
    toml(workdir, 'software = "mastodon"\nsize = "tiny"\n')
    rc, _, err = run(capsys, "coop", "dues")
    assert rc == 2 and err.startswith("fedi: coop: no [coop] table")


def _signed(body: str, msg_id: str = "msg_0001", **kw):
    h = hooks.signed_headers(SECRET, msg_id, body, **kw)
    return ["--id", h["webhook-id"], "--timestamp", h["webhook-timestamp"], "--signature", h["webhook-signature"]]


def test_verify_signature(capsys, workdir, monkeypatch):
    body = json.dumps({"type": "cost.monthly", "timestamp": "2026-11-28T21:00:00+00:00", "data": {"x": 1}})
    (workdir / "body.json").write_text(body)
    args = _signed(body)
    rc, out, _ = run(capsys, "coop", "verify-signature", *args, "--body", "body.json")
    assert rc == 0 and out == "valid: cost.monthly msg_0001\n"
    # from standard input
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body.encode())))
    assert run(capsys, "coop", "verify-signature", *args, "--json")[0] == 0
    # tampered body
    (workdir / "body.json").write_text(body.replace('"x":1', '"x":2').replace('"x": 1', '"x": 2'))
    rc, _, err = run(capsys, "coop", "verify-signature", *args, "--body", "body.json")
    assert rc == 8 and err.startswith("fedi: no signature matches the body")
    # a replay of an old request
    (workdir / "body.json").write_text(body)
    old = _signed(body, timestamp=int(__import__("time").time()) - 3600)
    rc, _, err = run(capsys, "coop", "verify-signature", *old, "--body", "body.json")
    assert rc == 8 and "tolerance 300 s" in err
    # without the secret
    monkeypatch.delenv("FEDI_WEBHOOK_SECRET")
    rc, _, err = run(capsys, "coop", "verify-signature", *args, "--body", "body.json")
    assert rc == 3 and "FEDI_WEBHOOK_SECRET" in err and SECRET not in err


def test_outbox_list_flush_drop(capsys, workdir):
    receiver = Receiver()
    try:
        url = receiver.url
        receiver.stop()  # down: events stay
        [a] = hooks.emit("stack.created", {"stack": "s"}, {"hooks": {"urls": [url]}}, deliver=False)
        [b] = hooks.emit("stack.destroyed", {"stack": "s"}, {"hooks": {"urls": [url]}}, deliver=False)
        rc, out, _ = run(capsys, "coop", "outbox")
        assert rc == 0 and a in out and b in out and "token=abc" not in out
        rc, out, _ = run(capsys, "coop", "outbox", "--drop", b)
        assert rc == 0 and out == f"dropped {b}\n"
        receiver = Receiver(port=receiver.port)
        rc, out, _ = run(capsys, "coop", "outbox", "--flush", "--json")
        assert rc == 0 and json.loads(out)["delivered"] == [a]
        assert [i for i, _ in receiver.accepted] == [a]
        assert run(capsys, "coop", "outbox")[1] == "the outbox is empty\n"
    finally:
        receiver.stop()


def test_monthly_sends_the_cost_event(capsys, workdir):
    receiver = Receiver()
    try:
        toml(
            workdir,
            'software = "lemmy"\nsize = "small"\ndomain = "lemmy.example.coop"\n'
            f'[coop]\ndues = 3\nperiod = "month"\nmembers = 10\n[hooks]\nurls = ["{receiver.url}"]\n',
        )
        rc, out, err = run(capsys, "coop", "monthly", "--no-announce", "--json")
        assert rc == 0, err
        data = json.loads(out)
        assert data["delivered"] == data["events"] and data["announced"] is None
        [(msg_id, payload)] = receiver.accepted
        assert msg_id == data["events"][0] and payload["type"] == "cost.monthly"
        assert payload["data"]["dues"]["income_month"] == 30 and payload["data"]["cost"]["source"].startswith("table")
    finally:
        receiver.stop()
