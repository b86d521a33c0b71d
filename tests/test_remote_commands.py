"""The remote step's commands as values, and the reading of ansible-playbook's output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from provision.errors import UsageError
from provision.model import HostAccess
from provision.remote import commands
from provision.remote.ansible_output import AnsibleOutput
from provision.remote.configure import failure_message
from provision.render.resources import ansible_dir

LAYOUT = commands.Layout()
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm2mOQ8WzPpY1mHAaNNIjNoKuAcIw6B3Hj0dBsRnVHx fedi-bootstrap"


def test_ansible_argv_is_the_contract_run_through_sudo() -> None:
    assert commands.ansible_argv(LAYOUT, "fedi") == [
        "sudo",
        "-n",
        "-H",
        "--",
        "systemd-run",
        "--scope",
        "--unit=fedi-configure.scope",
        "--collect",
        "--quiet",
        "--property=TimeoutStopSec=20",
        "--",
        "env",
        "ANSIBLE_NOCOLOR=1",
        "ANSIBLE_FORCE_COLOR=0",
        "ANSIBLE_RETRY_FILES_ENABLED=0",
        "ANSIBLE_STDOUT_CALLBACK=default",
        "PYTHONUNBUFFERED=1",
        "LC_ALL=C.UTF-8",
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


def test_root_needs_no_sudo() -> None:
    argv = commands.ansible_argv(LAYOUT, "root")
    assert argv[0] == "systemd-run" and "sudo" not in argv


def test_without_a_scope_the_playbook_runs_bare_and_an_interrupted_run_is_stopped_whole() -> None:
    assert commands.ansible_argv(commands.Layout(scope=""), "root")[0] == "env"
    assert commands.stop_playbook_argv(LAYOUT, "fedi") == [
        "sudo", "-n", "-H", "--", "systemctl", "stop", "--", "fedi-configure.scope"
    ]  # fmt: skip
    refused = "Failed to start transient scope unit: Unit fedi-configure.scope was already loaded or has a fragment"
    assert commands.scope_busy(refused, LAYOUT)
    assert not commands.scope_busy("ERROR! the playbook could not be found", LAYOUT)
    assert not commands.scope_busy(refused, commands.Layout(scope=""))


def test_install_replaces_trees_whole_and_runtime_is_private() -> None:
    cmds = commands.install_argvs(LAYOUT, "/tmp/fedi-upload.abc", "fedi")
    assert all(c[:4] == ["sudo", "-n", "-H", "--"] for c in cmds)
    plain = [c[4:] for c in cmds]
    assert plain[:2] == [["mkdir", "-p", "/opt/fedi"], ["chmod", "0755", "/opt/fedi"]]
    assert plain[2:7] == [
        ["rm", "-rf", "/opt/fedi/bundle.new"],
        ["mv", "/tmp/fedi-upload.abc/bundle", "/opt/fedi/bundle.new"],
        ["chown", "-R", "root:root", "/opt/fedi/bundle.new"],
        ["rm", "-rf", "/opt/fedi/bundle"],
        ["mv", "/opt/fedi/bundle.new", "/opt/fedi/bundle"],
    ]
    assert plain[-1] == [
        "install",
        "-m",
        "0600",
        "-o",
        "root",
        "-g",
        "root",
        "/tmp/fedi-upload.abc/runtime.yml",
        "/opt/fedi/runtime.yml",
    ]


def test_the_configure_lock_is_held_while_stdin_is_open() -> None:
    assert commands.lock_argv(LAYOUT, "fedi") == [
        "sudo", "-n", "-H", "--",
        "flock", "--nonblock", "--conflict-exit-code", "75", "/run/lock/fedi-configure.lock",
        "sh", "-c", "echo fedi-configure-lock-held && exec cat >/dev/null",
    ]  # fmt: skip


def test_cleanup_only_ever_removes_a_staging_dir() -> None:
    assert commands.cleanup_argv("/tmp/fedi-upload.x1", "root") == ["rm", "-rf", "--", "/tmp/fedi-upload.x1"]
    with pytest.raises(ValueError):
        commands.cleanup_argv("/", "root")


def test_known_hosts_line_uses_the_port_form_off_22() -> None:
    assert (
        commands.known_hosts_line(HostAccess("203.0.113.5", host_key=KEY))
        == f"203.0.113.5 {' '.join(KEY.split()[:2])}\n"
    )
    line = commands.known_hosts_line(HostAccess("2001:db8::1", port=2222, host_key=KEY))
    assert line.startswith("[2001:db8::1]:2222 ssh-ed25519 AAAA")


def test_ssh_argv_is_strict_and_pinned() -> None:
    access = HostAccess("203.0.113.5", host_key=KEY, client_key=Path("/state/s/id_ed25519"))
    assert commands.ssh_argv(access, "/tmp/kh") == [
        "ssh",
        "-i",
        "/state/s/id_ed25519",
        "-p",
        "22",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UserKnownHostsFile=/tmp/kh",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "HostKeyAlgorithms=ssh-ed25519",
        "-l",
        "fedi",
        "--",
        "203.0.113.5",
    ]
    rsa = HostAccess("203.0.113.5", host_key="ssh-rsa AAAAB3Nza", client_key=Path("/k"))
    assert "HostKeyAlgorithms=rsa-sha2-512,rsa-sha2-256" in commands.ssh_argv(rsa, "/tmp/kh")
    ns = HostAccess("127.0.0.1", host_key=KEY, client_key=Path("/k"), netns="/proc/42/ns/net")
    argv = commands.ssh_argv(ns, "/tmp/kh", ["docker", "ps", "-a"])
    assert argv[:4] == ["nsenter", "--net=/proc/42/ns/net", "--", "ssh"]
    assert argv[-3:] == ["--", "127.0.0.1", "docker ps -a"]
    assert "BatchMode=yes" in argv
    joined = " ".join(argv)
    assert "StrictHostKeyChecking=no" not in joined and "accept-new" not in joined


COMPOSE = ["docker", "compose", "--project-directory", "/opt/fedi/app", "-f", "/opt/fedi/app/compose.yaml"]
JOURNAL = ["journalctl", "--no-pager", "-n", "50"]


@pytest.mark.parametrize(
    ("service", "follow", "expected"),
    [
        (None, False, [*COMPOSE, "logs", "--no-color", "--tail", "50"]),
        ("web", True, [*COMPOSE, "logs", "--no-color", "--tail", "50", "--follow", "web"]),
        ("postgresql", False, ["journalctl", "--no-pager", "-n", "50", "-u", "postgresql@17-main.service"]),
        ("caddy", True, ["journalctl", "--no-pager", "-n", "50", "-u", "caddy.service", "-f"]),
        ("valkey", False, ["journalctl", "--no-pager", "-n", "50", "-u", "valkey-server.service"]),
        ("fedi-backup", False, [*JOURNAL, "-u", "fedi-backup.service", "-u", "fedi-backup-check.service"]),
    ],
)  # fmt: skip
def test_logs_argv(service: str | None, follow: bool, expected: list[str]) -> None:
    assert commands.logs_argv(service, follow=follow, lines=50, layout=LAYOUT, user="root") == expected
    as_fedi = commands.logs_argv(service, follow=follow, lines=50, layout=LAYOUT, user="fedi")
    assert as_fedi == ["sudo", "-n", "-H", "--", *expected]


@pytest.mark.parametrize("bad", ["Web", "web;rm -rf /", "-f", "", "a" * 80])
def test_logs_rejects_what_is_not_a_service_name(bad: str) -> None:
    with pytest.raises(UsageError, match="service: "):
        commands.logs_argv(bad, follow=False, lines=10, layout=LAYOUT, user="root")


RUN_OK = """
PLAY [Configure a fedi server] *************************************************

