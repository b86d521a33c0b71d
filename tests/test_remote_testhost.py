"""The remote step on the real Debian 13 test host: the `fedi` user, sudo, Debian's own ansible-core.

The machine comes from the shared ``test_machine`` fixture (systemd-nspawn, booted with systemd as
PID 1). The playbook here is a tiny one that only publishes the host key it finds; the real playbook's
end-to-end run is the local provider's test. This proves the parts that differ from the loopback
tests: a non-root login with NOPASSWD sudo, the install into /opt/fedi as root, journalctl for logs.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_remote_sshd import keypair

from provision.errors import RemoteError
from provision.model import Bundle, HostAccess
from provision.remote import commands
from provision.remote.configure import configure
from provision.remote.session import HostKeyMismatch, connect, run, wait_for_ssh
from provision.remote.shell import interactive_shell, logs

pytestmark = pytest.mark.testhost

SITE = """\
- name: Tiny playbook for the remote step
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Both variable files are loaded
      ansible.builtin.assert:
        that: [fedi_domain == "testhost.localhost", not fedi_start_app]
    - name: Publish the host key sshd serves
      ansible.builtin.copy:
        src: /etc/ssh/ssh_host_ed25519_key.pub
        dest: /opt/fedi/host_key.pub
        remote_src: true
        mode: "0644"
"""


SLOW_SITE = """\
- name: A playbook that takes long
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Start
      ansible.builtin.debug:
        msg: starting
    - name: A long task
      ansible.builtin.command: sleep 4242
      changed_when: false
