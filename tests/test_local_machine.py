"""The local provider's machines on this host, for real: image cache, boot, pinned SSH, systemd,
docker, limits, backups bind mount, and a teardown that leaves nothing behind."""

from __future__ import annotations

import base64
import os
import time
import uuid
from pathlib import Path

import pytest

from provision.providers.local import cgroups, image, machine, manual, net

pytestmark = pytest.mark.testhost


def _ssh(address: str, pinned: str, client_key: Path):
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    kind, blob = pinned.split()[:2]
    client.get_host_keys().add(address, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
    client.connect(
        address, 22, username="fedi", key_filename=str(client_key), look_for_keys=False, allow_agent=False, timeout=10
    )
    return client


def _exec(client, command: str) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=120)
    out = stdout.read().decode() + stderr.read().decode()
    return stdout.channel.recv_exit_status(), out


def test_image_is_cached_and_reused(local_image):
    lines: list[str] = []
    again = image.ensure_image(lines.append)
    assert again == local_image and again.stat().st_size > 100 << 20
    assert lines == []  # reused: no build step reported
    assert again.name == f"debian13-{image.image_hash()}.tar.zst"


def test_ssh_with_the_pinned_host_key_as_the_admin_user(test_machine):
    client = _ssh(test_machine.address, test_machine.host_public_key, test_machine.client_key)
    try:
        assert _exec(client, "id -un") == (0, "fedi\n")
        assert _exec(client, "sudo -n id -u") == (0, "0\n")
        rc, out = _exec(client, "cat /etc/os-release")
        assert rc == 0 and "VERSION_CODENAME=trixie" in out
    finally:
        client.close()


def test_a_different_host_key_is_rejected(test_machine):
    import paramiko

    _, other = manual.ed25519_pair()
    with pytest.raises(paramiko.BadHostKeyException):
        _ssh(test_machine.address, other, test_machine.client_key)


def test_systemd_is_pid1_and_the_system_is_running(test_machine):
    result = test_machine.run(["systemctl", "is-system-running", "--wait"], timeout=180)
    assert result.stdout.strip() == "running", test_machine.run(["systemctl", "--failed", "--no-legend"]).stdout
    assert test_machine.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"


def test_docker_runs_inside(test_machine):
    deadline = time.monotonic() + 120
    while True:
        result = test_machine.run(["docker", "info", "--format", "{{.ServerVersion}} {{.CgroupVersion}}"])
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stderr
    version, cgroup = result.stdout.split()
    assert version.startswith("26.") and cgroup == "2"
    compose = test_machine.run(["docker", "compose", "version"])
    assert compose.returncode == 0 and "version 2." in compose.stdout


def test_every_image_package_is_installed(test_machine):
    fmt = "${Package} ${db:Status-Abbrev}\n"
    result = test_machine.run(["dpkg-query", "-W", f"-f={fmt}", *image.PACKAGES])
    status = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert {p: status.get(p, "").strip() for p in image.PACKAGES} == {p: "ii" for p in image.PACKAGES}


def test_backups_live_off_the_machine(test_machine):
    marker = uuid.uuid4().hex
    assert test_machine.run(["sh", "-c", f"echo {marker} > /var/backups/fedi/marker"]).returncode == 0
    assert (test_machine.machine.backups / "marker").read_text().strip() == marker


def test_memory_and_cpu_limits_are_set(test_machine):
    m = test_machine.machine
    groups = m.cgroups
    if groups.memory_v1 is not None:
        assert int((groups.memory_v1 / "memory.limit_in_bytes").read_text()) == 4096 << 20
        assert int((groups.cpu_v1 / "cpu.cfs_quota_us").read_text()) == 200_000
        in_memory_group = (groups.memory_v1 / "cgroup.procs").read_text().split()
        assert str(m.leader) in in_memory_group and str(m.pid) in in_memory_group
    else:
        assert (groups.unified / "memory.max").read_text().strip() == str(4096 << 20)
    assert m.leader in cgroups.pids(groups)
    resized = machine.resize(m.name, 1, 2048, state=test_machine.state)
    try:
        if groups.memory_v1 is not None:
            assert int((groups.memory_v1 / "memory.limit_in_bytes").read_text()) == 2048 << 20
        assert (resized.cpus, resized.memory_mb) == (1, 2048)
    finally:
        machine.resize(m.name, 2, 4096, state=test_machine.state)


def _leftovers(m: machine.Machine, pid: int, leader: int) -> list[str]:
    found = []
    if Path(m.netns).exists():
        found.append(m.netns)
    if Path(f"/sys/class/net/{m.net.host_if}").exists():
        found.append(m.net.host_if)
    found += [g for g in m.groups if Path(g).exists()]
    found += [str(p) for p in (pid, leader) if Path(f"/proc/{p}").exists() and machine.alive(p)]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [line for line in mounts.splitlines() if m.directory in line or m.net.netns in line]
    return found


