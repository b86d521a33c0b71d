"""The co-op's books hear of everything: `fedi up`, `resize`, `coop monthly` and `down` through the real
CLI, with [hooks] and [coop] in fedi.toml, deliver every event type exactly once to a loopback receiver
that verifies each request with the Standard Webhooks library.

The Hetzner provider runs on the test engine (the real stack program under Pulumi's mocks); the two
steps that need a real server (the playbook over SSH, the HTTPS health checks) are recording stand-ins,
as in test_lifecycle. Everything from the CLI to the receiver is the real path: fedi.toml, the spec
rebuilt from the stack's outputs, the outbox, the signed POST.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_hooks import SECRET, Receiver
from test_lifecycle import Recorder

from provision.billing import hooks
from provision.cli import app as cli
from provision.cli import target as cli_target
from provision.lifecycle import stack as lifecycle
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.providers.local.provider import LocalProvider
from tests.support.stack_fixtures import isolate

DOMAIN = "social.example.org"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def world(monkeypatch, tmp_path, receiver):
    isolate(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDI_WEBHOOK_SECRET", SECRET)
    (tmp_path / "fedi.toml").write_text(
        'software = "lemmy"\nsize = "small"\nproduction = false\n'
        f'[hooks]\nurls = ["{receiver.url}"]\n[coop]\ndues = 5\nperiod = "month"\nmembers = 10\n'
    )
    engine = OfflineEngine()

    def make(name, backend=None, **_):
        return HetznerProvider(engine=engine) if name == "hetzner" else LocalProvider()

    monkeypatch.setattr(cli_target, "make_provider", make)
    steps = Recorder().steps()
    steps = replace(steps, event=lifecycle.Steps().event)  # the real billing step
    for fn in (lifecycle.up, lifecycle.resize, lifecycle.down):
        monkeypatch.setitem(fn.__kwdefaults__, "steps", steps)
    return engine


def _run(capsys, *argv: str) -> str:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_up_resize_monthly_and_down_each_send_their_event_once(world, receiver, capsys):
    _run(capsys, "up", "--domain", DOMAIN, "--yes", "--json")
    _run(capsys, "resize", "--size", "medium", "--domain", DOMAIN, "--yes", "--json")
    monthly = json.loads(_run(capsys, "coop", "monthly", "--no-announce", "--json"))  # every stack: this one
    assert [s["stack"] for s in monthly["stacks"]] == ["social-example-org"]
    _run(capsys, "down", "--domain", DOMAIN, "--yes", "--json")

    assert receiver.rejected == []
    kinds = [payload["type"] for _id, payload in receiver.accepted]
    assert sorted(kinds) == sorted(hooks.EVENT_TYPES), kinds
    assert len({msg_id for msg_id, _ in receiver.accepted}) == 4
    by_kind = {payload["type"]: payload["data"] for _id, payload in receiver.accepted}
    assert by_kind["stack.resized"]["size"] == "medium" and by_kind["cost.monthly"]["size"] == "medium"
    assert by_kind["stack.destroyed"]["stack"] == "social-example-org"
    assert by_kind["cost.monthly"]["dues"]["members"] == 10  # [coop] reached the monthly run
    assert hooks.list_pending() == []


def test_monthly_with_nothing_to_cover_is_one_line(world, tmp_path, capsys):
    (tmp_path / "fedi.toml").write_text("[coop]\ndues = 5\nmembers = 10\n")
    code = cli.main(["coop", "monthly", "--no-announce"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("fedi: no stack to cover")
