"""The SSH session against a REAL OpenSSH server on loopback (and one inside a network namespace).

The fixture runs /usr/sbin/sshd -D with a temporary host key and authorized key, as the current user,
and kills it in a finally. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from provision.errors import RemoteError
from provision.model import HostAccess
from provision.remote import commands
from provision.remote.session import HostKeyMismatch, connect, run, wait_for_ssh
from provision.remote.shell import interactive_shell, logs
from provision.remote.upload import put_tree

SSHD = "/usr/sbin/sshd"
needs_sshd = pytest.mark.skipif(
    not os.access(SSHD, os.X_OK), reason="openssh-server is not installed (scripts/test installs it)"
)


def keypair(path: Path) -> str:
    """Write an OpenSSH ed25519 private key (0600) at ``path``; return the public one-line form."""
    key = ed25519.Ed25519PrivateKey.generate()
    fmt = serialization.PrivateFormat.OpenSSH
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path.with_suffix(".pub").write_text(pub + "\n")
    return pub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    access: HostAccess  # pinned to the server's real host key
    dir: Path
    host_key_file: Path  # the key sshd serves (a test may replace it and send SIGHUP)
    proc: subprocess.Popen

    def log(self) -> str:
        return (self.dir / "sshd.log").read_text()


def start_sshd(tmp: Path, *, netns_wrap: list[str] | None = None, port: int | None = None) -> Sshd:
    tmp.mkdir(parents=True, exist_ok=True)
    if not (tmp / "host_ed25519").exists():  # a test may prepare (and pin) the keys before the server starts
        keypair(tmp / "host_ed25519")
        keypair(tmp / "client_ed25519")
    host_pub = (tmp / "host_ed25519.pub").read_text().strip()
    client_pub = (tmp / "client_ed25519.pub").read_text().strip()
    (tmp / "authorized_keys").write_text(client_pub + "\n")
    port = port or free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {tmp / "host_ed25519"}
PidFile {tmp / "sshd.pid"}
AuthorizedKeysFile {tmp / "authorized_keys"}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {getpass.getuser()}
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    argv = [SSHD, "-D", "-e", "-p", str(port), "-o", "ListenAddress=127.0.0.1", "-f", str(config)]
    log = (tmp / "sshd.log").open("wb")
    proc = subprocess.Popen([*(netns_wrap or []), *argv], stdout=log, stderr=log)
    access = HostAccess(
        address="127.0.0.1", port=port, user=getpass.getuser(), host_key=host_pub, client_key=tmp / "client_ed25519"
    )
    server = Sshd(access, tmp, tmp / "host_ed25519", proc)
    for _ in range(300):  # bounded: 30 s (a loaded machine starts sshd slowly)
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {server.log()}")
        if "Server listening" in server.log():
            return server
        time.sleep(0.1)
    stop(server)
    raise RuntimeError(f"sshd did not start: {server.log()}")


def stop(server: Sshd) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not os.access(SSHD, os.X_OK):
        pytest.skip("openssh-server is not installed (scripts/test installs it)")
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        stop(server)


@needs_sshd
def test_pinned_key_connects_and_run_returns_rc_and_output(sshd: Sshd) -> None:
    assert wait_for_ssh(sshd.access, timeout=20) >= 1
    rc, out, err = run(sshd.access, ["sh", "-c", "echo 'hello world'; echo oops >&2; exit 3"])
    assert (rc, out, err) == (3, "hello world\n", "oops\n")
    rc, out, _ = run(sshd.access, ["printf", "%s|", "a b", "$HOME", "it's"])  # quoted with shlex.join
    assert (rc, out) == (0, "a b|$HOME|it's|")


@needs_sshd
def test_a_different_host_key_fails_clearly_and_uploads_nothing(sshd: Sshd, tmp_path: Path) -> None:
    other = keypair(tmp_path / "other_host")
    wrong = replace(sshd.access, host_key=other)
    target = tmp_path / "must-not-exist"
    local = tmp_path / "tree"
    local.mkdir()
    (local / "secret").write_text("x")
    with pytest.raises(RemoteError) as err, connect(wrong) as session:
        put_tree(session.sftp, local, str(target))
    assert isinstance(err.value, HostKeyMismatch)
    line = err.value.line()
    assert "\n" not in line
    assert line.startswith("host key for 127.0.0.1:")
    assert "does not match the pinned key" in line and "nothing was uploaded" in line
    assert not target.exists()
    # wait_for_ssh never retries a mismatch: it fails on the first attempt, long before its timeout
    with pytest.raises(HostKeyMismatch):
        wait_for_ssh(wrong, timeout=300)
    # and no session was ever opened with the wrong key
    assert "Accepted publickey" not in sshd.log()


@needs_sshd
def test_no_pinned_key_means_no_connection(sshd: Sshd) -> None:
    with pytest.raises(RemoteError, match="no pinned host key"):
        connect(replace(sshd.access, host_key=""))


def test_wait_for_ssh_gives_up_after_its_bound_on_a_closed_port(tmp_path: Path) -> None:
    pub = keypair(tmp_path / "host")
    keypair(tmp_path / "client")
    access = HostAccess("127.0.0.1", port=free_port(), user="fedi", host_key=pub, client_key=tmp_path / "client")
    with pytest.raises(RemoteError) as err:
        wait_for_ssh(access, timeout=2)
    message = err.value.message
    assert "did not accept SSH within 2s" in message
    assert "attempts" in message and "last error: cannot reach" in message
    attempts = int(message.split("(")[1].split(" ")[0])
    assert 2 <= attempts <= 6  # backoff 0.5, 1, 2 ... within 2 s: a handful, never a busy loop


@needs_sshd
def test_wait_for_ssh_waits_for_a_server_that_starts_late(tmp_path: Path) -> None:
    import threading

    port = free_port()
    late = tmp_path / "late"
    late.mkdir()
    host_pub = keypair(late / "host_ed25519")  # pinned before the server exists, as cloud-init's key is
    keypair(late / "client_ed25519")
    access = HostAccess("127.0.0.1", port, getpass.getuser(), host_key=host_pub, client_key=late / "client_ed25519")
    box: dict[str, object] = {}

    def boot() -> None:
        time.sleep(1.5)  # the "server" boots while the client is already knocking
        try:
            box["server"] = start_sshd(late, port=port)
        except Exception as exc:  # reported below, with sshd's own log
            box["error"] = exc

    thread = threading.Thread(target=boot)
    thread.start()
    try:
        try:
            attempts = wait_for_ssh(access, timeout=60)
        except RemoteError as exc:
            pytest.fail(f"{exc.message}; the late sshd: {box.get('error', 'started')}")
        assert attempts >= 2  # refused at first, then accepted
        server = box["server"]
        assert isinstance(server, Sshd) and server.access.host_key == host_pub
    finally:
        thread.join(timeout=40)
        if isinstance(box.get("server"), Sshd):
            stop(box["server"])  # type: ignore[arg-type]


@needs_sshd
def test_client_key_must_be_private(sshd: Sshd) -> None:
    assert sshd.access.client_key is not None
    sshd.access.client_key.chmod(0o644)
    with pytest.raises(RemoteError, match="readable by others .* must be 0600"):
        connect(sshd.access)


@needs_sshd
def test_upload_preserves_modes(sshd: Sshd, tmp_path: Path) -> None:
    local = tmp_path / "bundle"
    (local / "app").mkdir(parents=True)
    (local / "app" / ".env").write_text("SECRET=1\n")
    (local / "app" / ".env").chmod(0o600)
    (local / "manifest.json").write_text("{}")
    (local / "manifest.json").chmod(0o644)
    (local / "bin").mkdir()
    (local / "bin" / "fedi-backup").write_text("#!/bin/sh\n")
    (local / "bin" / "fedi-backup").chmod(0o755)
    (local / "__pycache__").mkdir()
    (local / "__pycache__" / "x.pyc").write_bytes(b"\0")
    local.chmod(0o700)
    target = tmp_path / "remote" / "bundle"
    target.parent.mkdir()
    with connect(sshd.access) as session:
        assert put_tree(session.sftp, local, str(target)) == 3
    mode = lambda p: p.stat().st_mode & 0o7777  # noqa: E731
    assert mode(target) == 0o700
    assert mode(target / "app" / ".env") == 0o600
    assert mode(target / "manifest.json") == 0o644
    assert mode(target / "bin" / "fedi-backup") == 0o755
    assert (target / "app" / ".env").read_text() == "SECRET=1\n"
    assert not (target / "__pycache__").exists()


@needs_sshd
def test_logs_stream_through_the_session(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    # logs() runs the argv from logs_argv; point it at a command that exists on this machine
    monkeypatch.setattr(commands, "logs_argv", lambda *a, **k: ["sh", "-c", "echo line1; echo line2 >&2; exit 0"])
    got: list[str] = []
    assert logs(sshd.access, "web", write=got.append) == 0
    assert got == ["line1", "line2"]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
@needs_sshd
def test_system_ssh_trusts_only_the_pinned_key(sshd: Sshd, tmp_path: Path) -> None:
    assert interactive_shell(sshd.access, ["sh", "-c", "exit 7"]) == 7
    other = keypair(tmp_path / "other")
    assert interactive_shell(replace(sshd.access, host_key=other), ["true"]) == 255  # ssh refuses the host


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
@needs_sshd
def test_connects_from_inside_a_network_namespace(tmp_path: Path) -> None:
    # sshd in a fresh network namespace of its own: only reachable from inside it
    wrap = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    server = start_sshd(tmp_path / "ns", netns_wrap=wrap)
    try:
        netns = f"/proc/{server.proc.pid}/ns/net"
        with pytest.raises(RemoteError, match="cannot reach"):
            connect(server.access, timeout=2)  # not from the host's namespace
        access = replace(server.access, netns=netns)
        assert wait_for_ssh(access, timeout=20) >= 1
        assert run(access, ["echo", "inside"])[:2] == (0, "inside\n")
    finally:
        stop(server)
