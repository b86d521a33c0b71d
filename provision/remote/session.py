"""One SSH connection to a server with its host key pinned (paramiko).

The pinned key is the only key the client knows: it is loaded for the exact ``address``/``[address]:port``
name, and every unknown key is rejected by policy. There is no trust on first use and no way to turn
checking off. A mismatch is one clear line, raised before anything is sent to the server.
"""

from __future__ import annotations

import base64
import select
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from provision.errors import RemoteError
from provision.model import HostAccess
from provision.remote.netns import call_in_netns


class HostKeyMismatch(RemoteError):
    """The server showed a different host key than the pinned one. Never retried."""


class _RejectEveryUnknownKey(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):  # noqa: ARG002 (paramiko's signature)
        raise HostKeyMismatch(
            f"host key for {hostname} is not the pinned key ({key.get_name()} {key.fingerprint}); "
            "refusing to connect: nothing was uploaded"
        )


def parse_host_key(line: str) -> paramiko.PKey:
    """An OpenSSH one-line public key ("ssh-ed25519 AAAA... comment") as a paramiko key."""
    fields = line.split()
    if len(fields) < 2:
        raise RemoteError("no pinned host key for this server: refusing to connect without one")
    try:
        return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1], validate=True))
    except (ValueError, paramiko.SSHException) as exc:
        raise RemoteError(f"the pinned host key is not a valid OpenSSH public key: {exc}") from None


def host_key_name(access: HostAccess) -> str:
    """The name paramiko (and known_hosts) looks a key up under."""
    return access.address if access.port == 22 else f"[{access.address}]:{access.port}"


def _client_key(path: Path | None) -> paramiko.PKey:
    if path is None:
        raise RemoteError("no client key for this server (HostAccess.client_key is empty)")
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise RemoteError(f"client key {path} does not exist") from None
    if mode & 0o077:
        raise RemoteError(f"client key {path} is readable by others (mode {mode:04o}); it must be 0600")
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, ValueError, paramiko.SSHException) as exc:
        raise RemoteError(f"cannot read client key {path}: {exc}") from None


def _open_socket(access: HostAccess, timeout: float) -> socket.socket:
    def connect() -> socket.socket:
        return socket.create_connection((access.address, access.port), timeout=timeout)

    return call_in_netns(access.netns, connect) if access.netns else connect()


class Session:
    """An open, authenticated connection. Use as a context manager; see :func:`connect`."""

    def __init__(self, access: HostAccess, client: paramiko.SSHClient):
        self.access = access
        self.client = client
        self._sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def _channel(self, argv: list[str], timeout: float) -> paramiko.Channel:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(f"the SSH connection to {self.access.address} is closed")
        chan = transport.open_session(timeout=timeout)
        chan.exec_command(shlex.join(argv))
        return chan

    def run(self, argv: list[str], *, timeout: float = 600, stdin: bytes = b"") -> tuple[int, str, str]:
        """Run ``argv`` (quoted with shlex.join); return (exit code, stdout, stderr). Bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        chan = self._channel(argv, timeout)
        try:
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                select.select([chan], [], [], 0.1)
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                drained = not (chan.recv_ready() or chan.recv_stderr_ready())
                if chan.exit_status_ready() and (chan.eof_received or chan.closed) and drained:
                    break
                if time.monotonic() > deadline:
                    raise RemoteError(f"{argv[0]} on {self.access.address} did not finish within {timeout:.0f}s")
            return chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
        finally:
            chan.close()

    def check(self, argv: list[str], *, timeout: float = 600) -> str:
        """Run ``argv``; RemoteError with its stderr's last line unless it exits 0."""
        rc, out, err = self.run(argv, timeout=timeout)
        if rc != 0:
            last = (err.strip().splitlines() or out.strip().splitlines() or [""])[-1]
            raise RemoteError(f"`{shlex.join(argv)}` failed on {self.access.address} (exit {rc}): {last}")
        return out

    def hold(self, argv: list[str], ready: str, *, timeout: float = 30) -> tuple[paramiko.Channel | None, int]:
        """Start ``argv`` and leave it running once it printed ``ready``: (channel, -1). If it exits
        first: (None, its exit code). Closing the channel ends it (its stdin reaches EOF)."""
        deadline = time.monotonic() + timeout
        chan = self._channel(argv, timeout)
        out = b""
        while ready.encode() not in out:
            select.select([chan], [], [], 0.1)
            while chan.recv_ready():
                out += chan.recv(4096)
            if ready.encode() in out:
                break
            if chan.exit_status_ready():
                rc = chan.recv_exit_status()
                chan.close()
                return None, rc
            if time.monotonic() > deadline:
                chan.close()
                raise RemoteError(f"{argv[0]} on {self.access.address} did not start within {timeout:.0f}s")
        return chan, -1

    def release(self, chan: paramiko.Channel, *, timeout: float = 10) -> None:
        """End a command started with :meth:`hold`: close its stdin and wait (bounded) for it to exit."""
        deadline = time.monotonic() + timeout
        try:
            chan.shutdown_write()
            while not chan.exit_status_ready() and time.monotonic() < deadline:
                select.select([chan], [], [], 0.1)
                while chan.recv_ready():
                    chan.recv(4096)
        finally:
            chan.close()

    def stream(self, argv: list[str], on_line: Callable[[str], None], *, timeout: float) -> int:
        """Run ``argv`` with stderr merged into stdout, calling ``on_line`` per line as it arrives."""
        deadline = time.monotonic() + timeout
        chan = self._channel(argv, timeout)
        chan.set_combine_stderr(True)
        chan.shutdown_write()
        pending = b""
        try:
            while True:
                select.select([chan], [], [], 0.2)
                while chan.recv_ready():
                    pending += chan.recv(65536)
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        on_line(line.decode(errors="replace"))
                if chan.exit_status_ready() and (chan.eof_received or chan.closed) and not chan.recv_ready():
                    break
                if time.monotonic() > deadline:
                    raise RemoteError(f"{argv[0]} on {self.access.address} did not finish within {timeout:.0f}s")
            if pending:
                on_line(pending.decode(errors="replace"))
            return chan.recv_exit_status()
        finally:
            chan.close()


