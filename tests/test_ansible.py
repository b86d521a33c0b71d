"""The playbook (ansible/): syntax, lint, ansible.builtin only, secrets never logged, templates render.

Runs offline on this machine with the venv's ansible-core and ansible-lint. The playbook itself is
exercised on the real Debian 13 test host by the end-to-end test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent

SECRET_VARS = ("fedi_db_password", "fedi_admin_password", "fedi_valkey_password", "fedi_rabbitmq_password")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _yaml_files() -> list[Path]:
    files = sorted(ANSIBLE.rglob("*.yml"))
    assert files, "no YAML under ansible/"
    return files


def _task_keywords() -> frozenset[str]:
    """Every keyword a task, block or handler may carry (ansible's own list), i.e. not a module."""
    from ansible.playbook.block import Block
    from ansible.playbook.handler import Handler
    from ansible.playbook.task import Task

    names = set()
    for cls in (Task, Handler, Block):
        names.update(cls.fattributes)
    return frozenset(names | {"local_action"})


def _tasks(node: object):
    """Yield every task/handler dict in a tasks file or play list, descending into blocks."""
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        if "hosts" in node:  # a play
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                yield from _tasks(node.get(key) or [])
            return
        if any(k in node for k in ("block", "rescue", "always")):
            for key in ("block", "rescue", "always"):
                yield from _tasks(node.get(key) or [])
            return
        yield node


def _task_files() -> list[Path]:
    files = [ANSIBLE / "site.yml", ANSIBLE / "admins.yml"]
    for sub in ("tasks", "handlers"):
        files += sorted(ANSIBLE.glob(f"roles/*/{sub}/*.yml"))
    return files


def modules_used(doc: object, keywords: frozenset[str]) -> list[str]:
    """The module (or action) name of every task in a parsed tasks/play document."""
    found = []
    for task in _tasks(doc):
        mods = [k for k in task if k not in keywords]
        assert len(mods) == 1, f"task {task.get('name')!r} has {len(mods)} module keys: {mods}"
        found.append(mods[0])
    return found


def test_syntax_check(tmp_path: Path) -> None:
    proc = subprocess.run(
        [BIN / "ansible-playbook", "--syntax-check", "-i", "localhost,", str(ANSIBLE / "site.yml")],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    proc = subprocess.run(
        [BIN / "ansible-lint", "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_only_ansible_builtin_modules() -> None:
    keywords = _task_keywords()
    seen = []
    for path in _task_files():
        doc = yaml.safe_load(path.read_text())
        for mod in modules_used(doc, keywords):
            assert mod.startswith("ansible.builtin."), f"{path.relative_to(ROOT)}: {mod} is not ansible.builtin"
            seen.append(mod)
    # the walk really found the playbook's tasks
    assert len(seen) > 80
    assert "ansible.builtin.systemd_service" in seen


def test_module_walk_catches_other_collections_and_short_names() -> None:
    keywords = _task_keywords()
    doc = [
        {"name": "a", "community.postgresql.postgresql_user": {"name": "x"}},
        {"block": [{"name": "b", "apt": {"name": "x"}, "when": "true"}], "rescue": [{"ansible.posix.mount": {}}]},
    ]
    assert modules_used(doc, keywords) == ["community.postgresql.postgresql_user", "apt", "ansible.posix.mount"]


def test_tasks_that_handle_secrets_are_no_log() -> None:
    """A task that passes a secret anywhere but an assert's `that` or a `when` must not log."""
    for path in _task_files():
        for task in _tasks(yaml.safe_load(path.read_text())):
            if "ansible.builtin.assert" in task:
                continue
            body = {k: v for k, v in task.items() if k != "when"}
            text = yaml.safe_dump(body)
            if any(secret in text for secret in SECRET_VARS):
                assert task.get("no_log") is True, f"{path.relative_to(ROOT)}: {task.get('name')!r} needs no_log: true"


def test_no_secret_in_argv() -> None:
    """Passwords go through stdin, the environment or files: never a command's argv."""
    for path in _task_files():
        for task in _tasks(yaml.safe_load(path.read_text())):
            cmd = task.get("ansible.builtin.command")
            if isinstance(cmd, dict):
                argv = yaml.safe_dump(cmd.get("argv", ""))
                assert not any(s in argv for s in SECRET_VARS), f"{path.relative_to(ROOT)}: {task.get('name')!r}"


def test_roles_run_in_order_with_preflight_first() -> None:
    play = yaml.safe_load((ANSIBLE / "site.yml").read_text())[0]
    names = [r["role"] if isinstance(r, dict) else r for r in play["roles"]]
    assert names == ["preflight", "base", "admins", "postgres", "valkey", "rabbitmq", "caddy", "app", "backup"]
    for name in names:
        assert (ANSIBLE / "roles" / name / "tasks" / "main.yml").is_file()


def test_fedi_start_app_gates_only_the_app_start() -> None:
    """fedi_start_app is the one switch: it appears in exactly one task, which starts the app."""
    users = []
    for path in _task_files():
        for task in _tasks(yaml.safe_load(path.read_text())):
            if "fedi_start_app" in yaml.safe_dump(task):
                users.append((path.relative_to(ROOT).as_posix(), task.get("name")))
    assert users == [("ansible/roles/app/tasks/main.yml", "Start the app")]


def test_every_package_is_in_one_list() -> None:
    """Roles install only from vars/packages.yml, the list the test host's image is built from."""
    packages = yaml.safe_load((ANSIBLE / "vars" / "packages.yml").read_text())["fedi_packages"]
    for path in _task_files():
        for task in _tasks(yaml.safe_load(path.read_text())):
            apt = task.get("ansible.builtin.apt")
            if apt is not None:
                role = path.parts[path.parts.index("roles") + 1]
                lists = [role, "volume"] if path.name == "volume.yml" else [role]
                names = [f"{{{{ fedi_packages.{name} }}}}" for name in lists]
                assert apt["name"] in names, f"{path}: {task.get('name')!r}"
                # refresh the package lists only when a package is missing: the test host has no network,
                # and cache_valid_time alone forces a refresh once the lists are older than it
                assert "cache_valid_time" not in apt, f"{path}: {task.get('name')!r}"
                missing = apt["name"].replace("}}", "| difference(preflight_installed) | length > 0 }}")
                assert apt["update_cache"] == missing, f"{path}: {task.get('name')!r}"
                assert packages[apt["name"].split(".")[1].rstrip(" }")], apt["name"]


RENDER_PLAY = """
- hosts: all
  connection: local
  gather_facts: false
  tasks:
    - name: Render
      ansible.builtin.template:
        src: "{{ src }}"
        dest: "{{ dest }}"
        mode: "0644"
"""


def _render(tmp_path: Path, template: str, **variables: object) -> str:
    play = tmp_path / "render.yml"
    play.write_text(RENDER_PLAY)
    out = tmp_path / "rendered"
    extra = tmp_path / "vars.yml"
    extra.write_text(yaml.safe_dump({"src": str(ANSIBLE / template), "dest": str(out), **variables}))
    proc = subprocess.run(
        [BIN / "ansible-playbook", "-i", "localhost,", "-c", "local", str(play), "-e", f"@{extra}"],
        capture_output=True,
        text=True,
        env={**_env(tmp_path), "ANSIBLE_PYTHON_INTERPRETER": sys.executable},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_text()


FIREWALL = "roles/base/templates/nftables.conf.j2"
FIREWALL_VARS = {"base_firewall_conf": "/etc/fedi/nftables.conf"}


def test_firewall_replaces_only_its_own_table(tmp_path: Path) -> None:
    text = _render(tmp_path, FIREWALL, fedi_ssh_allow=[], **FIREWALL_VARS)
    assert "flush ruleset" not in text  # Docker's and fail2ban's tables survive a reload
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[:3] == ["table inet fedi", "delete table inet fedi", "table inet fedi {"]
    assert "type filter hook input priority filter; policy drop;" in lines
    # loopback first: conntrack may call a closing loopback connection invalid, and dropping its FIN
    # left a stale epmd registration that kept RabbitMQ from restarting (seen on the test host)
    assert lines.index('iif "lo" accept') < lines.index("ct state invalid drop")
    assert "tcp dport 22 accept" in lines  # no allow-list: SSH from anywhere, like the cloud firewall
    assert "tcp dport { 80, 443 } accept" in lines
    assert "udp dport 443 accept" in lines
    assert "meta l4proto icmp accept" in lines and "meta l4proto ipv6-icmp accept" in lines
    accepts = [line for line in lines if line.endswith("accept") and "dport" in line]
    assert len(accepts) == 3  # 22, 80+443/tcp, 443/udp: nothing else is open


def test_firewall_limits_ssh_to_the_allow_list(tmp_path: Path) -> None:
    allow = ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]
    text = _render(tmp_path, FIREWALL, fedi_ssh_allow=allow, **FIREWALL_VARS)
    lines = [line.strip() for line in text.splitlines()]
    assert "ip saddr { 203.0.113.0/24, 198.51.100.7/32 } tcp dport 22 accept" in lines
    assert "ip6 saddr { 2001:db8::/32 } tcp dport 22 accept" in lines
    assert "tcp dport 22 accept" not in lines


def test_sshd_drop_in_disables_passwords_and_root(tmp_path: Path) -> None:
    text = _render(tmp_path, "roles/base/templates/sshd-fedi.conf.j2")
    settings = dict(line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings["PermitRootLogin"] == "no"
    assert settings["PasswordAuthentication"] == "no"
    assert settings["KbdInteractiveAuthentication"] == "no"
    assert settings["HostKey"] == "/etc/ssh/ssh_host_ed25519_key"


@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="needs OpenSSH's sshd to check the drop-in")
def test_sshd_drop_in_passes_sshd_t(tmp_path: Path) -> None:
    text = _render(tmp_path, "roles/base/templates/sshd-fedi.conf.j2")
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    conf = tmp_path / "sshd.conf"
    conf.write_text(local_sshd_algorithms(text.replace("/etc/ssh/ssh_host_ed25519_key", str(key))))
    # sshd -t insists on its privilege separation directory, which only exists once sshd has run.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(conf)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_served_record_script_is_shellcheck_clean() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed: run scripts/test, which installs it")
    script = ANSIBLE / "roles/base/files/fedi-served"
    proc = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_the_served_record_says_what_a_service_has_loaded(tmp_path: Path) -> None:
    """check: 1 until record follows it, 0 after; a changed file makes it 1 again (no service needed)."""
    script = (ANSIBLE / "roles/base/files/fedi-served").read_text()
    served = tmp_path / "served"
    local = tmp_path / "fedi-served"
    local.write_text(script.replace("served_dir=/var/lib/fedi/served", f"served_dir={served}"))
    conf = tmp_path / "a.conf"
    conf.write_text("one\n")

    def call(*args: str, stdin: str = "") -> int:
        return subprocess.run(["sh", str(local), *args], input=stdin, capture_output=True, text=True).returncode

    assert call("check", "caddy", str(conf)) == 1  # never loaded
    assert call("check", "caddy", str(conf)) == 1  # a check alone records nothing (the reload may not happen)
    assert call("record", "caddy") == 0
    assert call("check", "caddy", str(conf)) == 0
    conf.write_text("two\n")
    assert call("check", "caddy", str(conf)) == 1
    assert call("check", "lemmy-registrations", "-", stdin="Open") == 1
    assert call("record", "lemmy-registrations") == 0
    assert call("check", "lemmy-registrations", "-", stdin="Open") == 0
    assert call("check", "lemmy-registrations", "-", stdin="Closed") == 1
    assert oct(served.stat().st_mode & 0o777) == "0o700"
    assert call("check", "caddy", str(tmp_path / "missing")) == 2
    assert call("record", "nothing-checked") == 2
    assert call("check", "../x", str(conf)) == 2


# Algorithms newer than this machine's OpenSSH (Debian 12 has 9.2): the drop-in names them for Debian 13's
# OpenSSH 10, where the playbook's own `sshd -t -f` validates them on the test host. Only these may be
# left out of the local check.
NEWER_THAN_LOCAL_SSHD = {"KexAlgorithms": {"mlkem768x25519-sha256"}}
QUERY = {"KexAlgorithms": "kex", "Ciphers": "cipher", "MACs": "mac", "HostKeyAlgorithms": "key"}


def local_sshd_algorithms(text: str) -> str:
    """The drop-in without the algorithms this OpenSSH does not know yet (only those listed above)."""
    lines = []
    for line in text.splitlines():
        keyword, _, value = line.partition(" ")
        if keyword in QUERY:
            known = subprocess.run(["ssh", "-Q", QUERY[keyword]], capture_output=True, text=True, timeout=30)
            names = value.split(",")
            unknown = set(names) - set(known.stdout.split())
            assert unknown <= NEWER_THAN_LOCAL_SSHD.get(keyword, set()), f"{keyword}: {unknown}"
            line = f"{keyword} {','.join(n for n in names if n not in unknown)}"
        lines.append(line)
    return "\n".join(lines) + "\n"
