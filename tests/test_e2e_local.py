"""End to end on this machine: `fedi up --provider local` through the real CLI, the real bundle,
remote (paramiko with the pinned key), the real playbook on a booted Debian 13 machine; then checks
on that machine, a second playbook run with no change, and `fedi down` leaving nothing behind.

Apps: lemmy, mastodon and kbin by default (about 4 minutes apiece); FEDI_E2E_APPS=lemmy picks fewer.
The app's own containers cannot start here (no registry): the playbook skips exactly that step
(fedi_start_app=false) and the compose project is validated on the machine instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision import names
from provision.cli import app as cli
from provision.providers.local import machine

pytestmark = pytest.mark.testhost

APPS = [a.strip() for a in os.environ.get("FEDI_E2E_APPS", "lemmy,mastodon,kbin").split(",") if a.strip()]
TIMERS = ("fedi-backup.timer", "fedi-backup-check.timer", "fedi-cleanup.timer")


@dataclass(frozen=True)
class Deployed:
    software: str
    domain: str
    stack: str
    dirs: dict[str, str]  # FEDI_* env of this deployment
    rc: int  # exit code of `fedi up`


def _env(dirs: dict[str, str]):
    mp = pytest.MonkeyPatch()
    for key, value in dirs.items():
        mp.setenv(key, value)
    return mp


@pytest.fixture(scope="module", params=APPS)
def deployed(request, local_image, tmp_path_factory):
    software = request.param
    domain = f"{software}.localhost"
    root = tmp_path_factory.mktemp(f"e2e-{software}")
    dirs = {f"FEDI_{k}_DIR": str(root / k.lower()) for k in ("STATE", "CACHE", "CONFIG")}
    dirs["FEDI_IMAGE_DIR"] = str(local_image.parent)
    mp = _env(dirs)
    try:
        argv = ["up", "--provider", "local", "--software", software, "--size", "tiny", "--domain", domain, "--yes"]
        rc = cli.main(argv)
        yield Deployed(software, domain, names.stack_name(domain), dirs, rc)
    finally:
        from provision.providers.local.provider import LocalProvider

        prov = LocalProvider()
        if prov._store().exists(names.stack_name(domain)):
            prov.down(names.stack_name(domain), lambda _: None, purge_backups=True)
        mp.undo()


@pytest.fixture
def here(deployed, monkeypatch):
    """Run the test with the deployment's FEDI_* dirs (the autouse fixture set per-test ones)."""
    for key, value in deployed.dirs.items():
        monkeypatch.setenv(key, value)
    if deployed.rc != 0:  # one clear failure per test instead of a cascade of follow-on errors
        pytest.fail(f"`fedi up` of {deployed.domain} failed (exit {deployed.rc}); see its output above", pytrace=False)
    return deployed


def _provider():
    from provision.providers.local.provider import LocalProvider

    return LocalProvider()


def _record(stack: str) -> machine.Machine:
    record = machine.load(stack)
    assert record is not None and machine.running(record), f"local machine {stack} is not running"
    return record


