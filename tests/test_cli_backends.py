"""A stack kept in another state backend (a co-op's `--backend s3://...`, or `[state] backend` in
fedi.toml) is reached by `fedi backup ...` and `fedi coop monthly`, and only there.

Each backend is its own test engine (the real stack program under Pulumi's mocks, state in its own
directory); the server side of `fedi backup status` answers through a recording runner.
"""

from __future__ import annotations

import json

import pytest
from test_hooks import SECRET

from provision.cli import app as cli
from provision.cli import target as cli_target
from provision.lifecycle import backup
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.providers.local.provider import LocalProvider
from provision.sizing import sizing
from tests.support.stack_fixtures import bundle_of, isolate, spec_of

COOP = "s3://coop-state/fedi"
DOMAIN = "social.example.org"


@pytest.fixture
def backends(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDI_WEBHOOK_SECRET", SECRET)
    (tmp_path / "fedi.toml").write_text("[coop]\ndues = 5\nmembers = 10\n")
    engines: dict[str | None, OfflineEngine] = {}

    def make(name, backend=None, **_):
        if name != "hetzner":
            return LocalProvider()
        from provision.config import load_config, state_backend

        backend = backend or state_backend(load_config())  # as the real make_provider does
        key = backend or "default"
        root = tmp_path / "backends" / key.replace("/", "_").replace(":", "")
        return HetznerProvider(engine=engines.setdefault(backend, OfflineEngine(root)))

    monkeypatch.setattr(cli_target, "make_provider", make)
    coop = make("hetzner", COOP)
    spec = spec_of(domain=DOMAIN)
    coop.secrets(spec)
    coop.up(spec, sizing(spec), bundle_of(), lambda _line: None)
    return engines


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_backup_status_reaches_the_stack_in_the_coops_backend(backends, monkeypatch, capsys):
    reached = []

    def runner(access, argv):
        reached.append(access.address)
        if "cat" in argv:
            return 0, "2026-12-05T06:00:00Z\n", ""
        return 0, "Result=success\nNextElapseUSecRealtime=Sun 2026-12-06 03:00:00 UTC\n", ""

    monkeypatch.setattr(backup, "default_runner", runner)
    code, out, err = _run(capsys, "backup", "status", "--domain", DOMAIN, "--backend", COOP, "--json")
    assert code == 0, err
    assert json.loads(out)["last_result"] == "success"
    assert reached and reached[0] == backends[COOP].outputs("social-example-org")["ipv4"]

    code, _, err = _run(capsys, "backup", "status", "--domain", DOMAIN)  # the default backend: not there
    assert code == 4 and ("does not exist" in err or "no resources" in err), err
    assert backends[None].stack_names() == []  # looking created nothing


def test_coop_monthly_reaches_the_stack_by_flag_and_by_fedi_toml(backends, tmp_path, capsys):
    code, out, err = _run(capsys, "coop", "monthly", "--no-announce", "--backend", COOP, "--json")
    assert code == 0, err
    assert [s["stack"] for s in json.loads(out)["stacks"]] == ["social-example-org"]

    (tmp_path / "fedi.toml").write_text(f'[state]\nbackend = "{COOP}"\n[coop]\ndues = 5\nmembers = 10\n')
    code, out, err = _run(capsys, "coop", "monthly", "--no-announce", "--domain", DOMAIN, "--json")
    assert code == 0, err
    assert json.loads(out)["stacks"][0]["domain"] == DOMAIN


def test_backup_list_reaches_the_stack_in_the_coops_backend_and_reading_creates_nothing(backends, monkeypatch, capsys):
    reached = []
    snapshot = {"id": "ab" * 32, "short_id": "abababab", "time": "2026-12-05T06:00:00Z", "hostname": "h",
                "tags": ["fedi", "scheduled"], "size_bytes": 1024}  # fmt: skip

    def runner(access, argv):
        reached.append(access.address)
        return 0, json.dumps([snapshot]), ""

    monkeypatch.setattr(backup, "default_runner", runner)
    before = {key: engine.stack_names() for key, engine in backends.items()}
    code, out, err = _run(capsys, "backup", "list", "--domain", DOMAIN, "--backend", COOP, "--json")
    assert code == 0, err
    assert [s["short_id"] for s in json.loads(out)] == ["abababab"]
    assert reached == [backends[COOP].outputs("social-example-org")["ipv4"]]

    for argv in (["backup", "list"], ["backup", "status"], ["status"]):  # the default backend: not there
        code, _, err = _run(capsys, *argv, "--domain", "other.example.org", "--backend", COOP)
        assert code == 4, err
        code, _, err = _run(capsys, *argv, "--domain", DOMAIN)
        assert code == 4, err
    after = {key: engine.stack_names() for key, engine in backends.items()}
    assert after == {**before, None: []}  # looking created no stack in either backend
    assert after[COOP] == ["social-example-org"]
