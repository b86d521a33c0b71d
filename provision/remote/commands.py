"""Every command the remote step runs, built as data (argv lists) by pure functions.

Nothing here connects anywhere: :mod:`provision.remote.session` runs these lists over SSH
(quoted with ``shlex.join``) and the tests compare them as values. No secret is ever an argument:
secrets travel inside uploaded 0600 files only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from provision.errors import UsageError
from provision.model import APP_DIR, SERVER_ROOT, HostAccess


@dataclass(frozen=True)
class Layout:
    """Where things live on the server (provision.model's paths). Tests point ``root`` elsewhere."""

    root: str = SERVER_ROOT  # bundle, ansible, runtime.yml and the rotated host key live here
    app_dir: str = APP_DIR  # the compose project directory
    ansible_playbook: str = "ansible-playbook"  # the program; Debian's ansible-core on the server
    lock_file: str = "/run/lock/fedi-configure.lock"  # one configure at a time per server
    # The playbook runs in this transient systemd scope, so an interrupted run can be stopped whole
    # (ansible, its workers and whatever a task started). "" runs it bare (the loopback tests: no systemd).
    scope: str = "fedi-configure.scope"

    @property
    def bundle_dir(self) -> str:
        return f"{self.root}/bundle"

    @property
    def ansible_dir(self) -> str:
        return f"{self.root}/ansible"

    @property
    def runtime_file(self) -> str:
        return f"{self.root}/runtime.yml"

    @property
    def host_key_file(self) -> str:
        return f"{self.root}/host_key.pub"  # written by the playbook's host-key rotation


# Environment for the playbook run: plain, uncoloured, unbuffered lines we can parse as they come.
ANSIBLE_ENV = (
    "ANSIBLE_NOCOLOR=1",
    "ANSIBLE_FORCE_COLOR=0",
    "ANSIBLE_RETRY_FILES_ENABLED=0",
    "ANSIBLE_STDOUT_CALLBACK=default",
    "PYTHONUNBUFFERED=1",
    "LC_ALL=C.UTF-8",  # ansible insists on a UTF-8 locale; English messages for the parser
)


def privileged(argv: list[str], user: str) -> list[str]:
    """Run as root: through passwordless, non-interactive sudo (with root's HOME) unless we already are root."""
    return list(argv) if user == "root" else ["sudo", "-n", "-H", "--", *argv]


def compose(app_dir: str = Layout.app_dir) -> list[str]:
    """The app's ``docker compose``, from any working directory (the playbook's ``app_compose`` in
    roles/app/defaults/main.yml); the project name is compose.yaml's own ``name: fedi``."""
    return ["docker", "compose", "--project-directory", app_dir, "-f", f"{app_dir}/compose.yaml"]


# How long `systemctl stop` lets the playbook's processes end on SIGTERM before it sends SIGKILL.
STOP_TIMEOUT_S = 20


def ansible_argv(layout: Layout, user: str) -> list[str]:
    """The one playbook run: on the server, as root, against itself; variables only from files.

    In a transient scope (systemd-run --scope execs the command in the foreground: its output and exit
    code are the playbook's), which is also why a second playbook cannot start while one still runs."""
    return playbook_argv(layout, f"{layout.ansible_dir}/site.yml", layout.runtime_file, user)


def playbook_argv(layout: Layout, playbook: str, extra_vars: str, user: str, *, scope: bool = True) -> list[str]:
    """ansible-playbook of ``playbook`` on the server against itself, as root, with the bundle's vars and
    ``extra_vars`` (a file); in the layout's transient scope when ``scope``."""
    unit = (
        ["systemd-run", "--scope", f"--unit={layout.scope}", "--collect", "--quiet",
         f"--property=TimeoutStopSec={STOP_TIMEOUT_S}", "--"]
        if scope and layout.scope
        else []
    )  # fmt: skip
    return privileged(
        [
            *unit,
            "env",
            *ANSIBLE_ENV,
            layout.ansible_playbook,
            "-c",
            "local",
            "-i",
            "localhost,",
            playbook,
            "-e",
            f"@{layout.bundle_dir}/ansible-vars.yml",
            "-e",
            f"@{extra_vars}",
        ],
        user,
    )


UNIT_NOT_LOADED = 5  # systemctl's exit code for a unit that is not loaded (the scope is already gone)


def stop_playbook_argv(layout: Layout, user: str) -> list[str]:
    """Stop an interrupted playbook run and everything it started (SIGTERM, then SIGKILL)."""
    return privileged(["systemctl", "stop", "--", layout.scope], user)


def scope_state_argv(layout: Layout) -> list[str]:
    return ["systemctl", "is-active", "--", layout.scope]  # prints the state; no root needed


BUSY_STATES = {"active", "activating", "deactivating", "reloading", "refreshing"}


def scope_busy(output: str, layout: Layout) -> bool:
    """Did systemd-run refuse because the scope of an earlier run still exists?"""
    return bool(layout.scope) and layout.scope in output and "already" in output


LOCKED = "fedi-configure-lock-held"
LOCK_BUSY = 75  # EX_TEMPFAIL


def lock_argv(layout: Layout, user: str) -> list[str]:
    """Hold the server's configure lock for as long as this command's stdin stays open.

    It prints LOCKED once it holds the lock and exits LOCK_BUSY at once if another run holds it.
    When the connection ends for any reason, ``cat`` reads EOF and the lock is released.
    """
    return privileged(
        ["flock", "--nonblock", "--conflict-exit-code", str(LOCK_BUSY), layout.lock_file,
         "sh", "-c", f"echo {LOCKED} && exec cat >/dev/null"],
        user,
    )  # fmt: skip


def staging_argv() -> list[str]:
    """A fresh private (0700) directory owned by the login user, for the SFTP upload."""
    return ["mktemp", "-d", "/tmp/fedi-upload.XXXXXXXX"]


def install_argvs(layout: Layout, staging: str, user: str) -> list[list[str]]:
    """Move the uploaded trees into place as root: replace each tree whole, never merge into an old one."""
    cmds: list[list[str]] = [["mkdir", "-p", layout.root], ["chmod", "0755", layout.root]]
    for name, dest in (("bundle", layout.bundle_dir), ("ansible", layout.ansible_dir)):
        new = f"{dest}.new"
        cmds += [
            ["rm", "-rf", new],
            ["mv", f"{staging}/{name}", new],
            ["chown", "-R", "root:root", new],
            ["rm", "-rf", dest],
            ["mv", new, dest],
        ]
    cmds += [
        ["install", "-m", "0600", "-o", "root", "-g", "root", f"{staging}/runtime.yml", layout.runtime_file],
    ]
    return [privileged(c, user) for c in cmds]


def cleanup_argv(staging: str, user: str) -> list[str]:
    if not staging.startswith("/tmp/fedi-upload."):  # never remove anything but our own staging dir
        raise ValueError(f"not a staging directory: {staging}")
    return privileged(["rm", "-rf", "--", staging], user)


def read_host_key_argv(layout: Layout, user: str) -> list[str]:
    return privileged(["cat", "--", layout.host_key_file], user)


def known_hosts_line(access: HostAccess) -> str:
    """The pinned key in known_hosts form, for the system ssh client (`fedi ssh`)."""
    fields = access.host_key.split()
    if len(fields) < 2:
        raise ValueError("no pinned host key")
    name = access.address if access.port == 22 else f"[{access.address}]:{access.port}"
    return f"{name} {fields[0]} {fields[1]}\n"


def _host_key_algorithms(key_type: str) -> str:
    # an ssh-rsa key is offered with SHA-2 signatures (OpenSSH refuses SHA-1 "ssh-rsa" by default)
    return "rsa-sha2-512,rsa-sha2-256" if key_type == "ssh-rsa" else key_type


def ssh_argv(access: HostAccess, known_hosts: str, command: list[str] | None = None) -> list[str]:
    """The system ssh client with only the pinned key trusted; host-key checking strict, never relaxed."""
    if access.client_key is None:
        raise ValueError("no client key")
    argv = [
        "ssh",
        "-i",
        str(access.client_key),
        "-p",
        str(access.port),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        f"HostKeyAlgorithms={_host_key_algorithms(access.host_key.split()[0])}",
    ]
    if command:
        argv += ["-o", "BatchMode=yes"]
    argv += ["-l", access.user, "--", access.address]
    if command:
        import shlex

        argv.append(shlex.join(command))
    if access.netns:  # the local provider's host lives in its own network namespace
        argv = ["nsenter", f"--net={access.netns}", "--", *argv]
    return argv


@cache
def native_units() -> dict[str, list[str]]:
    """Services that run natively on the host (systemd units); everything else is a compose service.
    PostgreSQL's unit names its version: the playbook's ``postgres_service`` is the one source."""
    import yaml  # PyYAML comes with pulumi and ansible-core

    from provision.render.resources import ansible_dir

    defaults = yaml.safe_load((ansible_dir() / "roles/postgres/defaults/main.yml").read_text(encoding="utf-8"))
    return {
        "postgresql": [defaults["postgres_service"]],
        "valkey": ["valkey-server.service"],
        "caddy": ["caddy.service"],
        "fedi-backup": ["fedi-backup.service", "fedi-backup-check.service"],
        "fedi-cleanup": ["fedi-cleanup.service"],
        "docker": ["docker.service"],
        "ssh": ["ssh.service"],
        "fail2ban": ["fail2ban.service"],
        "nftables": ["nftables.service"],
        "rabbitmq": ["rabbitmq-server.service"],
    }


_SERVICE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def logs_argv(service: str | None, *, follow: bool, lines: int, layout: Layout, user: str) -> list[str]:
    """`fedi logs [service]`: journalctl for native services, docker compose logs for the app's containers."""
    if service is not None and not _SERVICE.fullmatch(service):
        raise UsageError(f"service: {service!r} is not a service name (e.g. web, postgresql, caddy)")
    if lines < 0:
        raise UsageError(f"lines: {lines} must be 0 or more")
    if service in native_units():
        argv = ["journalctl", "--no-pager", "-n", str(lines)]
        for unit in native_units()[service]:
            argv += ["-u", unit]
        if follow:
            argv.append("-f")
        return privileged(argv, user)
    argv = [*compose(layout.app_dir), "logs", "--no-color", "--tail", str(lines)]
    if follow:
        argv.append("--follow")
    if service:
        argv.append(service)
    return privileged(argv, user)