def inside(stack: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120):
    """Run argv inside the machine; secrets go through the environment, never argv."""
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(
        machine.exec_argv(_record(stack), argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def _vars(stack: str) -> dict:
    import yaml

    from provision.lifecycle import stack as lifecycle

    return yaml.safe_load((lifecycle.bundle_dir(stack) / "ansible-vars.yml").read_text())


def test_up_succeeds(here):
    out = _provider().outputs(here.stack)
    assert out.extra["state"] == "running" and out.extra["start_app"] is False
    assert out.access.host_key and out.access.host_key != _provider()._doc(here.stack)["bootstrap_host_key"]


def test_postgres_accepts_the_app_role_with_its_password(here):
    v = _vars(here.stack)
    conninfo = f"host=127.0.0.1 user={v['fedi_db_user']} dbname={v['fedi_db_name']}"
    query = ["psql", conninfo, "-Atc", "select current_user"]
    ok = inside(here.stack, query, env={"PGPASSWORD": v["fedi_db_password"]})
    assert ok.returncode == 0 and ok.stdout.strip() == v["fedi_db_user"], ok.stderr
    bad = inside(here.stack, query, env={"PGPASSWORD": "not-the-password"})
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr


def test_valkey_answers_with_its_password(here):
    v = _vars(here.stack)
    if not v.get("fedi_valkey_enabled"):
        assert inside(here.stack, ["systemctl", "is-active", "valkey-server"]).stdout.strip() != "active"
        return
    ok = inside(
        here.stack, ["valkey-cli", "--no-auth-warning", "ping"], env={"REDISCLI_AUTH": v["fedi_valkey_password"]}
    )
    assert ok.stdout.strip() == "PONG", ok.stderr
    denied = inside(here.stack, ["valkey-cli", "ping"])
    assert "NOAUTH" in denied.stdout + denied.stderr


def _tls_get(address: str, domain: str, context: ssl.SSLContext) -> tuple[str, dict]:
    with (
        socket.create_connection((address, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(4096).decode(errors="replace")
        return head.split("\r\n", 1)[0], tls.getpeercert()


def test_caddy_serves_the_domain_with_its_internal_ca(here):
    out = _provider().outputs(here.stack)
    ca = Path(out.extra["ca_bundle"])
    assert ca.is_file()
    status, cert = _tls_get(out.access.address, here.domain, ssl.create_default_context(cafile=str(ca)))
    assert status.startswith("HTTP/1.1 ")  # 502 while the app's containers are not running
    names = [value for kind, value in cert["subjectAltName"] if kind == "DNS"]
    assert names == [here.domain]
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_get(out.access.address, here.domain, ssl.create_default_context())  # not a public CA
    # the command `fedi status` shows for opening the instance works as printed
    hint = out.extra["open_hint"].split("  (")[0].split()
    assert hint[0] == "curl"
    code = subprocess.run([*hint, "-sS", "-o", "/dev/null", "-w", "%{http_code}"], capture_output=True, text=True)
    assert code.returncode == 0 and code.stdout in ("200", "502"), code.stderr


def test_backup_and_cleanup_timers_are_enabled_and_a_timer_fires(here):
    for timer in TIMERS:
        assert inside(here.stack, ["systemctl", "is-enabled", timer]).stdout.strip() == "enabled", timer
        assert inside(here.stack, ["systemctl", "is-active", timer]).stdout.strip() == "active", timer
    fired = "/run/fedi-e2e-timer-fired"
    started = inside(here.stack, ["systemd-run", "--on-active=1", "--unit=fedi-e2e-probe", "touch", fired])
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 60
    while inside(here.stack, ["test", "-e", fired]).returncode != 0:
        assert time.monotonic() < deadline, "a one-second systemd timer did not fire within 60s"
        time.sleep(1)


def test_the_backup_service_runs_and_writes_off_the_machine(here):
    run = inside(here.stack, ["systemctl", "start", "fedi-backup.service"], timeout=600)
    result = inside(here.stack, ["systemctl", "show", "-P", "Result", "fedi-backup.service"]).stdout.strip()
    log = inside(here.stack, ["journalctl", "-u", "fedi-backup.service", "-n", "20", "--no-pager"]).stdout
    assert run.returncode == 0 and result == "success", log
    repo = machine.load(here.stack).backups / "restic"
    assert (repo / "config").is_file() and any((repo / "snapshots").iterdir())


def test_firewall_is_loaded_and_coexists_with_docker(here):
    tables = inside(here.stack, ["nft", "list", "tables"]).stdout.split("\n")
    assert "table inet fedi" in tables
    docker_nat = inside(here.stack, ["nft", "list", "chain", "ip", "nat", "DOCKER"])
    assert docker_nat.returncode == 0, f"Docker's nat table is gone: {tables}"
    fedi = inside(here.stack, ["nft", "list", "table", "inet", "fedi"]).stdout
    assert "policy drop" in fedi and "dport 22" in fedi.replace("{ ", "").replace("tcp dport", "dport")


def test_dockerd_runs_and_compose_accepts_the_project(here):
    assert inside(here.stack, ["systemctl", "is-active", "docker"]).stdout.strip() == "active"
    assert inside(here.stack, ["docker", "info", "--format", "{{.ServerVersion}}"]).returncode == 0
    config = inside(
        here.stack, ["docker", "compose", "--project-directory", "/opt/fedi/app", "config", "--format", "json"]
    )
    assert config.returncode == 0, config.stderr
    assert json.loads(config.stdout)["name"] == "fedi"


@pytest.fixture(scope="module")
def admin_keys(tmp_path_factory) -> dict[str, Path]:
    """Two admins' own ed25519 keys (private key paths; the .pub beside each)."""
    root = tmp_path_factory.mktemp("admin-keys")
    keys = {}
    for name in ("alice", "bob"):
        key = root / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
        keys[name] = key
    return keys


def _ssh_as(here, name: str, key: Path, capfd) -> tuple[int, str]:
    capfd.readouterr()
    where = ["--provider", "local", "--domain", here.domain]
    rc = cli.main(["ssh", *where, "--as", name, "--identity", str(key), "--", "sh", "-c", "id -un && sudo -n id -u"])
    return rc, capfd.readouterr().out


def _ssh_raw(here, name: str, key: Path) -> int:
    """ssh as ``name`` with ``key`` straight to the server (fedi itself refuses a name it no longer lists)."""
    from dataclasses import replace

    from provision import remote

    access = replace(_provider().outputs(here.stack).access, user=name, client_key=key)
    return remote.interactive_shell(access, ["true"])


def _first_app_only(here) -> None:
    if here.software != APPS[0]:
        pytest.skip("the admins are checked on the first app's machine only (CI time)")


def test_admins_log_in_with_their_own_keys_and_a_removed_one_is_refused_at_once(here, admin_keys, capfd):
    _first_app_only(here)
    where = ["--provider", "local", "--domain", here.domain]
    for name, key in admin_keys.items():
        assert cli.main(["admins", "add", name, "--ssh-key", f"{key}.pub", *where]) == 0
    capfd.readouterr()
    assert cli.main(["admins", "list", "--json", *where]) == 0
    listed = json.loads(capfd.readouterr().out)
    assert [a["name"] for a in listed] == ["alice", "bob"]
    for name, key in admin_keys.items():  # each logs in as themselves, with their own key, and has sudo
        assert _ssh_as(here, name, key, capfd) == (0, f"{name}\n0\n")
    # a key logs in only its own admin
    assert _ssh_as(here, "alice", admin_keys["bob"], capfd)[0] == 255
    # sshd's log names the admin and the key (LogLevel VERBOSE prints the fingerprint)
    log = inside(here.stack, ["journalctl", "-u", "ssh.service", "--no-pager", "-o", "cat"]).stdout
    for a in listed:
        assert f"Accepted publickey for {a['name']} from" in log and a["fingerprint"] in log, a
    assert cli.main(["admins", "remove", "bob", *where]) == 0
    assert _ssh_as(here, "bob", admin_keys["bob"], capfd)[0] == 2  # fedi: not an admin of this stack
    assert _ssh_raw(here, "bob", admin_keys["bob"]) == 255  # the server refuses at once
    assert inside(here.stack, ["id", "bob"]).returncode != 0 and not _exists(here.stack, "/home/bob")
    assert _ssh_as(here, "alice", admin_keys["alice"], capfd)[0] == 0
    # a name a user fedi did not make already has on the server: refused there, nothing recorded or changed
    assert inside(here.stack, ["useradd", "--no-create-home", "carol"]).returncode == 0
    assert cli.main(["admins", "add", "carol", "--ssh-key", f"{admin_keys['bob']}.pub", *where]) == 5
    assert "carol is already a user on the server" in capfd.readouterr().err
    assert [a["name"] for a in _provider().outputs(here.stack).extra["admins"]] == ["alice"]
    assert inside(here.stack, ["id", "-nG", "carol"]).stdout.split() == ["carol"]


def _exists(stack: str, path: str) -> bool:
    return inside(stack, ["test", "-e", path]).returncode == 0


def test_a_second_playbook_run_changes_nothing(here):
    from provision.lifecycle import stack as lifecycle
    from provision.model import Bundle
    from provision.remote.configure import configure  # `remote.configure` is the submodule once imported

    root = lifecycle.bundle_dir(here.stack)
    manifest = json.loads((root / "manifest.json").read_text())
    cloud_init = (root / manifest["files"]["cloud-init"]).read_text()
    prov = _provider()
    bundle = Bundle(root, manifest, cloud_init, prov._doc(here.stack)["bootstrap_host_key"])
    out = prov.outputs(here.stack)
    lines: list[str] = []
    result = configure(out.access, bundle, lifecycle.runtime_vars(out), lines.append)
    assert (result.changed, result.failed) == (0, 0), "\n".join(line for line in lines if "changed" in line)
    assert result.host_key.split()[:2] == out.access.host_key.split()[:2]


def test_a_removed_admin_stays_refused_after_the_converge(here, admin_keys, capfd):
    """The converge above (changed=0) ran with the stack's admins: bob is still out, alice still in."""
    _first_app_only(here)
    assert _ssh_raw(here, "bob", admin_keys["bob"]) == 255
    assert _ssh_as(here, "alice", admin_keys["alice"], capfd) == (0, "alice\n0\n")
    runtime = json.loads(inside(here.stack, ["cat", "/opt/fedi/runtime.yml"]).stdout)
    assert [a["name"] for a in runtime["fedi_admins"]] == ["alice"]


@pytest.mark.skipif(shutil.which("age") is None, reason="age is not installed (scripts/test installs it)")
def test_handing_the_instance_to_a_new_admin_as_the_readme_says(here, admin_keys, capfd, tmp_path, monkeypatch):
    """The README's "Handing the instance to new admins", step by step: add dana, export a kit to dana,
    back up and verify, remove the old admin (alice); the Covenant's access item then passes through dana."""
    _first_app_only(here)
    monkeypatch.chdir(tmp_path)  # no fedi.toml: funding is "not configured", which does not fail
    dana = tmp_path / "dana"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dana", "-f", str(dana)], check=True)
    where = ["--domain", here.domain]
    assert cli.main(["admins", "add", "dana", "--ssh-key", f"{dana}.pub", *where]) == 0
    assert cli.main(["kit", "export", *where, "--to", f"{dana}.pub", "--out", str(tmp_path / "kits")]) == 0
    assert cli.main(["backup", "now", *where]) == 0
    assert cli.main(["backup", "verify", *where]) == 0
    assert cli.main(["admins", "remove", "alice", *where]) == 0
    capfd.readouterr()
    assert cli.main(["covenant", *where, "--json"]) == 0
    (report,) = json.loads(capfd.readouterr().out)["stacks"]
    items = {i["key"]: i for i in report["items"]}
    assert items["emergency_access"]["state"] == "ok" and "dana" in items["emergency_access"]["detail"]
    assert "alice" not in items["emergency_access"]["detail"]
    # read from the machine itself: systemd's calendar of the backup timer, the verify the server recorded
    assert items["backups"]["state"] == "ok" and "schedule *-*-* 03:30:00" in items["backups"]["detail"]
    assert items["restore_verified"]["state"] == "ok" and "SAME" in items["restore_verified"]["detail"]
    assert items["funding"]["state"] == "not configured"
    assert _ssh_as(here, "dana", dana, capfd) == (0, "dana\n0\n")
    assert _ssh_raw(here, "alice", admin_keys["alice"]) == 255


def sh(stack: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return inside(stack, ["bash", "-c", script], timeout=timeout)


def test_the_bootstrap_host_key_was_replaced_and_is_the_only_one_served(here):
    from provision.providers.local import bootstrap

    root = _bundle_root(here.stack)
    cloud_init = bootstrap.parse_cloud_init((root / "cloud-init.yaml").read_text())
    bootstrap_key = cloud_init.host_keys[0].public.split()
    published = sh(here.stack, "cat /opt/fedi/host_key.pub").stdout.split()
    assert published[0] == bootstrap_key[0] == "ssh-ed25519"
    assert published[1] != bootstrap_key[1]
    scan = sh(here.stack, "ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null").stdout.splitlines()
    served = [line.split() for line in scan if line and not line.startswith("#")]
    assert [key[1:3] for key in served] == [published[:2]]
    assert sh(here.stack, "ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'").stdout.strip() == "1"


def test_sshd_allows_keys_only_and_no_root(here):
    effective = dict(line.split(" ", 1) for line in sh(here.stack, "sshd -T").stdout.splitlines() if " " in line)
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["permitrootlogin"] == "no"
    assert effective["pubkeyauthentication"] == "yes"


def test_postgres_listens_on_loopback_only_with_a_utf8_database(here):
    v = _vars(here.stack)
    sql = "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
    query = ["psql", f"host=127.0.0.1 user={v['fedi_db_user']} dbname={v['fedi_db_name']}", "-XtAc", sql]
    assert inside(here.stack, query, env={"PGPASSWORD": v["fedi_db_password"]}).stdout.strip() == "UTF8"
    listen = sh(here.stack, "runuser -u postgres -- psql -XtAc 'SHOW listen_addresses'").stdout.strip()
    assert listen == "localhost"


def test_rabbitmq_answers_only_with_its_password(here):
    v = _vars(here.stack)
    if not v["fedi_rabbitmq_enabled"]:
        assert sh(here.stack, "systemctl is-active rabbitmq-server").stdout.strip() != "active"
        return
    user = "mbin"
    good = inside(
        here.stack,
        ["bash", "-c", f'printf %s "$PW" | rabbitmqctl authenticate_user {user}'],
        env={"PW": v["fedi_rabbitmq_password"]},
    )
    assert good.returncode == 0, good.stderr
    assert sh(here.stack, f"echo wrong | rabbitmqctl authenticate_user {user}").returncode != 0
    assert "guest" not in sh(here.stack, "rabbitmqctl -q list_users").stdout


def test_services_and_timers_are_active_and_enabled(here):
    v = _vars(here.stack)
    units = ["ssh", "fail2ban", "caddy", "docker", "postgresql@17-main", "fedi-firewall", *TIMERS]
    units += ["valkey-server"] if v["fedi_valkey_enabled"] else []
    units += ["rabbitmq-server"] if v["fedi_rabbitmq_enabled"] else []
    for unit in units:
        assert sh(here.stack, f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert sh(here.stack, f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit


def test_app_files_are_private_and_data_dirs_belong_to_the_app(here):
    listing = sh(here.stack, "stat -c '%a %U %n' /opt/fedi/app/* /opt/fedi/app/.env* /etc/fedi/restic.env").stdout
    modes = {line.split()[2]: line.split()[0] for line in listing.splitlines()}
    assert modes["/etc/fedi/restic.env"] == "600"
    manifest = json.loads((_bundle_root(here.stack) / "manifest.json").read_text())
    assert modes[f"/opt/fedi/{manifest['files']['app-config']}"] == "600"
    uid = _vars(here.stack)["fedi_app_uid"].split(":")[0]
    owners = sh(here.stack, "find /srv/fedi -mindepth 1 -type d -printf '%U\\n' | sort -u").stdout.split()
    assert owners == [uid]


def test_firewall_reloads_and_restarts_beside_dockers_and_fail2bans_tables(here):
    restarted = sh(here.stack, "systemctl restart fedi-firewall docker && nft list tables").stdout.split("\n")
    assert "table inet fedi" in restarted and "table ip filter" in restarted
    assert "tcp dport 22 accept" in sh(here.stack, "nft list table inet fedi").stdout
    assert sh(here.stack, "fail2ban-client set sshd banip 203.0.113.9").returncode == 0
    try:
        reloaded = sh(here.stack, "systemctl reload fedi-firewall && nft list tables").stdout.split("\n")
        assert {"table inet fedi", "table ip filter", "table inet f2b-table"} <= set(reloaded)
        assert "203.0.113.9" in sh(here.stack, "nft list table inet f2b-table").stdout
    finally:
        sh(here.stack, "fail2ban-client set sshd unbanip 203.0.113.9")


def _bundle_root(stack: str) -> Path:
    from provision.lifecycle import stack as lifecycle

    return lifecycle.bundle_dir(stack)


def test_status_then_down_leaves_nothing(here, capsys):
    record = _record(here.stack)
    capsys.readouterr()
    assert cli.main(["status", "--provider", "local", "--domain", here.domain, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    ran = [check for check in status["health"] if not check["skipped"]]
    assert ran and all(check["ok"] for check in ran), status["health"]
    # without the app's containers, its checks are reported as skipped, never as passed
    skipped = {check["name"] for check in status["health"] if check["skipped"]}
    assert skipped in (set(), {"nodeinfo", "api", "webfinger", "actor"}), status["health"]
    # the backup the e2e ran earlier is the last good one status reports
    assert status["backup"]["ok"] and status["backup"]["last_backup"], status["backup"]
    assert cli.main(["down", "--provider", "local", "--domain", here.domain, "--yes", "--purge-backups"]) == 0
    assert _provider().stacks() == []
    assert not machine.alive(record.pid) and not Path(f"/proc/{record.leader}").exists()
    assert not Path(record.netns).exists()
    assert not Path(f"/sys/class/net/{record.net.host_if}").exists()
    assert [g for g in record.groups if Path(g).exists()] == []
    assert [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if record.directory in line] == []
    assert not Path(record.directory).exists()
