"""Local machines as values: cloud-init parsing, nspawn argv, network plan, cgroup plan and limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.providers.local import bootstrap, cgroups, machine, net

CLOUD_INIT = """#cloud-config
users:
  - default
  - name: fedi
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    groups: [sudo, adm]
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3client fedi@op
ssh_pwauth: false
ssh_deletekeys: true
ssh_genkeytypes: []
ssh_keys:
  ed25519_private: |
    -----BEGIN OPENSSH PRIVATE KEY-----
    abc
    -----END OPENSSH PRIVATE KEY-----
  ed25519_public: ssh-ed25519 AAAAC3host root@host
packages: [ansible-core, python3-cffi-backend]
write_files:
  - path: /etc/fedi/marker
    content: aGVsbG8=
    encoding: b64
    permissions: "0640"
runcmd: [echo hi]
"""


def test_parse_cloud_init_reads_user_keys_packages_files():
    boot = bootstrap.parse_cloud_init(CLOUD_INIT)
    (user,) = boot.users
    assert user == bootstrap.User(
        "fedi", ("ssh-ed25519 AAAAC3client fedi@op",), "ALL=(ALL) NOPASSWD:ALL", ("sudo", "adm")
    )
    (key,) = boot.host_keys
    assert key.type == "ed25519" and key.public == "ssh-ed25519 AAAAC3host root@host"
    assert key.private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "abc" not in repr(key)  # never shows the private key
    assert boot.packages == ("ansible-core", "python3-cffi-backend")
    assert boot.write_files == (bootstrap.WriteFile("/etc/fedi/marker", b"hello", 0o640),)
    assert boot.ignored == ("runcmd",)  # reported to the user, not silently dropped


def test_parse_rejects_non_mapping():
    with pytest.raises(ProvisionError):
        bootstrap.parse_cloud_init("- a\n- b\n")
    with pytest.raises(ProvisionError):
        bootstrap.parse_cloud_init("users: [\n")


def test_apply_refuses_packages_missing_from_the_image(tmp_path):
    boot = bootstrap.parse_cloud_init(CLOUD_INIT)
    with pytest.raises(ProvisionError, match="ansible-core"):
        bootstrap.apply(tmp_path, boot, hostname="h", image_packages=("python3-cffi-backend",))


def test_write_files_cannot_escape_the_rootfs(tmp_path):
    with pytest.raises(ProvisionError, match="leaves"):
        bootstrap._inside(tmp_path, "/../../etc/passwd")


def test_useradd_argv():
    user = bootstrap.User("fedi", (), "x", ("sudo",), "/bin/bash")
    assert bootstrap.useradd_argv(Path("/r"), user) == [
        "useradd", "--root", "/r", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "fedi",
    ]  # fmt: skip


def test_nspawn_argv_has_the_flags_that_work_here():
    argv = machine.nspawn_argv("m1", Path("/s/rootfs"), Path("/run/netns/fedi-x"), Path("/s/backups"))
    assert argv[:4] == ["systemd-nspawn", "--directory", "/s/rootfs", "--boot"]
    for flag in (
        "--network-namespace-path=/run/netns/fedi-x",
        "--private-network",
        "--register=no",
        "--keep-unit",
        "--system-call-filter=@keyring bpf",
        "--bind=/s/backups:/var/backups/fedi",
    ):
        assert flag in argv
    assert "CAP_BPF" in next(a for a in argv if a.startswith("--capability="))
    assert argv[argv.index("--machine") + 1] == "m1"


def test_nspawn_env_is_minimal():
    env = machine.nspawn_env()
    assert env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] == "1"
    assert set(env) == {"PATH", "LANG", "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"}


def test_exec_argv():
    m = machine.Machine("m", "/d", "10.213.0.6", "10.213.0.5", "/run/netns/x", 1, leader=42)
    assert machine.exec_argv(m, ["docker", "info"]) == ["nsenter", "--target", "42", "--all", "--", "docker", "info"]


def test_net_plan_one_slash30_per_machine():
    n = net.plan("lemmy-localhost", 3)
    assert (n.host_address, n.address) == ("10.213.0.13", "10.213.0.14")
    assert n.netns == f"fedi-{n.short}" and len(n.host_if) <= 15 and len(n.peer_if) <= 15
    assert net.plan("other", 3).short != n.short
    with pytest.raises(ProvisionError):
        net.plan("x", 0)


def test_net_commands():
    n = net.plan("m", 1)
    setup = net.setup_commands(n)
    assert setup[0] == ["ip", "netns", "add", n.netns]
    assert ["ip", "-n", n.netns, "addr", "add", "10.213.0.6/30", "dev", "eth0"] in setup
    assert ["ip", "-n", n.netns, "route", "add", "default", "via", "10.213.0.5"] in setup
    assert net.teardown_commands(n) == [["ip", "link", "del", n.host_if], ["ip", "netns", "del", n.netns]]


def test_used_indexes_from_ip_output():
    out = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
        "7: fv-1    inet 10.213.0.5/30 scope global fv-1\\       valid_lft forever\n"
        "9: fv-2    inet 10.213.0.13/30 scope global fv-2\n"
        "3: eth0    inet 10.0.0.2/24 brd 10.0.0.255 scope global eth0\n"
    )
    assert net.used_indexes(out) == {1, 3}


def test_cgroup_plan_hybrid(tmp_path):
    for sub in ("unified", "memory", "cpu", "systemd"):
        (tmp_path / sub).mkdir()
    (tmp_path / "unified/cgroup.controllers").write_text("")
    own = "9:name=systemd:/\n4:memory:/job/7\n1:cpu:/\n0::/\n"
    groups = cgroups.plan("abcd", tmp_path, own)
    assert groups.unified == tmp_path / "unified/fedi-abcd"
    assert groups.memory_v1 == tmp_path / "memory/job/7/fedi-abcd"
    assert groups.cpu_v1 == tmp_path / "cpu/fedi-abcd"
    assert groups.systemd_v1 == tmp_path / "systemd/fedi-abcd"
    writes, missing = cgroups.limit_writes(groups, 1.5, 2048)
    assert (groups.memory_v1 / "memory.limit_in_bytes", str(2048 << 20)) in writes
    assert (groups.cpu_v1 / "cpu.cfs_quota_us", "150000") in writes
    assert missing == []


def test_cgroup_plan_pure_v2_uses_memory_max(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory")
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory")
    groups = cgroups.plan("abcd", tmp_path, "0::/\n")
    assert groups.all() == [tmp_path / "fedi-abcd"]
    writes, missing = cgroups.limit_writes(groups, 2, 4096)
    assert writes == [
        (tmp_path / "fedi-abcd/memory.max", str(4096 << 20)),
        (tmp_path / "fedi-abcd/cpu.max", "200000 100000"),
    ]


def test_cgroup_limits_not_enforceable_are_reported(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("")
    groups = cgroups.plan("abcd", tmp_path, "0::/\n")
    writes, missing = cgroups.limit_writes(groups, 2, 4096)
    assert writes == [] and len(missing) == 2 and "memory" in missing[0]


def test_disable_argv():
    assert machine.disable_argv(Path("/r")) == [
        "systemctl", "--root=/r", "disable", "valkey-server.service", "rabbitmq-server.service",
    ]  # fmt: skip


def test_nat_commands_masquerade_only_the_machines_slash30():
    n = net.plan("m", 1)
    cmds = net.nat_commands(n)
    table = ["ip", n.netns]
    assert cmds[0] == ["nft", "add", "table", *table]
    masquerade = ["ip", "saddr", "10.213.0.4/30", "oifname", "!=", n.host_if, "masquerade"]
    assert ["nft", "add", "rule", *table, "masq", *masquerade] in cmds
    assert net.nat_teardown_commands(n) == [["nft", "delete", "table", *table]]


def test_internet_reachable_is_a_bounded_tcp_probe():
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        assert net.internet_reachable((("127.0.0.1", port),), timeout=2)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert not net.internet_reachable((("127.0.0.1", port),), timeout=2)


def test_machine_network_comes_from_its_record_and_names_from_its_directory():
    m = machine.Machine("m", "/d", "10.213.0.10", "10.213.0.9", "/run/netns/fedi-abcd1234", 2)
    assert (m.net.netns, m.net.host_if, m.net.address) == ("fedi-abcd1234", "fv-abcd1234", "10.213.0.10")
    # the same stack name under two state dirs gets two networks
    assert net.plan("/a/local/lemmy-localhost", 1).netns != net.plan("/b/local/lemmy-localhost", 1).netns


def test_forwarding_goes_back_to_what_it_was_when_the_last_nat_table_is_gone(tmp_path, monkeypatch):
    forward, before = tmp_path / "ip_forward", tmp_path / "before"
    monkeypatch.setattr(net, "IP_FORWARD", forward)
    monkeypatch.setattr(net, "FORWARD_BEFORE", before)
    monkeypatch.setattr(net.shutil, "which", lambda _: "/usr/sbin/nft")
    tables = ["table ip fedi-aaaa1111\ntable ip fedi-bbbb2222\n"]
    calls = []

    def run(argv):
        calls.append(argv)
        return net.subprocess.CompletedProcess(argv, 0, tables[0] if argv[:3] == ["nft", "list", "tables"] else "", "")

    monkeypatch.setattr(net, "_run", run)
    forward.write_text("0\n")
    n1, n2 = net.plan("a", 1), net.plan("b", 2)
    net.enable_nat(n1)
    net.enable_nat(n2)
    assert forward.read_text() == "1\n" and before.read_text() == "0\n"
    tables[0] = "table ip fedi-bbbb2222\ntable ip docker\n"
    net.teardown(n1)
    assert forward.read_text() == "1\n", "another machine still forwards"
    tables[0] = "table ip docker\n"
    net.teardown(n2)
    assert forward.read_text() == "0\n" and not before.exists()


def test_forwarding_that_was_already_on_is_left_on(tmp_path, monkeypatch):
    forward, before = tmp_path / "ip_forward", tmp_path / "before"
    monkeypatch.setattr(net, "IP_FORWARD", forward)
    monkeypatch.setattr(net, "FORWARD_BEFORE", before)
    monkeypatch.setattr(net.shutil, "which", lambda _: "/usr/sbin/nft")
    monkeypatch.setattr(net, "_run", lambda argv: net.subprocess.CompletedProcess(argv, 0, "", ""))
    forward.write_text("1\n")
    net.enable_nat(net.plan("a", 1))
    net.teardown(net.plan("a", 1))
    assert forward.read_text() == "1\n" and not before.exists()
