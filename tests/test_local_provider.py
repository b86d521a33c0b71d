"""The local provider: secrets and records encrypted at rest, plan, preflight, and (testhost) a real
`up` from a rendered bundle, reached with the bundle's pinned host key, and a `down` that removes it."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from provision.errors import MissingPrerequisite, ProvisionError
from provision.providers import get_provider
from provision.providers.local import provider as local_provider
from provision.sizing import sizing
from provision.spec import build_spec


def _spec(domain="lemmy.localhost", software="lemmy", size="tiny"):
    return build_spec({"software": software, "size": size, "domain": domain, "provider": "local"})


def test_get_provider_local():
    prov = get_provider("local")
    assert isinstance(prov, local_provider.LocalProvider) and prov.name == "local"


def test_secrets_are_generated_once_and_stored_encrypted(fedi_dirs):
    prov = local_provider.provider()
    spec = _spec()
    first = prov.secrets(spec)
    assert prov.secrets(spec) == first
    path = fedi_dirs / "state" / "local" / spec.stack_name / "state.json"
    raw = path.read_text()
    assert first["db_password"] not in raw and "BEGIN OPENSSH" not in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [summary] = prov.stacks()
    assert (summary.stack, summary.provider, summary.software, summary.size) == (
        spec.stack_name,
        "local",
        "lemmy",
        "tiny",
    )


def test_plan_stores_nothing(fedi_dirs):
    prov = local_provider.provider()
    spec = _spec()
    prov.secrets(spec, store=False)
    assert prov.stacks() == []


def test_pin_host_key_and_outputs_without_a_machine(fedi_dirs):
    prov = local_provider.provider()
    spec = _spec()
    secrets = prov.secrets(spec)
    prov._store().update(spec.stack_name, bootstrap_host_key=secrets["ssh_host_ed25519_key_pub"])
    out = prov.outputs(spec.stack_name)
    assert out.access.host_key == secrets["ssh_host_ed25519_key_pub"]
    assert out.access.user == "fedi" and out.access.port == 22 and out.extra["state"] == "absent"
    assert out.extra["start_app"] is False
    assert stat.S_IMODE(out.access.client_key.stat().st_mode) == 0o600
    assert out.access.client_key.read_text() == secrets["ssh_client_key"]
    prov.pin_host_key(spec.stack_name, "ssh-ed25519 AAAAnew\n")
    assert prov.outputs(spec.stack_name).access.host_key == "ssh-ed25519 AAAAnew"
    with pytest.raises(ProvisionError):
        prov.pin_host_key(spec.stack_name, " ")


def test_the_pin_follows_the_machine_and_a_new_machine_gets_a_fresh_bootstrap_key(fedi_dirs):
    from provision.providers.local import machine

    prov = local_provider.provider()
    spec = _spec()
    secrets = prov.secrets(spec)
    prov._store().update(spec.stack_name, bootstrap_host_key=secrets["ssh_host_ed25519_key_pub"])
    marker = machine.machine_dir(spec.stack_name) / "bootstrapped"
    marker.write_text("first-machine\n")  # what machine.create writes: the machine's identity
    lines: list[str] = []
    assert prov.renew_bootstrap_key(spec, lines.append) is False  # never configured: nothing to renew
    prov.pin_host_key(spec.stack_name, "ssh-ed25519 AAAArotated")
    assert prov.outputs(spec.stack_name).access.host_key == "ssh-ed25519 AAAArotated"
    assert prov.renew_bootstrap_key(spec, lines.append) is False  # the machine is still there

    marker.unlink()  # the machine and its disk are lost; this computer keeps the stack
    assert prov.outputs(spec.stack_name).access.host_key == secrets["ssh_host_ed25519_key_pub"]
    assert prov.renew_bootstrap_key(spec, lines.append) is True
    renewed = prov.secrets(spec)
    assert renewed["ssh_host_ed25519_key_pub"] != secrets["ssh_host_ed25519_key_pub"]
    assert {k: v for k, v in renewed.items() if "host" not in k} == {
        k: v for k, v in secrets.items() if "host" not in k
    }
    assert prov.outputs(spec.stack_name).access.host_key == renewed["ssh_host_ed25519_key_pub"]
    assert lines == [f"the machine of {spec.stack_name} is gone: the new one gets a fresh one-time host key"]
    marker.write_text("second-machine\n")  # the new machine, not configured yet: its bootstrap key
    assert prov.outputs(spec.stack_name).access.host_key == renewed["ssh_host_ed25519_key_pub"]
    assert prov.renew_bootstrap_key(spec, lines.append) is False


def test_outputs_of_unknown_stack_is_one_line():
    with pytest.raises(ProvisionError, match="no local stack"):
        local_provider.provider().outputs("nope-localhost")


def test_preflight_names_what_is_missing_and_how_to_install(monkeypatch):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(local_provider.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        local_provider.shutil,
        "which",
        lambda tool: None if tool in ("debootstrap", "systemd-nspawn") else real_which(tool),
    )
    with pytest.raises(MissingPrerequisite) as err:
        local_provider.provider().preflight(_spec())
    assert "systemd-nspawn, debootstrap not installed" in err.value.line()
    assert "apt-get install -y --no-install-recommends debootstrap systemd-container" in err.value.line()
    asked: list[str] = []
    with pytest.raises(MissingPrerequisite):
        local_provider.provider(confirm=lambda q: asked.append(q) or False).preflight(_spec())
    assert asked == ["Install debootstrap, systemd-container with apt-get?"]


def test_preflight_needs_root(monkeypatch):
    monkeypatch.setattr(local_provider.os, "geteuid", lambda: 1000)
    with pytest.raises(MissingPrerequisite, match="needs root"):
        local_provider.provider().preflight(_spec())


def test_install_argv():
    assert local_provider.install_argv(["debootstrap"]) == [
        "apt-get", "install", "-y", "--no-install-recommends", "debootstrap",
    ]  # fmt: skip


def _render(spec, secrets, out: Path):
    from provision.render.bundle import render_bundle

    return render_bundle(spec, sizing(spec), secrets, None, out)


def _connect(address: str, host_key: str, client_key: Path):
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    kind, blob = host_key.split()[:2]
    client.get_host_keys().add(address, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
    client.connect(address, username="fedi", key_filename=str(client_key), look_for_keys=False, allow_agent=False)
    return client


@pytest.mark.testhost
def test_up_from_a_rendered_bundle_then_down_leaves_nothing(local_image, tmp_path):
    from provision.providers.local import machine

    prov = local_provider.provider()
    spec = _spec("prov.localhost")
    prov.preflight(spec)
    secrets = prov.secrets(spec)
    bundle = _render(spec, secrets, tmp_path / "bundle")
    lines: list[str] = []
    try:
        out = prov.up(spec, sizing(spec), bundle, lines.append)
        assert out.access.host_key == bundle.host_public_key == secrets["ssh_host_ed25519_key_pub"]
        assert out.extra["state"] == "running" and out.extra["memory_mb"] == sizing(spec).server.ram_mb
        assert any("cannot be pulled" in line for line in lines)
        client = _connect(out.access.address, out.access.host_key, out.access.client_key)
        try:
            _, stdout, _ = client.exec_command(
                "cat ~/.ssh/authorized_keys; sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub"
            )
            text = stdout.read().decode()
        finally:
            client.close()
        assert secrets["ssh_client_key_pub"] in text and secrets["ssh_host_ed25519_key_pub"].split()[1] in text
        assert [s.stack for s in prov.stacks()] == [spec.stack_name]
        again = prov.up(spec, sizing(spec), bundle, lines.append)  # converge: the same machine, still running
        assert again.access.address == out.access.address
        record = machine.load(spec.stack_name)
    finally:
        prov.down(spec.stack_name, lines.append, purge_backups=True)
    assert prov.stacks() == []
    assert not Path(record.netns).exists() and not any(Path(g).exists() for g in record.groups)
    assert not machine.alive(record.pid)
    assert not machine.machine_dir(spec.stack_name).exists()


def test_open_and_trust_hints():
    ca = Path("/s/root.crt")
    hint = local_provider.open_hint("lemmy.localhost", "10.213.0.6", ca)
    assert "curl --cacert /s/root.crt --resolve lemmy.localhost:443:10.213.0.6 https://lemmy.localhost/" in hint
    trust = local_provider.trust_hint("lemmy-localhost", ca)
    assert trust == "cp /s/root.crt /usr/local/share/ca-certificates/fedi-lemmy-localhost.crt && update-ca-certificates"


def test_the_stack_keeps_its_admins(fedi_dirs):
    prov = local_provider.provider()
    spec = _spec()
    prov.secrets(spec)
    assert prov.outputs(spec.stack_name).extra["admins"] == []
    records = [{"name": "alice", "key": "ssh-ed25519 AAAA", "fingerprint": "SHA256:x"}]
    prov.set_admins(spec.stack_name, records)
    assert prov.outputs(spec.stack_name).extra["admins"] == records
    with pytest.raises(ProvisionError):
        prov.set_admins("no-such-stack", records)
    kits = [
        {"exported": "2026-12-06T00:00:00Z", "threshold": 1, "trustees": [{"fingerprint": "SHA256:y", "own": False}]}
    ]
    prov.set_kits(spec.stack_name, kits)
    assert (
        prov.outputs(spec.stack_name).extra["kits"] == kits and prov.outputs(spec.stack_name).extra["admins"] == records
    )
    with pytest.raises(ProvisionError):
        prov.set_kits("no-such-stack", kits)
