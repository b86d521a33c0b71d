"""An interrupted `fedi up` never leaves a server that later runs cannot fix (issue 16).

The real playbook, driven over SSH by :func:`provision.remote.configure.configure` exactly as `fedi up`
does, on one booted Debian 13 machine shared by this module. Each test cuts a run short at a point
where a change is on disk but the service has not loaded it yet (Ctrl-C: configure stops the
playbook's scope), checks that the service indeed still serves the old state, then requires the next
run to succeed and the one after it to report changed=0, with the service serving the new state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from provision.model import Bundle, HostAccess
from provision.remote.configure import configure
from provision.remote.session import HostKeyMismatch, wait_for_ssh

pytestmark = pytest.mark.testhost

BIN = Path(sys.executable).parent
RUNTIME = {"fedi_volume_device": "", "fedi_start_app": False, "fedi_bundle_dir": "/opt/fedi/bundle"}


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Server:
    machine: object  # provision.providers.local.machine.Machine
    bundle: Bundle
    access: HostAccess  # its host_key is the key pinned now (updated as `fedi up` would)
    bootstrap_key: str
    logs: Path
    shown: list[str] = field(default_factory=list)

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        from provision.providers.local import machine

        return machine.run_in(self.machine, ["bash", "-c", script], timeout=120)

    def configure(self, interrupt_after: str = ""):
        """One configure run; with ``interrupt_after``, Ctrl-C as soon as that task reports `changed`."""
        self.shown.clear()

        def progress(line: str) -> None:
            self.shown.append(line)
            _progress(line)
            if interrupt_after and line.startswith("changed") and line.endswith(interrupt_after):
                raise KeyboardInterrupt

        result = configure(self.access, self.bundle, RUNTIME, progress, log_dir=self.logs)
        self.access = replace(self.access, host_key=result.host_key)  # what lifecycle.up pins
        return result

    def interrupt(self, after: str) -> None:
        with pytest.raises(KeyboardInterrupt):
            self.configure(interrupt_after=after)
        assert f"stopped the playbook on {self.access.address}" in self.shown, self.shown[-5:]

    def served(self, name: str, *files: str) -> bool:
        """Whether the served record says ``name`` runs with ``files`` as they are now."""
        return self.sh(f"/usr/local/lib/fedi/fedi-served check {name} {' '.join(files)}").returncode == 0


@pytest.fixture(scope="module")
def server(local_image, tmp_path_factory):
    from provision.providers.local import bootstrap, machine, manual

    root = tmp_path_factory.mktemp("convergence")
    out = root / "bundle"
    render = [BIN / "fedi", "render", "--software", "lemmy", "--size", "tiny", "--domain", "lemmy.localhost"]
    env = {**os.environ, **{f"FEDI_{k}_DIR": str(root / k.lower()) for k in ("STATE", "CACHE", "CONFIG")}}
    proc = subprocess.run(
        [*render, "--provider", "local", "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cloud_init = (out / "cloud-init.yaml").read_text()
    boot = bootstrap.parse_cloud_init(cloud_init)
    state = root / "state"
    name = f"fedi-cv-{uuid.uuid4().hex[:6]}"
    directory = machine.machine_dir(name, state)
    directory.mkdir(parents=True, mode=0o700)
    boot = replace(boot, users=manual.dev_bootstrap(directory).users)  # a client key this test holds
    bundle = Bundle(out, json.loads((out / "manifest.json").read_text()), cloud_init, boot.host_keys[0].public)
    try:
        machine.create(name, boot, _progress, state=state)
        booted = machine.boot(name, _progress, cpus=2, memory_mb=4096, state=state)
        key = directory / "client_key"
        access = HostAccess(booted.address, user="fedi", host_key=bundle.host_public_key, client_key=key)
        assert wait_for_ssh(access, timeout=120) >= 1
        yield Server(booted, bundle, access, bundle.host_public_key, root / "logs")
    finally:
        machine.destroy(name, _progress, state=state, purge_backups=True)


def test_interrupted_after_the_host_key_rotation(server: Server) -> None:
    """The issue's report: Ctrl-C after the new host key was written, before sshd was reloaded."""
    server.interrupt(after="Publish the fresh public host key for the remote step to pin")
    rotated = server.sh("cat /opt/fedi/host_key.pub").stdout.split()[:2]
    assert rotated and rotated != server.bootstrap_key.split()[:2]
    # sshd still serves the bootstrap key: the reload did not happen, and the pin still holds
    assert wait_for_ssh(server.access, timeout=30) >= 1

    fixed = server.configure()
    assert fixed.host_key.split() == rotated
    assert any(line.startswith("changed") and "Reload sshd" in line for line in server.shown), server.shown
    with pytest.raises(HostKeyMismatch):
        wait_for_ssh(replace(server.access, host_key=server.bootstrap_key), timeout=10)

    again = server.configure()
    assert (again.changed, again.failed) == (0, 0), [line for line in server.shown if line.startswith("changed")]


