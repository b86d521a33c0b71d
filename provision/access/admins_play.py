"""Apply the stack's admins to its server at once: the admins role alone, over the pinned SSH channel.

`fedi admins add/remove` call :func:`apply`; every converge applies the same list through site.yml
(runtime.yml's ``fedi_admins``). It holds the server's configure lock, so it never runs beside a converge.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from provision import apps
from provision.access import admins
from provision.errors import RemoteError
from provision.model import HostAccess, Progress
from provision.remote import commands
from provision.remote.ansible_output import AnsibleOutput
from provision.render import resources


def apply(
    access: HostAccess,
    records: list[admins.Admin],
    progress: Progress,
    *,
    layout: commands.Layout | None = None,
    ansible_dir: Path | None = None,
    timeout: float = 300,
) -> AnsibleOutput:
    """Run the admins play on the server with ``records``; RemoteError (one line) if it fails."""
    from provision.remote.session import connect_when_ready
    from provision.remote.upload import put_private, put_tree

    layout = layout or commands.Layout()
    source = ansible_dir or resources.ansible_dir()
    out = AnsibleOutput()
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        shown = out.feed(line)
        if shown:
            progress(shown)

    with connect_when_ready(access, 60) as session:
        lock, rc = session.hold(commands.lock_argv(layout, access.user), commands.LOCKED)
        if lock is None:
            raise RemoteError(f"another fedi run is configuring {access.address} right now; try again when it is done")
        try:
            staging = session.check(commands.staging_argv()).strip()
            try:
                session.sftp.mkdir(f"{staging}/ansible", 0o700)
                session.sftp.mkdir(f"{staging}/ansible/roles", 0o700)
                session.sftp.put(str(source / admins.PLAY), f"{staging}/ansible/{admins.PLAY}")
                put_tree(session.sftp, source / "roles" / "admins", f"{staging}/ansible/roles/admins")
                put_private(session.sftp, f"{staging}/admins.json", json.dumps(admins.ansible_vars(records)).encode())
                progress(f"applying the admins on {access.address}")
                rc = session.stream(admins.play_argv(staging, access.user, layout), on_line, timeout=timeout)
            finally:
                session.run(commands.cleanup_argv(staging, access.user))
        finally:
            session.release(lock)
    if out.failures:
        f = out.failures[0]
        raise RemoteError(f"applying the admins on {access.address} failed in '{f.task}': {f.message}")
    if rc != 0 or out.failed:
        last = (out.errors or [line for line in lines if line.strip()][-1:] or [f"exit code {rc}"])[0]
        raise RemoteError(f"applying the admins on {access.address} failed: {last}")
    return out


def create_app_account(access: HostAccess, software: str, admin: admins.Admin) -> None:
    """Give ``admin`` its account and role in the app (the app's containers must be able to run)."""
    from provision.remote.session import connect

    with connect(access) as session:
        for argv in admins.app_account_argvs(software, admin):
            # mbin reads a throwaway password on stdin; the others ignore stdin
            stdin = (secrets.token_urlsafe(30) + "\n").encode()
            rc, out, err = session.run(commands.privileged(argv, access.user), stdin=stdin, timeout=600)
            if rc != 0:
                last = (err.strip().splitlines() or ["no output"])[-1]
                raise RemoteError(f"creating {admin.name}'s {software} account failed (exit {rc}): {last}")
            signup_first = apps.get(software).admin_account.signup_first
            if signup_first and admin.name not in out.split():
                raise RemoteError(f"{software} has no account named {admin.name!r} yet: {signup_first}")
