"""`fedi ssh` and `fedi logs`: a real terminal on the server, and its services' logs.

`fedi ssh` runs the system ssh client with a generated known_hosts file holding only the pinned key
and ``StrictHostKeyChecking=yes``; `fedi logs` streams journalctl or docker compose logs over paramiko.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from provision.errors import MissingPrerequisite, RemoteError
from provision.model import HostAccess
from provision.remote import commands
from provision.remote.session import connect, parse_host_key


def interactive_shell(access: HostAccess, command: list[str] | None = None) -> int:
    """Open a login shell (or run ``command``) on the server; return ssh's exit code."""
    parse_host_key(access.host_key)
    if shutil.which("ssh") is None:
        raise MissingPrerequisite("ssh is not installed: apt-get install openssh-client")
    if access.netns and shutil.which("nsenter") is None:
        raise MissingPrerequisite("nsenter is not installed: apt-get install util-linux")
    with tempfile.TemporaryDirectory(prefix="fedi-ssh-") as tmp:  # 0700, removed afterwards
        known_hosts = Path(tmp) / "known_hosts"
        known_hosts.write_text(commands.known_hosts_line(access))
        known_hosts.chmod(0o600)
        try:
            argv = commands.ssh_argv(access, str(known_hosts), command)
        except ValueError as exc:
            raise RemoteError(f"cannot open a shell on {access.address}: {exc}") from None
        return subprocess.call(argv)


def logs(
    access: HostAccess,
    service: str | None,
    follow: bool = False,
    *,
    lines: int = 200,
    write: Callable[[str], None] | None = None,
    layout: commands.Layout | None = None,
) -> int:
    """Print a service's logs (app containers by default); with ``follow``, until interrupted."""
    argv = commands.logs_argv(service, follow=follow, lines=lines, layout=layout or commands.Layout(), user=access.user)
    emit = write or (lambda line: print(line, file=sys.stdout, flush=True))
    with connect(access) as session:
        try:
            # following is interactive: it ends with Ctrl-C; a plain read is bounded
            return session.stream(argv, emit, timeout=float("inf") if follow else 300)
        except KeyboardInterrupt:
            return 130
