"""The real playbook on a booted Debian 13 machine, run directly inside it (no SSH: that is the remote
step's test), twice: the first run configures everything, the second changes nothing.

Default app: kbin (mbin), the one that uses every role (Valkey and RabbitMQ too); the end-to-end test
covers lemmy through `fedi up`. FEDI_PLAYBOOK_APPS=lemmy,mastodon,kbin runs more. The app's containers
cannot start here (no registry): fedi_start_app=false skips exactly that step.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
APPS = [a.strip() for a in os.environ.get("FEDI_PLAYBOOK_APPS", "kbin").split(",") if a.strip()]
PLAYBOOK = [
    "env",
    "ANSIBLE_NOCOLOR=1",
    "ansible-playbook",
    "-c",
    "local",
    "-i",
    "localhost,",
    "/opt/fedi/ansible/site.yml",
    "-e",
    "@/opt/fedi/bundle/ansible-vars.yml",
    "-e",
    "@/opt/fedi/runtime.yml",
]
RECAP = re.compile(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")

pytestmark = pytest.mark.testhost


@dataclass(frozen=True)
class Run:
    rc: int
    changed: int
    failed: int
    output: str

    def changed_tasks(self) -> list[str]:
        tasks, current = [], ""
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                current = line.split("*")[0].strip()
            elif line.startswith("changed:"):
                tasks.append(current)
        return tasks


@dataclass(frozen=True)
class Configured:
    software: str
    bundle: Path
    vars: dict
    machine: object  # provision.local.machine.Machine
    first: Run
    second: Run

    def sh(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        from provision.local import machine

        return machine.run_in(self.machine, ["bash", "-c", script], timeout=timeout)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _playbook(m) -> Run:
    from provision.local import machine

    proc = machine.run_in(m, PLAYBOOK, timeout=1500)
    out = proc.stdout + proc.stderr
    found = RECAP.search(out)
    assert found, out[-3000:]
    return Run(proc.returncode, int(found.group(2)), int(found.group(4)), out)


@pytest.fixture(scope="module", params=APPS)
def configured(request, local_image, tmp_path_factory):
    from provision.local import bootstrap, machine

    software = request.param
    root = tmp_path_factory.mktemp(f"playbook-{software}")
    env = {**os.environ, **{f"FEDI_{k}_DIR": str(root / k.lower()) for k in ("STATE", "CACHE", "CONFIG")}}
    env["FEDI_IMAGE_DIR"] = str(local_image.parent)
    bundle = root / "bundle"
    render = [BIN / "fedi", "render", "--software", software, "--size", "tiny", "--domain", f"{software}.localhost"]
    proc = subprocess.run(
        [*render, "--provider", "local", "--out", str(bundle)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = root / "state"
    name = f"fedi-pb-{uuid.uuid4().hex[:6]}"
    boot = bootstrap.parse_cloud_init((bundle / "cloud-init.yaml").read_text())
    try:
        machine.create(name, boot, _progress, state=state)
        m = machine.boot(name, _progress, cpus=2, memory_mb=4096, state=state)
        opt = Path(m.rootfs) / "opt/fedi"
        opt.mkdir(parents=True, exist_ok=True)
        shutil.copytree(bundle, opt / "bundle")
        shutil.copytree(ROOT / "ansible", opt / "ansible")
        runtime = opt / "runtime.yml"
        runtime.write_text(
            yaml.safe_dump({"fedi_volume_device": "", "fedi_start_app": False, "fedi_bundle_dir": "/opt/fedi/bundle"})
        )
        runtime.chmod(0o600)
        first = _playbook(m)
        second = _playbook(m) if first.rc == 0 else first
        variables = yaml.safe_load((bundle / "ansible-vars.yml").read_text())
        yield Configured(software, bundle, variables, m, first, second)
    finally:
        machine.destroy(name, _progress, state=state, purge_backups=True)


def test_first_run_configures_the_host(configured) -> None:
    assert (configured.first.rc, configured.first.failed) == (0, 0), configured.first.output[-4000:]
    assert configured.first.changed > 20


def test_second_run_changes_nothing(configured) -> None:
    assert (configured.second.rc, configured.second.failed) == (0, 0), configured.second.output[-4000:]
    assert configured.second.changed == 0, configured.second.changed_tasks()


def test_bootstrap_host_key_was_replaced_and_published(configured) -> None:
    from provision.local import bootstrap

    cloud_init = bootstrap.parse_cloud_init(configured.bundle.joinpath("cloud-init.yaml").read_text())
    bootstrap_key = cloud_init.host_keys[0].public.split()
    published = configured.sh("cat /opt/fedi/host_key.pub").stdout.split()
    assert published[0] == bootstrap_key[0] == "ssh-ed25519"
    assert published[1] != bootstrap_key[1]
    scan = configured.sh("ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null").stdout.splitlines()
    served = [line.split() for line in scan if line and not line.startswith("#")]
    assert [key[1:3] for key in served] == [published[:2]]
    assert configured.sh("ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'").stdout.strip() == "1"


def test_sshd_allows_keys_only_and_no_root(configured) -> None:
    effective = dict(line.split(" ", 1) for line in configured.sh("sshd -T").stdout.splitlines() if " " in line)
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["permitrootlogin"] == "no"
    assert effective["pubkeyauthentication"] == "yes"


def test_postgres_accepts_the_app_role_only_with_its_password(configured) -> None:
    user, db = configured.vars["fedi_db_user"], configured.vars["fedi_db_name"]
    read = "sed -n 's/^fedi_db_password: \"\\(.*\\)\"$/\\1/p' /opt/fedi/bundle/ansible-vars.yml"
    sql = "SELECT current_user, pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
    query = f"psql -XtA -h 127.0.0.1 -U {user} -d {db} -c '{sql}'"
    good = configured.sh(f"PGPASSWORD=$({read}) {query}")
    assert good.stdout.strip() == f"{user}|UTF8", good.stderr
    bad = configured.sh(f"PGPASSWORD=wrong-password {query}")
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr
    listen = configured.sh("runuser -u postgres -- psql -XtAc 'SHOW listen_addresses'").stdout.strip()
    assert listen == "localhost"


def test_valkey_and_rabbitmq_answer_only_with_their_passwords(configured) -> None:
    if configured.vars["fedi_valkey_enabled"]:
        read = "sed -n 's/^fedi_valkey_password: \"\\(.*\\)\"$/\\1/p' /opt/fedi/bundle/ansible-vars.yml"
        assert configured.sh(f"REDISCLI_AUTH=$({read}) valkey-cli -h 127.0.0.1 ping").stdout.strip() == "PONG"
        assert "NOAUTH" in configured.sh("valkey-cli -h 127.0.0.1 ping").stdout
    if configured.vars["fedi_rabbitmq_enabled"]:
        read = "sed -n 's/^fedi_rabbitmq_password: \"\\(.*\\)\"$/\\1/p' /opt/fedi/bundle/ansible-vars.yml"
        assert configured.sh(f"{read} | rabbitmqctl authenticate_user mbin").returncode == 0
        assert configured.sh("echo wrong | rabbitmqctl authenticate_user mbin").returncode != 0
        assert "guest" not in configured.sh("rabbitmqctl -q list_users").stdout


def test_firewall_table_coexists_with_dockers(configured) -> None:
    tables = configured.sh("nft list tables").stdout.split("\n")
    assert "table inet fedi" in tables
    assert "table ip filter" in tables  # Docker's, still there
    restarted = configured.sh("systemctl restart fedi-firewall docker && nft list tables").stdout.split("\n")
    assert "table inet fedi" in restarted and "table ip filter" in restarted
    ruleset = configured.sh("nft list table inet fedi").stdout
    assert "policy drop" in ruleset and "tcp dport 22 accept" in ruleset
    # fail2ban bans into its own table, which a firewall reload leaves alone too
    assert configured.sh("fail2ban-client set sshd banip 203.0.113.9").returncode == 0
    try:
        reloaded = configured.sh("systemctl reload fedi-firewall && nft list tables").stdout.split("\n")
        assert {"table inet fedi", "table ip filter", "table inet f2b-table"} <= set(reloaded)
        assert "203.0.113.9" in configured.sh("nft list table inet f2b-table").stdout
    finally:
        configured.sh("fail2ban-client set sshd unbanip 203.0.113.9")


def test_services_and_timers_are_enabled(configured) -> None:
    units = ["ssh", "fail2ban", "caddy", "docker", "postgresql@17-main", "fedi-firewall"]
    units += ["fedi-backup.timer", "fedi-backup-check.timer", "fedi-cleanup.timer"]
    if configured.vars["fedi_valkey_enabled"]:
        units.append("valkey-server")
    if configured.vars["fedi_rabbitmq_enabled"]:
        units.append("rabbitmq-server")
    for unit in units:
        assert configured.sh(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert configured.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit


def test_app_files_and_data_dirs(configured) -> None:
    listing = configured.sh("stat -c '%a %U %n' /opt/fedi/app/* /opt/fedi/app/.env* /etc/fedi/restic.env").stdout
    modes = {line.split()[2]: line.split()[0] for line in listing.splitlines()}
    assert modes["/etc/fedi/restic.env"] == "600"
    config = configured.bundle / "manifest.json"
    app_config = yaml.safe_load(config.read_text())["files"]["app-config"]
    assert modes[f"/opt/fedi/{app_config}"] == "600"
    uid = configured.vars["fedi_app_uid"].split(":")[0]
    owners = configured.sh("find /srv/fedi -mindepth 1 -type d -printf '%U\\n' | sort -u").stdout.split()
    assert owners == [uid]