def test_interrupted_before_caddys_reload(server: Server) -> None:
    """A changed Caddyfile, cut short in the middle of the roles after it: Caddy runs the old one."""
    caddyfile = server.bundle.path("proxy")
    original = caddyfile.read_text()
    site = '\nhttp://converged.invalid:8089 {\n\trespond "converged"\n}\n'
    try:
        caddyfile.write_text(original + site)
        server.interrupt(after="Install the bundle's Caddyfile")
        assert "converged.invalid" in server.sh("cat /etc/caddy/Caddyfile").stdout
        assert "converged.invalid" not in _caddy_config(server)
        assert not server.served("caddy", "/etc/caddy/Caddyfile")

        fixed = server.configure()
        assert fixed.failed == 0
        assert "converged.invalid" in _caddy_config(server)
        assert server.served("caddy", "/etc/caddy/Caddyfile")
        again = server.configure()
        assert (again.changed, again.failed) == (0, 0), [line for line in server.shown if line.startswith("changed")]
    finally:
        caddyfile.write_text(original)


def test_interrupted_in_the_postgres_role(server: Server) -> None:
    """A changed Postgres setting, cut short right after the file was installed: the next run applies it."""
    tuning = server.bundle.path("postgres")
    original = tuning.read_text()
    try:
        tuning.write_text(original + "\nwork_mem = '7MB'\n")
        server.interrupt(after="Install the tuning from the bundle")
        fixed = server.configure()
        assert fixed.failed == 0
        assert _psql(server, "SHOW work_mem") == "7MB"
        again = server.configure()
        assert (again.changed, again.failed) == (0, 0), [line for line in server.shown if line.startswith("changed")]
    finally:
        tuning.write_text(original)


def test_the_next_run_puts_everything_back(server: Server) -> None:
    """The bundle as rendered again: the earlier changes are undone and served, then nothing changes."""
    server.configure()
    assert "converged.invalid" not in _caddy_config(server)
    assert _psql(server, "SHOW work_mem") != "7MB"
    again = server.configure()
    assert (again.changed, again.failed) == (0, 0), [line for line in server.shown if line.startswith("changed")]
    names = server.sh("ls /var/lib/fedi/served").stdout.split()
    assert {"sshd", "caddy", "firewall", "fail2ban", "postgres-settings", "postgres-hba"} <= set(names), names
    assert server.sh("stat -c %a /var/lib/fedi/served").stdout.strip() == "700"


def _caddy_config(server: Server) -> str:
    """The configuration Caddy is running, from its admin API (on the machine's loopback)."""
    proc = server.sh("curl -fsS http://127.0.0.1:2019/config/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _psql(server: Server, sql: str) -> str:
    return server.sh(f'runuser -u postgres -- psql -XtAc "{sql}"').stdout.strip()
