"""Configure a server: upload the bundle and the playbook, run ansible-playbook on it, pin its new host key.

One pinned SSH connection does it all. Output streams to ``progress`` as short status lines (task
name and ok/changed/failed) and in full to a 0600 log under the state directory, with every secret
value from the bundle replaced by ``********`` before it is written anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from provision import paths
from provision.errors import RemoteError
from provision.model import Bundle, HostAccess, Progress
from provision.remote import commands
from provision.remote.ansible_output import AnsibleOutput
from provision.remote.session import HostKeyMismatch, connect_when_ready, parse_host_key, wait_for_ssh
from provision.remote.upload import put_private, put_tree
from provision.render import quote, resources
from provision.timestamps import utc_stamp

_SECRET_KEY = re.compile(r"password|secret|passphrase|token|private|_key$|^key$|access_key", re.I)


@dataclass(frozen=True)
class ConfigureResult:
    host_key: str  # the server's new host key (rotated by the playbook): pin it, the next connection needs it
    changed: int  # tasks that changed something (PLAY RECAP); 0 on a converged server
    failed: int  # failed or unreachable tasks (0 when configure returns)
    log_path: Path  # the full, secret-free log of the run (0600)


def secret_values(bundle: Bundle) -> set[str]:
    """Every secret value the bundle hands to the server, to keep it out of logs and messages."""
    values: set[str] = set()

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and _SECRET_KEY.search(key) and len(node) >= 8:
            values.add(node)
        elif isinstance(node, str) and "://" in node:  # a DSN's password: as written and decoded
            from urllib.parse import unquote, urlsplit

            with contextlib.suppress(ValueError):
                password = urlsplit(node).password or ""
                values.update(v for v in (password, unquote(password)) if len(v) >= 8)

    vars_file = bundle.root / "ansible-vars.yml"
    if vars_file.is_file():
        import yaml  # PyYAML comes with pulumi and ansible-core

        walk(yaml.load(vars_file.read_text(), Loader=quote.yaml_loader()))  # noqa: S506 - a SafeLoader
    env_files = [p for p in bundle.root.rglob("*") if p.is_file() and p.name.endswith((".env", ".env.production"))]
    for env_file in env_files:  # restic.env, Mastodon's .env.production, mbin's .env, pict-rs's env
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith("#"):
                walk(value.strip().strip("'\""), key.strip())
                walk(quote.read_dotenv(value.strip()), key.strip())  # a double-quoted value, unescaped
    for hjson_file in [p for p in bundle.root.rglob("*.hjson") if p.is_file()]:  # Lemmy's: JSON strings
        for match in re.finditer(r'^\s*(\w+):\s*("(?:[^"\\]|\\.)*")\s*$', hjson_file.read_text(), re.M):
            walk(json.loads(match.group(2)), match.group(1))
    return values


class Redactor:
    def __init__(self, secrets: set[str]):
        self._secrets = sorted(secrets, key=len, reverse=True)  # longest first: no partial leftovers

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text


def _open_log(log_dir: Path | None, address: str) -> tuple[Path, int]:
    directory = log_dir or paths.state_dir() / "logs"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"configure-{re.sub(r'[^A-Za-z0-9.-]', '_', address)}-{utc_stamp()}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return path, fd


def failure_message(out: AnsibleOutput, rc: int, address: str, log_path: Path) -> str | None:
    """The one line for a failed run, or None if the run succeeded."""
    if out.failures:
        f = out.failures[0]
        detail = f": {f.message}" if f.message else ""
        return f"ansible task '{f.task}' failed on {address} (host {f.host}){detail}; full log: {log_path}"
    if rc != 0 or out.failed:
        why = out.errors[0] if out.errors else f"exit code {rc}"
        return f"ansible-playbook failed on {address}: {why}; full log: {log_path}"
    return None


def _still_running(access: HostAccess, layout: commands.Layout) -> str:
    return (
        f"a playbook from an earlier fedi run is still running on {access.address} ({layout.scope}); wait "
        f"for it to end, or stop it: fedi ssh, then sudo systemctl stop {layout.scope}"
    )


def _refuse_if_a_playbook_runs(session: Any, layout: commands.Layout, access: HostAccess) -> None:
    """An earlier run whose connection dropped may still be going: its lock went with the connection."""
    if not layout.scope:
        return
    _, state, _ = session.run(commands.scope_state_argv(layout), timeout=30)
    if state.strip() in commands.BUSY_STATES:
        raise RemoteError(_still_running(access, layout))


def _stop_scope(session: Any, layout: commands.Layout, access: HostAccess) -> int:
    """`systemctl stop` the playbook's scope; its exit code."""
    argv = commands.stop_playbook_argv(layout, access.user)
    return session.run(argv, timeout=commands.STOP_TIMEOUT_S + 30)[0]


