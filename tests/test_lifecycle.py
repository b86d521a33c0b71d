"""Lifecycle orchestration with the Hetzner provider on the test engine and the real bundle renderer.

The remote, health and billing steps belong to other modules and need a real server or receiver;
here they are small recording stand-ins, so the test can check what lifecycle hands each of them
and in which order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from provision.errors import Aborted, BackupError, MissingPrerequisite
from provision.lifecycle import stack as lifecycle
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from tests.support.stack_fixtures import isolate, spec_of


@dataclass
class Configured:
    host_key: str
    changed: int = 3
    failed: int = 0
    log_path: Path = Path("/dev/null")


class Recorder:
    def __init__(self, backup_rc: int = 0):
        self.calls: list[tuple] = []
        self.backup_rc = backup_rc

    def steps(self) -> lifecycle.Steps:
        def configure(access, bundle, runtime, progress):
            self.calls.append(("configure", access.address, access.host_key, runtime, bundle.root))
            return Configured(host_key="ssh-ed25519 AAAArotated fedi")

        def health(spec, outputs, progress):
            self.calls.append(("health", outputs.access.host_key))
            return "healthy"

        def event(kind, spec, outputs, cost):
            self.calls.append(("event", kind, cost.total_gross))

        def remote_run(access, argv):
            self.calls.append(("run", argv))
            return self.backup_rc, "", "restic: repository locked"

        return replace(lifecycle.Steps(), configure=configure, health=health, event=event, remote_run=remote_run)

    def names(self) -> list[str]:
        return [c[0] if c[0] != "event" else f"event:{c[1]}" for c in self.calls]


@pytest.fixture
def provider(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    return HetznerProvider(engine=OfflineEngine())


def test_up_runs_every_step_in_order_and_pins_the_rotated_key(provider):
    rec = Recorder()
    lines: list[str] = []
    result = lifecycle.up(spec_of(), provider, lines.append, steps=rec.steps())
    assert rec.names() == ["configure", "health", "event:stack.created"]
    _, address, bootstrap_key, runtime, root = rec.calls[0]
    assert address == result.outputs.ipv4
    assert bootstrap_key.startswith("ssh-ed25519 ")  # the bundle's pre-generated key: pinned from the start
    assert runtime["fedi_volume_device"].startswith("/dev/disk/by-id/") and runtime["fedi_start_app"] is True
    assert runtime["fedi_bundle_dir"] == "/opt/fedi/bundle"
    assert (root / "manifest.json").is_file() and (root.stat().st_mode & 0o077) == 0
    assert rec.calls[1] == ("health", "ssh-ed25519 AAAArotated fedi")  # health sees the pinned, rotated key
    assert result.cost.total_gross > 0


def test_up_asks_first_and_creates_nothing_when_declined(provider):
    rec = Recorder()
    shown = []

    def decline(plan, cost):
        shown.append((plan, cost))
        return False

    with pytest.raises(Aborted):
        lifecycle.up(spec_of(), provider, lambda _l: None, confirm=decline, steps=rec.steps())
    plan, _ = shown[0]
    assert any(r.type.endswith("server:Server") for r in plan.resources)
    assert rec.calls == [] and provider.stacks() == []
    assert provider.engine.stack_names() == []  # not even the generated secrets are left behind
    assert not lifecycle.bundle_dir("social-example-org").exists()


def test_declining_a_re_run_leaves_the_existing_stack_alone(provider):
    lifecycle.up(spec_of(), provider, lambda _l: None, steps=Recorder().steps())
    with pytest.raises(Aborted):
        lifecycle.up(spec_of(), provider, lambda _l: None, confirm=lambda p, c: False, steps=Recorder().steps())
    assert [s.stack for s in provider.stacks()] == ["social-example-org"]


def test_up_stops_at_preflight_when_something_is_missing(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    rec = Recorder()
    with pytest.raises(MissingPrerequisite):
        lifecycle.up(spec_of(), HetznerProvider(), lambda _l: None, steps=rec.steps())
    assert rec.calls == []
    assert not (tmp_path / "fedi_state_dir" / "bundles").exists()


def test_down_backs_up_first_then_destroys(provider):
    lifecycle.up(spec_of(production=False), provider, lambda _l: None, steps=Recorder().steps())
    rec = Recorder()
    lifecycle.down("social-example-org", provider, lambda _l: None, steps=rec.steps())
    assert rec.names() == ["run", "event:stack.destroyed"]
    assert rec.calls[0][1] == lifecycle.BACKUP_ARGV
    assert provider.stacks() == []
    assert not lifecycle.bundle_dir("social-example-org").exists()


def test_a_failed_pre_destroy_backup_keeps_the_stack(provider):
    lifecycle.up(spec_of(production=False), provider, lambda _l: None, steps=Recorder().steps())
    with pytest.raises(BackupError, match="repository locked"):
        lifecycle.down("social-example-org", provider, lambda _l: None, steps=Recorder(backup_rc=1).steps())
    assert [s.stack for s in provider.stacks()] == ["social-example-org"]


def test_resize_retunes_the_host_and_reports_the_cost_difference(provider):
    lifecycle.up(spec_of(size="small"), provider, lambda _l: None, steps=Recorder().steps())
    rec = Recorder()
    result = lifecycle.resize(spec_of(size="medium"), provider, lambda _l: None, steps=rec.steps())
    assert rec.names() == ["configure", "health", "event:stack.resized"]
    root = rec.calls[0][4]
    assert "max_connections" in (root / "postgres" / "fedi.conf").read_text()
    assert result.outputs.server_type == "cx43"
    assert result.cost.delta.gross > 0


def test_health_checks_connect_to_the_server_with_the_domain_as_sni(provider):
    result = lifecycle.up(spec_of(software="mastodon"), provider, lambda _l: None, steps=Recorder().steps())
    target = lifecycle.health_target(spec_of(software="mastodon"), result.outputs)
    assert (target.domain, target.app, target.address) == ("social.example.org", "mastodon", result.outputs.ipv4)
    assert target.https_port == 443 and target.ca_bundle is None and target.netns is None


def test_the_spec_is_rebuilt_from_the_stack_outputs(provider):
    result = lifecycle.up(
        spec_of(software="kbin", size="tiny", location="hel1"), provider, lambda _l: None, steps=Recorder().steps()
    )
    spec = lifecycle.spec_of_outputs(result.outputs)
    assert (spec.software, spec.app, spec.size, spec.domain, spec.location) == (
        "kbin",
        "mbin",
        "tiny",
        "social.example.org",
        "hel1",
    )
    assert spec.production is True


def test_an_ephemeral_stack_is_rebuilt_as_ephemeral(provider):
    spec = spec_of(domain="t1.smoke.example.org", ephemeral=True, ttl_hours=3)
    result = lifecycle.up(spec, provider, lambda _l: None, steps=Recorder().steps())
    again = lifecycle.spec_of_outputs(result.outputs)
    assert again.ephemeral and not again.production and again.ttl_hours == 3


def test_health_of_an_ephemeral_stack_trusts_the_staging_issuer_read_from_the_server(provider, monkeypatch):
    """The default health step fetches the issuer over the pinned channel and hands it to the checks."""
    from provision import remote
    from provision.lifecycle import health

    seen = {}

    def fetch_issuer(access, domain, dest, **_kw):
        seen["fetch"] = (access.address, domain)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("-----BEGIN CERTIFICATE-----\n")
        return dest

    def wait(target, **_kw):
        seen["target"] = target
        return "healthy"

    monkeypatch.setattr(remote, "fetch_issuer", fetch_issuer, raising=False)
    monkeypatch.setattr(health, "wait", wait)
    spec = spec_of(domain="t2.smoke.example.org", ephemeral=True, ttl_hours=1)
    steps = replace(Recorder().steps(), health=lifecycle.Steps().health)
    result = lifecycle.up(spec, provider, lambda _l: None, steps=steps)
    assert seen["fetch"] == (result.outputs.ipv4, "t2.smoke.example.org")
    assert seen["target"].ca_bundle == lifecycle.staging_issuer_path(result.stack)
    lifecycle.down(result.stack, provider, lambda _l: None, skip_backup=True, steps=Recorder().steps())
    assert not lifecycle.staging_issuer_path(result.stack).exists()
