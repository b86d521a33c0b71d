"""`fedi plan/up/status/stacks/down` end to end.

Subprocess tests run the real `fedi` with a PATH without `pulumi` and no token (this machine has
neither); in-process tests hand the commands the Hetzner provider on the test engine (the real
stack program under Pulumi's mocks) through ``provision.cli.target.make_provider``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.cli import app as cli
from provision.cli import target as cli_target
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.providers.local.provider import LocalProvider
from provision.sizing import sizing
from tests.support.stack_fixtures import bundle_of, fake_cli, isolate, spec_of

ROOT = Path(__file__).resolve().parent.parent


def fedi(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HCLOUD_TOKEN" and not k.startswith(("PULUMI_", "FEDI_"))}
    env.update(
        PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin",
        HOME=str(tmp_path / "home"),
        FEDI_STATE_DIR=str(tmp_path / "state"),
        FEDI_CONFIG_DIR=str(tmp_path / "config"),
        FEDI_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT),
    )
    (tmp_path / "bin").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "provision", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


LEMMY = ["--software", "lemmy", "--size", "small", "--domain", "social.example.org"]


def test_plan_works_offline_and_lists_everything_with_the_cost(tmp_path):
    run = fedi(["plan", *LEMMY, "--json"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "planning offline under Pulumi's mocks" in run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    plan = json.loads(run.stdout)
    assert plan["offline"] is True
    assert any("mocks" in n for n in plan["notes"])
    assert any("FEDI_S3_ACCESS_KEY" in n for n in plan["notes"])  # no credentials here: up will ask for them
    kinds = [r["type"].split(":")[-1] for r in plan["resources"]]
    for kind in ("Server", "Firewall", "Volume", "VolumeAttachment", "SshKey"):
        assert kind in kinds
    assert kinds.count("PrimaryIp") == 2 and kinds.count("S3Bucket") == 2
    server = next(r for r in plan["resources"] if r["type"].endswith(":Server"))
    assert server["properties"]["serverType"] == "cx33" and server["properties"]["image"] == "debian-13"
    assert server["properties"]["userData"] == "[secret]"
    dns = {r["properties"]["type"] for r in plan["resources"] if r["type"].endswith(":ZoneRrset")}
    assert dns == {"A", "AAAA", "CAA"}
    volume = next(r for r in plan["resources"] if r["type"].endswith(":Volume"))
    assert volume["properties"]["size"] == 40
    assert plan["cost"]["total_gross"] > 0 and plan["cost"]["currency"] == "EUR"
    assert any(line["name"].startswith("server cx33") for line in plan["cost"]["lines"])
    assert "BEGIN OPENSSH PRIVATE KEY" not in run.stdout


def test_up_without_the_pulumi_cli_is_one_line_and_creates_nothing(tmp_path):
    run = fedi(["up", *LEMMY, "--yes"], tmp_path)
    assert run.returncode == 3
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("fedi: the Pulumi CLI is not installed")
    assert "https://get.pulumi.com" in lines[0] and "--provider local" in lines[0]
    assert "Traceback" not in run.stderr
    state = tmp_path / "state"
    assert not state.exists() or list(state.rglob("*")) == []


def test_up_without_a_token_is_one_line(tmp_path):
    (tmp_path / "bin").mkdir()
    fake_cli(tmp_path / "bin")
    run = fedi(["up", *LEMMY, "--yes"], tmp_path)
    assert run.returncode == 3
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "HCLOUD_TOKEN is not set" in run.stderr and "Traceback" not in run.stderr


def test_bad_input_is_one_line(tmp_path):
    run = fedi(["plan", "--software", "lemmy", "--size", "smal", "--domain", "social.example.org"], tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip() == "fedi: size: 'smal' is not one of tiny, small, medium, large"


# ---- in-process, with the test engine ----


@pytest.fixture
def engine(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    eng = OfflineEngine()

    def make(name, backend=None, **_):  # the real local provider, and Hetzner on the test engine
        return HetznerProvider(engine=eng) if name == "hetzner" else LocalProvider()

    monkeypatch.setattr(cli_target, "make_provider", make)
    return eng


def _provision(engine, **flags):
    provider = HetznerProvider(engine=engine)
    spec = spec_of(**flags)
    provider.secrets(spec)
    return provider.up(spec, sizing(spec), bundle_of(), lambda _l: None)


def _json(capsys, argv: list[str]):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_status_shows_outputs_and_cost(engine, capsys):
    _provision(engine)
    code, data, _ = _json(capsys, ["status", "--domain", "social.example.org", "--no-health", "--json"])
    assert code == 0
    out = data["outputs"]
    assert out["ipv4"].startswith("203.0.113.") and out["server_type"] == "cx33"
    assert out["host_key_fingerprint"].startswith("SHA256:")
    assert out["media_bucket"] != out["backups_bucket"]
    assert data["cost"]["total_gross"] > 0


def test_stacks_lists_software_size_domain_age_and_cost(engine, capsys):
    _provision(engine)
    _provision(engine, domain="forum.example.net", software="kbin", size="medium")
    code, rows, _ = _json(capsys, ["stacks", "--json"])
    assert code == 0
    by = {r["stack"]: r for r in rows}
    assert set(by) == {"social-example-org", "forum-example-net"}
    assert (by["forum-example-net"]["software"], by["forum-example-net"]["size"]) == ("kbin", "medium")
    assert by["social-example-org"]["domain"] == "social.example.org"
    assert by["social-example-org"]["age_hours"] >= 0
    assert by["forum-example-net"]["monthly_gross"] > by["social-example-org"]["monthly_gross"] > 0


def test_down_of_a_production_stack_needs_the_domain_typed(engine, capsys):
    _provision(engine)
    code, _, err = _json(capsys, ["down", "--domain", "social.example.org", "--skip-backup"])
    assert code == 9 and "pass --confirm social.example.org" in err
    code, _, err = _json(capsys, ["down", "--domain", "social.example.org", "--skip-backup", "--confirm", "other.org"])
    assert code == 9 and "does not match" in err
    assert engine.stack_names() == ["social-example-org"]


def test_down_refuses_while_protection_is_on_then_destroys_with_force_unprotect(engine, capsys):
    _provision(engine)
    base = ["down", "--domain", "social.example.org", "--skip-backup", "--confirm", "social.example.org"]
    code, _, err = _json(capsys, base)
    assert code == 4 and "delete protection on" in err and "--force-unprotect" in err
    code, data, err = _json(capsys, [*base, "--force-unprotect", "--json"])
    assert code == 0, err
    assert "keeping the backups bucket" in err
    assert engine.stack_names() == []
    code, rows, _ = _json(capsys, ["stacks", "--json"])
    assert rows == []


def test_status_of_an_unknown_stack_is_one_line(engine, capsys):
    code, _, err = _json(capsys, ["status", "--domain", "nothing.example.org", "--no-health"])
    assert code == 4 and err.strip() == (
        "fedi: stack 'nothing-example-org' does not exist in the state backend (see `fedi stacks`)"
    )


def _local_stack(domain: str) -> None:
    """A local stack as `fedi up --provider local` records it (its machine is not needed to be found)."""
    from provision.spec import build_spec

    spec = build_spec({"software": "lemmy", "size": "tiny", "domain": domain, "provider": "local"})
    prov = LocalProvider()
    prov.secrets(spec)
    prov._store().update(spec.stack_name, **prov._spec_fields(spec))


def test_a_local_stack_is_found_without_provider(engine, capsys):
    _local_stack("lemmy.localhost")
    code, data, err = _json(capsys, ["status", "--domain", "lemmy.localhost", "--no-health", "--json"])
    assert code == 0, err
    assert data["outputs"]["provider"] == "local" and data["outputs"]["domain"] == "lemmy.localhost"
    assert engine.stack_names() == []  # asking Hetzner created nothing there


def test_a_stack_in_both_providers_needs_provider(engine, capsys):
    _provision(engine)
    _local_stack("social.example.org")
    code, _, err = _json(capsys, ["status", "--domain", "social.example.org", "--no-health"])
    assert code == 2 and err.strip() == (
        "fedi: stack: 'social-example-org' exists in local and hetzner (pass --provider local or --provider hetzner)"
    )
    code, data, _ = _json(
        capsys, ["status", "--domain", "social.example.org", "--provider", "hetzner", "--no-health", "--json"]
    )
    assert code == 0 and data["outputs"]["provider"] == "hetzner"