def _stop_playbook(session: Any, layout: commands.Layout, access: HostAccess, progress: Progress) -> None:
    """Best effort: the connection may be what failed. The configure lock goes with the connection."""
    if not layout.scope:
        return
    try:
        rc = _stop_scope(session, layout, access)
    except Exception:  # noqa: BLE001 - report below; the original error is what propagates
        rc = -1
    if rc in (0, commands.UNIT_NOT_LOADED):  # not loaded: it had just ended
        progress(f"stopped the playbook on {access.address}")
    else:
        progress(f"could not stop the playbook on {access.address}: it may still be running ({layout.scope})")


def _upload_images(
    sftp: Any, images: tuple[Any, ...], directory: str, runtime: dict[str, Any], access: HostAccess, progress: Progress
) -> str:
    """Upload each archive into ``directory``; runtime.yml's text, naming them for the load_images role."""
    for archive in images:
        progress(f"uploading {archive.file_name} ({archive.ref}) to {access.address}")
        sftp.put(str(archive.path), f"{directory}/{archive.file_name}")
    loads = [{"ref": a.ref, "file": f"{directory}/{a.file_name}"} for a in images]
    return json.dumps({**runtime, "fedi_image_archives": loads}, indent=2, sort_keys=True) + "\n"


def configure(
    access: HostAccess,
    bundle: Bundle,
    runtime: dict[str, Any],
    progress: Progress,
    *,
    layout: commands.Layout | None = None,
    log_dir: Path | None = None,
    ansible_dir: Path | None = None,
    timeout: float = 3600,
    ssh_timeout: float = 300,
    verify_rotation: bool = True,
    images: tuple[Any, ...] = (),
) -> ConfigureResult:
    """Wait for SSH (``ssh_timeout``), upload, run the playbook as root (``timeout``), pin-check the rotated key.

    ``images`` (provision.lifecycle.images.ImageArchive, already checked) go to a private directory of their own,
    named in runtime.yml as ``fedi_image_archives`` for the load_images role, removed after the playbook."""
    layout = layout or commands.Layout()
    redact = Redactor(secret_values(bundle) | {str(v) for k, v in runtime.items() if _SECRET_KEY.search(k)})
    runtime_text = json.dumps(runtime, indent=2, sort_keys=True) + "\n"  # JSON is YAML: -e @runtime.yml reads it
    out = AnsibleOutput()
    log_fd, log_path = -1, Path()
    first_lines: list[str] = []

    def on_line(line: str) -> None:
        line = redact(line)
        os.write(log_fd, (line + "\n").encode())
        if len(first_lines) < 5:
            first_lines.append(line)
        shown = out.feed(line)
        if shown:
            progress(shown)

    import paramiko

    try:
        with connect_when_ready(access, ssh_timeout) as session:
            lock, rc = session.hold(commands.lock_argv(layout, access.user), commands.LOCKED)
            if lock is None:
                busy = rc == commands.LOCK_BUSY
                raise RemoteError(
                    f"another fedi run is configuring {access.address} right now; try again when it is done"
                    if busy
                    else f"cannot take the configure lock {layout.lock_file} on {access.address} (exit {rc})"
                )
            try:
                _refuse_if_a_playbook_runs(session, layout, access)  # before anything it reads is replaced
                log_path, log_fd = _open_log(log_dir, access.address)  # only once connected to the pinned host
                staging = session.check(commands.staging_argv()).strip()
                images_dir = session.check(commands.staging_argv()).strip() if images else ""
                try:
                    files = put_tree(session.sftp, bundle.root, f"{staging}/bundle")
                    files += put_tree(session.sftp, ansible_dir or resources.ansible_dir(), f"{staging}/ansible")
                    if images:
                        runtime_text = _upload_images(session.sftp, images, images_dir, runtime, access, progress)
                    put_private(session.sftp, f"{staging}/runtime.yml", runtime_text.encode())
                    progress(f"uploaded the bundle and the playbook to {access.address} ({files} files)")
                    for argv in commands.install_argvs(layout, staging, access.user):
                        session.check(argv)
                except BaseException:
                    if images_dir:
                        session.run(commands.cleanup_argv(images_dir, access.user))
                    raise
                finally:
                    session.run(commands.cleanup_argv(staging, access.user))
                progress(f"running the playbook on {access.address}")
                try:
                    rc = session.stream(commands.ansible_argv(layout, access.user), on_line, timeout=timeout)
                except BaseException:  # Ctrl-C, the timeout: the playbook must not go on alone on the server
                    _stop_playbook(session, layout, access, progress)
                    raise
                finally:
                    if images_dir:  # loaded (or not): the archives are not kept on the server
                        session.run(commands.cleanup_argv(images_dir, access.user))
                if rc != 0 and commands.scope_busy("\n".join(first_lines), layout):
                    raise RemoteError(_still_running(access, layout))
                if layout.scope:  # what a task left behind in the scope (an agent a package started) ends too
                    _stop_scope(session, layout, access)
                message = failure_message(out, rc, access.address, log_path)
                if message:
                    raise RemoteError(redact(message))
                krc, key_out, _ = session.run(commands.read_host_key_argv(layout, access.user))
            finally:
                session.release(lock)
    except (paramiko.SSHException, OSError, EOFError) as exc:  # the connection dropped, SFTP refused a write
        where = f"; log so far: {log_path}" if log_fd >= 0 else ""
        raise RemoteError(
            f"configuring {access.address} failed: {redact(str(exc) or type(exc).__name__)}{where}"
        ) from None
    finally:
        if log_fd >= 0:
            os.close(log_fd)
    host_key = " ".join(key_out.split()[:2]) if krc == 0 else ""
    if not host_key:
        raise RemoteError(
            f"the playbook did not write {layout.host_key_file} on {access.address}: the one-time bootstrap "
            f"host key was not rotated; full log: {log_path}"
        )
    try:
        parse_host_key(host_key)
    except RemoteError:
        raise RemoteError(f"{layout.host_key_file} on {access.address} is not an OpenSSH public key") from None
    progress(f"playbook done on {access.address}: changed={out.changed} failed={out.failed}")
    if verify_rotation and host_key != " ".join(access.host_key.split()[:2]):
        try:  # the server must now show the new key (the playbook reloads sshd as its last step; allow it a moment)
            wait_for_ssh(replace(access, host_key=host_key), timeout=60)
        except HostKeyMismatch:
            raise RemoteError(
                f"the playbook wrote a new host key to {layout.host_key_file} but sshd on {access.address} "
                f"does not present it (was sshd reloaded?); full log: {log_path}"
            ) from None
        progress(f"{access.address} presents its new host key")
    return ConfigureResult(host_key=host_key, changed=out.changed, failed=out.failed, log_path=log_path)