def connect(access: HostAccess, *, timeout: float = 20) -> Session:
    """Connect and authenticate with the host key pinned. Each step is bounded by ``timeout``."""
    pinned = parse_host_key(access.host_key)
    pkey = _client_key(access.client_key)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_RejectEveryUnknownKey())
    client.get_host_keys().add(host_key_name(access), pinned.get_name(), pinned)
    where = f"{access.address}:{access.port}"
    try:
        sock = _open_socket(access, timeout)
    except OSError as exc:
        raise RemoteError(f"cannot reach {where}: {exc.strerror or exc}") from None
    try:
        client.connect(
            access.address,
            port=access.port,
            username=access.user,
            pkey=pkey,
            sock=sock,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            look_for_keys=False,
            allow_agent=False,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyMismatch(
            f"host key for {where} does not match the pinned key (server offered {exc.key.get_name()} "
            f"{exc.key.fingerprint}, pinned {exc.expected_key.fingerprint}); refusing to connect: "
            "nothing was uploaded"
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        raise RemoteError(f"{access.user}@{where} did not accept fedi's key {access.client_key}") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise RemoteError(f"SSH to {where} failed: {exc or type(exc).__name__}") from None
    except BaseException:
        client.close()
        raise
    return Session(access, client)


def connect_when_ready(access: HostAccess, timeout: float = 300, *, attempt_timeout: float = 10) -> Session:
    """Connect, waiting for a booting server: see :func:`wait_for_ssh`. Returns the open session."""
    return _wait(access, timeout, attempt_timeout)[0]


def wait_for_ssh(access: HostAccess, timeout: float = 300, *, attempt_timeout: float = 10) -> int:
    """Wait until the server accepts our pinned, authenticated connection; return the number of attempts.

    Retries what happens while a server boots (refused, timed out, no banner yet, key not yet
    authorized) with exponential backoff, until ``timeout`` seconds have passed. A host key mismatch is
    never retried: it fails at once.
    """
    session, attempts = _wait(access, timeout, attempt_timeout)
    session.close()
    return attempts


def _wait(access: HostAccess, timeout: float, attempt_timeout: float) -> tuple[Session, int]:
    parse_host_key(access.host_key)  # a missing or bad pin fails now, not after the timeout
    _client_key(access.client_key)
    deadline = time.monotonic() + timeout
    delay, attempts, last = 0.5, 0, ""
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        try:
            return connect(access, timeout=max(0.5, min(attempt_timeout, remaining))), attempts
        except HostKeyMismatch:
            raise
        except RemoteError as exc:
            last = exc.message
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RemoteError(
                f"{access.address}:{access.port} did not accept SSH within {timeout:.0f}s "
                f"({attempts} attempts); last error: {last}"
            )
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 8.0)


def run(access: HostAccess, argv: list[str], *, timeout: float = 600) -> tuple[int, str, str]:
    """Run one command on the server: (exit code, stdout, stderr)."""
    with connect(access) as session:
        return session.run(argv, timeout=timeout)