TASK [Gathering Facts] *********************************************************
ok: [localhost]

TASK [base : Install packages] *************************************************
changed: [localhost] => (item=nftables)
changed: [localhost] => (item=fail2ban)

TASK [postgres : Create the app role] ******************************************
ok: [localhost]

TASK [app : Start the containers] **********************************************
skipping: [localhost]

RUNNING HANDLER [base : Restart ssh] *******************************************
changed: [localhost]

PLAY RECAP *********************************************************************
localhost                  : ok=4    changed=2    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0
"""

RUN_FAILED = """
PLAY [Configure a fedi server] *************************************************

TASK [base : Probe] ************************************************************
fatal: [localhost]: FAILED! => {"changed": false, "msg": "probe failed"}
...ignoring

TASK [postgres : Create the app role] ******************************************
fatal: [localhost]: FAILED! => {"changed": false, "msg": "unable to connect to database:\\n connection refused"}

PLAY RECAP *********************************************************************
localhost                  : ok=3    changed=0    unreachable=0    failed=1    skipped=0    rescued=0    ignored=1
"""


def feed(text: str) -> tuple[AnsibleOutput, list[str]]:
    out = AnsibleOutput()
    shown = [line for line in (out.feed(raw) for raw in text.splitlines()) if line]
    return out, shown


def test_progress_lines_and_recap() -> None:
    out, shown = feed(RUN_OK)
    assert shown == [
        "play: Configure a fedi server",
        "ok       Gathering Facts",
        "changed  base : Install packages",  # one line for the loop, and no item values
        "ok       postgres : Create the app role",
        "skipping app : Start the containers",
        "changed  base : Restart ssh",
    ]
    assert out.recap == {
        "localhost": {
            "ok": 4,
            "changed": 2,
            "unreachable": 0,
            "failed": 0,
            "skipped": 1,
            "rescued": 0,
            "ignored": 0,
        }
    }
    assert (out.changed, out.failed, out.failures) == (2, 0, [])
    assert failure_message(out, 0, "203.0.113.5", Path("/s/log")) is None


def test_the_failed_task_is_one_line_with_task_host_and_log() -> None:
    out, _ = feed(RUN_FAILED)
    assert out.failed == 1
    assert len(out.failures) == 1  # the ignored failure does not count
    message = failure_message(out, 2, "203.0.113.5", Path("/state/logs/configure.log"))
    assert message == (
        "ansible task 'postgres : Create the app role' failed on 203.0.113.5 (host localhost): "
        "unable to connect to database: connection refused; full log: /state/logs/configure.log"
    )


def test_an_error_before_any_task_is_reported_too() -> None:
    out, _ = feed("[ERROR]: the playbook: /opt/fedi/ansible/site.yml could not be found\n")
    message = failure_message(out, 1, "h", Path("/l"))
    assert (
        message
        == "ansible-playbook failed on h: the playbook: /opt/fedi/ansible/site.yml could not be found; full log: /l"
    )
    assert (
        failure_message(AnsibleOutput(), 4, "h", Path("/l"))
        == "ansible-playbook failed on h: exit code 4; full log: /l"
    )


def test_loop_item_failures_and_unparsable_payloads() -> None:
    out, _ = feed(
        "TASK [x : loop] ***\n"
        'failed: [localhost] (item=a) => {"ansible_loop_var": "item", "msg": "no such unit", "item": "a"\n'
    )
    assert out.failures[0].task == "x : loop"
    assert out.failures[0].message == "no such unit"


def test_secret_values_come_from_the_vars_and_every_env_file(tmp_path: Path) -> None:
    from provision.model import Bundle
    from provision.remote.configure import Redactor, secret_values

    (tmp_path / "app").mkdir()
    (tmp_path / "backup").mkdir()
    (tmp_path / "ansible-vars.yml").write_text(
        'fedi_db_password: "db-pass-1234"\nfedi_domain: social.example.org\nfedi_valkey_password: ""\n'
        "fedi_images: [ghcr.io/mastodon/mastodon:v4.7.3]\n"
    )
    (tmp_path / "app" / ".env.production").write_text(
        "# SECRET_KEY_BASE=commented-out-value\nSECRET_KEY_BASE=abcdef0123456789\nLOCAL_DOMAIN=social.example.org\n"
        "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY=primary-key-value\nVAPID_PRIVATE_KEY='vapid-private-key'\n"
    )
    (tmp_path / "backup" / "restic.env").write_text(
        "RESTIC_PASSWORD=restic-pass-99\nAWS_ACCESS_KEY_ID=\nFEDI_APP=mastodon\n"
    )
    values = secret_values(Bundle(tmp_path, {"files": {}}, "", ""))
    assert values == {"db-pass-1234", "abcdef0123456789", "primary-key-value", "vapid-private-key", "restic-pass-99"}
    redact = Redactor(values)
    assert redact("PGPASSWORD=db-pass-1234 host=social.example.org") == "PGPASSWORD=******** host=social.example.org"


@pytest.mark.parametrize(
    "imports",
    [
        "import provision.remote.configure; from provision import remote",
        "from provision import remote; import provision.remote.configure",
        "from provision.remote.configure import secret_values; from provision import remote",
        "from provision.remote import commands; from provision import remote",
    ],
)
def test_remote_configure_is_the_function_whatever_was_imported_first(imports: str) -> None:
    import subprocess
    import sys

    code = f"{imports}; import types; assert isinstance(remote.configure, types.FunctionType), remote.configure"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_postgresql_unit_is_the_playbooks():
    """One source for the PostgreSQL version: `fedi logs postgresql` reads the role's postgres_service."""
    defaults = yaml.safe_load((ansible_dir() / "roles/postgres/defaults/main.yml").read_text())
    unit = defaults["postgres_service"]
    assert re.fullmatch(r"postgresql@\d+-main\.service", unit)  # a literal, not a Jinja expression
    assert f"postgresql@{defaults['postgres_version']}-main.service" == unit
    assert commands.logs_argv("postgresql", follow=False, lines=5, layout=LAYOUT, user="root")[-2:] == ["-u", unit]