"""


def _access(test_machine) -> HostAccess:
    return HostAccess(
        address=test_machine.address,
        user="fedi",
        host_key=test_machine.host_public_key,
        client_key=test_machine.client_key,
    )


def _tiny_bundle(tmp_path: Path, access: HostAccess, site: str) -> tuple[Bundle, Path]:
    tmp_path.mkdir(exist_ok=True)
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir(mode=0o700)
    (bundle_dir / "ansible-vars.yml").write_text("fedi_domain: testhost.localhost\nfedi_db_password: pw-123456789\n")
    (bundle_dir / "ansible-vars.yml").chmod(0o600)
    (bundle_dir / "manifest.json").write_text('{"files": {}}')
    ansible = tmp_path / "ansible"
    ansible.mkdir()
    (ansible / "site.yml").write_text(site)
    return Bundle(bundle_dir, {"files": {}}, "", access.host_key), ansible


RUNTIME = {"fedi_volume_device": "", "fedi_start_app": False, "fedi_bundle_dir": "/opt/fedi/bundle"}


def test_configure_through_sudo_on_debian_13(test_machine, tmp_path: Path) -> None:
    access = _access(test_machine)
    assert wait_for_ssh(access, timeout=120) >= 1

    # a wrong pin is refused before anything is sent
    with pytest.raises(HostKeyMismatch):
        connect(replace(access, host_key=keypair(tmp_path / "impostor")))
    assert run(access, ["test", "-e", "/opt/fedi/bundle"])[0] == 1

    bundle, ansible = _tiny_bundle(tmp_path, access, SITE)
    shown: list[str] = []
    runtime = RUNTIME
    result = configure(access, bundle, runtime, shown.append, ansible_dir=ansible, log_dir=tmp_path / "logs")

    assert result.host_key == " ".join(access.host_key.split()[:2])  # this tiny playbook does not rotate
    assert (result.changed, result.failed) == (1, 0)
    assert run(access, ["systemctl", "is-active", "fedi-configure.scope"])[1].strip() not in commands.BUSY_STATES
    assert "changed  Publish the host key sshd serves" in shown
    rc, out, _ = run(
        access,
        ["sudo", "-n", "stat", "-c", "%a %U %n", "/opt/fedi/bundle", "/opt/fedi/bundle/ansible-vars.yml",
         "/opt/fedi/runtime.yml", "/opt/fedi/ansible/site.yml"],
    )  # fmt: skip
    assert rc == 0, out
    assert out.splitlines() == [
        "700 root /opt/fedi/bundle",
        "600 root /opt/fedi/bundle/ansible-vars.yml",
        "600 root /opt/fedi/runtime.yml",
        "644 root /opt/fedi/ansible/site.yml",
    ]
    assert run(access, ["sh", "-c", "ls -d /tmp/fedi-upload.* 2>/dev/null | wc -l"])[1].strip() == "0"

    # the same again converges
    again = configure(access, bundle, runtime, lambda _: None, ansible_dir=ansible, log_dir=tmp_path / "logs")
    assert (again.changed, again.failed) == (0, 0)

    # fedi logs ssh: journalctl through sudo, streamed
    lines: list[str] = []
    assert logs(access, "ssh", lines=50, write=lines.append) == 0
    assert any("Accepted publickey for fedi" in line for line in lines), lines[-5:]

    # fedi ssh: the system client with only the pinned key
    if shutil.which("ssh"):
        assert interactive_shell(access, ["sudo", "-n", "true"]) == 0
        assert interactive_shell(replace(access, host_key=keypair(tmp_path / "other")), ["true"]) == 255
    assert commands.Layout().host_key_file == "/opt/fedi/host_key.pub"


def test_an_interrupted_playbook_is_stopped_whole_on_the_server(test_machine, tmp_path: Path) -> None:
    """Ctrl-C during `fedi up`: the playbook and what its task started stop on the server too, and the
    next run is not blocked. A run that finds an earlier playbook still going says so and starts none."""
    access = _access(test_machine)
    assert wait_for_ssh(access, timeout=120) >= 1
    bundle, ansible = _tiny_bundle(tmp_path, access, SLOW_SITE)
    shown: list[str] = []

    def interrupt_once_the_long_task_runs(line: str) -> None:
        shown.append(line)
        if line.startswith("ok       Start"):
            for _ in range(60):  # bounded: the task's process shows up within seconds
                if run(access, ["pgrep", "-f", "^sleep 4242"])[0] == 0:
                    raise KeyboardInterrupt
                time.sleep(0.5)
            raise AssertionError("the long task never started")

    with pytest.raises(KeyboardInterrupt):
        configure(access, bundle, RUNTIME, interrupt_once_the_long_task_runs, ansible_dir=ansible, log_dir=tmp_path)
    assert f"stopped the playbook on {access.address}" in shown
    assert run(access, ["pgrep", "-f", "^sleep 4242"])[0] == 1, "the task's process was left running"
    assert run(access, ["pgrep", "-f", "[a]nsible-playbook"])[0] == 1, "ansible-playbook was left running"
    assert run(access, ["systemctl", "is-active", "fedi-configure.scope"])[1].strip() != "active"

    # An earlier playbook still running (its connection dropped): refused with one clear line.
    start = "systemd-run --scope --unit=fedi-configure.scope --quiet -- sleep 4343 >/dev/null 2>&1 &"
    assert run(access, ["sudo", "-n", "sh", "-c", start])[0] == 0
    try:
        for _ in range(40):
            if run(access, ["systemctl", "is-active", "fedi-configure.scope"])[1].strip() == "active":
                break
            time.sleep(0.25)
        other_bundle, other_ansible = _tiny_bundle(tmp_path / "second", access, SITE)
        with pytest.raises(RemoteError, match="a playbook from an earlier fedi run is still running"):
            configure(access, other_bundle, RUNTIME, lambda _: None, ansible_dir=other_ansible, log_dir=tmp_path)
        assert run(access, ["pgrep", "-f", "^/usr/bin/sleep 4343"])[0] == 0, "the earlier run was left alone"
        # nothing the earlier run reads was replaced
        assert run(access, ["sudo", "-n", "cat", "/opt/fedi/ansible/site.yml"])[1] == SLOW_SITE
    finally:
        run(access, ["sudo", "-n", "systemctl", "stop", "fedi-configure.scope"])