def test_stop_boot_keeps_data_and_destroy_leaves_nothing(local_image, tmp_path):
    name = f"fedi-td-{uuid.uuid4().hex[:6]}"
    directory = machine.machine_dir(name, tmp_path)
    directory.mkdir(parents=True)
    boot = manual.dev_bootstrap(directory)
    machine.create(name, boot, lambda _: None, state=tmp_path)
    try:
        first = machine.boot(name, lambda _: None, cpus=1, memory_mb=1024, state=tmp_path)
        assert first.pid and first.leader and machine.running(first)
        assert machine.run_in(first, ["sh", "-c", "echo kept > /root/kept"]).returncode == 0
        machine.stop(name, lambda _: None, state=tmp_path)
        assert _leftovers(first, first.pid, first.leader) == []
        stopped = machine.load(name, tmp_path)
        assert stopped is not None and not machine.running(stopped)

        second = machine.boot(name, lambda _: None, cpus=1, memory_mb=1024, state=tmp_path)
        assert second.address == first.address  # the same /30 again
        assert machine.run_in(second, ["cat", "/root/kept"]).stdout == "kept\n"
        assert [m.name for m in machine.list_machines(tmp_path)] == [name]
    finally:
        machine.destroy(name, lambda _: None, state=tmp_path, purge_backups=True)
    assert _leftovers(second, second.pid, second.leader) == []
    assert not (directory / "rootfs").exists() and not (directory / "backups").exists()
    assert not net.exists(second.net)


def test_app_specific_services_are_off_until_the_playbook_enables_them(test_machine):
    for unit in machine.OFF_UNTIL_CONFIGURED:
        state = test_machine.run(["systemctl", "is-enabled", unit]).stdout.strip()
        assert state == "disabled", unit
    assert test_machine.run(["systemctl", "is-enabled", "postgresql"]).stdout.strip() == "enabled"


SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080))
srv.listen(1)
srv.settimeout(90)
print("ready", flush=True)
conn, peer = srv.accept()
print(peer[0], flush=True)
"""


def test_internet_access_is_forwarded_and_masqueraded(local_image, tmp_path):
    """An "outside" endpoint in its own namespace stands in for the internet: the machine reaches it
    through the host, and it sees the host's address (masquerade), never the machine's."""
    import shutil
    import subprocess
    import sys

    if shutil.which("nft") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("nft is not installed (scripts/test installs nftables)")
        pytest.skip("nft is not installed")
    forward_before = net.IP_FORWARD.read_text()
    outside = net.setup(f"outside-{uuid.uuid4().hex[:6]}")
    name = f"fedi-nat-{uuid.uuid4().hex[:6]}"
    directory = machine.machine_dir(name, tmp_path)
    directory.mkdir(parents=True)
    machine.create(name, manual.dev_bootstrap(directory), lambda _: None, state=tmp_path)
    server = subprocess.Popen(
        ["ip", "netns", "exec", outside.netns, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        m = machine.boot(name, lambda _: None, cpus=1, memory_mb=1024, state=tmp_path, internet=True)
        assert m.extra["internet"] == "yes"
        connect = f"import socket; socket.create_connection(({outside.address!r}, 8080), 10).close()"
        result = machine.run_in(m, ["python3", "-c", connect], timeout=60)
        assert result.returncode == 0, result.stderr
        seen = server.stdout.readline().strip()
        assert seen == outside.host_address and seen != m.address
        assert subprocess.run(["nft", "list", "table", "ip", m.net.netns], capture_output=True).returncode == 0
    finally:
        server.kill()
        server.wait()
        machine.destroy(name, lambda _: None, state=tmp_path, purge_backups=True)
        net.teardown(outside)
    assert subprocess.run(["nft", "list", "table", "ip", m.net.netns], capture_output=True).returncode != 0
    assert not net.exists(outside) and not net.exists(m.net)
    assert net.IP_FORWARD.read_text() == forward_before, "forwarding is set back once no machine needs it"


def test_a_failed_boot_leaves_nothing(local_image, tmp_path, monkeypatch):
    from provision.errors import ProvisionError

    name = f"fedi-fail-{uuid.uuid4().hex[:6]}"
    directory = machine.machine_dir(name, tmp_path)
    directory.mkdir(parents=True)
    machine.create(name, manual.dev_bootstrap(directory), lambda _: None, state=tmp_path)
    planned = net.plan(str(directory), 1)

    def refuse(network):
        assert net.exists(network)  # the namespace was made before the failure
        raise ProvisionError("no NAT here")

    monkeypatch.setattr(net, "enable_nat", refuse)
    try:
        with pytest.raises(ProvisionError, match="no NAT here"):
            machine.boot(name, lambda _: None, cpus=1, memory_mb=1024, state=tmp_path, internet=True)
        assert not Path(f"/run/netns/fedi-{planned.short}").exists()
        assert not Path(f"/sys/class/net/{planned.host_if}").exists()
        assert [g for g in cgroups.plan(planned.short).all() if g.exists()] == []
    finally:
        machine.destroy(name, lambda _: None, state=tmp_path, purge_backups=True)
