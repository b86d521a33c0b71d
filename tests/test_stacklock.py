"""One change to a stack at a time (issue 20, item 2 on one computer): the second run is refused at
once with one line naming the holder, exit code 10, and changes nothing.

The holder is a real other process (flock locks belong to open files, so only another process shows
what a second `fedi` run sees); the refused runs are the real CLI, started as `fedi` processes.
"""

from __future__ import annotations

import getpass
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import StackBusy
from provision.lifecycle import stacklock

BIN = Path(sys.executable).parent
HOLDER = """
import sys, time
from provision.lifecycle import stacklock
with stacklock.hold(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (bounded by the test's own timeout)
"""


class OtherRun:
    """Another process holding ``stack``'s lock, as a running `fedi up` would."""

    def __init__(self, stack: str, command: str = "fedi up"):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, stack, command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        assert self.proc.stdout.readline().strip() == "held"

    def end(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdin.close()
        self.proc.stdout.close()


def _fedi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN / "fedi", *args], capture_output=True, text=True, timeout=300, env=os.environ.copy())


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under the state dir but the locks, with its content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parent.name != "locks"
    }


def test_a_second_run_is_refused_with_who_holds_it(fedi_dirs) -> None:
    other = OtherRun("social-example-org")
    try:
        with pytest.raises(StackBusy) as refused, stacklock.hold("social-example-org", "fedi down"):
            pass
        line = refused.value.line()
        assert f"`fedi up` by {getpass.getuser()}@{socket.gethostname()} (pid {other.proc.pid}) since " in line
        assert line.startswith("stack social-example-org is busy: ") and "\n" not in line
        assert refused.value.exit_code == 10
        path = stacklock.lock_path("social-example-org")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
        with stacklock.hold("other-example-org", "fedi up"):  # another stack is free
            pass
    finally:
        other.end()
    with stacklock.hold("social-example-org", "fedi down") as me:  # free once the holder has ended
        assert (me.pid, me.command) == (os.getpid(), "fedi down")
    assert not path.parent.exists()  # nothing left behind once every holder has ended


def test_a_crashed_holder_leaves_no_lock_behind(fedi_dirs) -> None:
    other = OtherRun("social-example-org")
    other.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock with the process
    with stacklock.hold("social-example-org", "fedi up"):
        pass


def test_the_lock_nests_within_one_process(fedi_dirs) -> None:
    """The CLI takes the lock before it asks; the lifecycle function it calls takes it again."""
    with stacklock.hold("social-example-org", "fedi down") as outer:
        with stacklock.hold("social-example-org", "fedi down") as inner:
            assert inner is outer
        other = subprocess.run(
            [sys.executable, "-c", HOLDER, "social-example-org", "fedi up"], capture_output=True, text=True, timeout=60
        )
        assert "StackBusy" in other.stderr and "`fedi down`" in other.stderr  # still held after the inner block
    OtherRun("social-example-org").end()  # and released after the outer one


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--provider", "local", "--software", "lemmy", "--size", "tiny", "--domain", "busy.localhost", "--yes"],
        ["down", "--provider", "local", "--domain", "busy.localhost", "--yes"],
        ["resize", "--provider", "local", "--domain", "busy.localhost", "--size", "small", "--yes"],
        ["backup", "restore", "--provider", "local", "--domain", "busy.localhost", "--yes"],
    ],
    ids=["up", "down", "resize", "backup-restore"],
)
def test_the_cli_refuses_a_busy_stack_with_exit_10_and_changes_nothing(fedi_dirs, argv) -> None:
    from provision.spec import build_spec

    stack = build_spec({"software": "lemmy", "size": "tiny", "domain": "busy.localhost", "provider": "local"})
    state = fedi_dirs / "state"
    before = _tree(state)
    other = OtherRun(stack.stack_name)
    try:
        proc = _fedi(*argv)
    finally:
        other.end()
    assert proc.returncode == 10, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"fedi: stack {stack.stack_name} is busy: `fedi up` by ")
    assert f"(pid {other.proc.pid}) since " in lines[0]
    assert _tree(state) == before  # nothing created, nothing deleted


def test_read_only_commands_do_not_take_the_lock(fedi_dirs) -> None:
    other = OtherRun("busy-localhost")
    try:
        assert _fedi("stacks", "--provider", "local").returncode == 0
        assert _fedi("cost", "--software", "lemmy", "--size", "tiny").returncode == 0
    finally:
        other.end()


CONTENDER = """
import os, sys
from provision.lifecycle import stacklock
from provision.errors import StackBusy
marker, held = sys.argv[1], 0
for _ in range(300):
    try:
        with stacklock.hold("contended", "fedi up"):
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
            os.close(fd)
            os.unlink(marker)
            held += 1
    except StackBusy:
        pass
print(held)
"""


def test_holders_never_overlap_while_lock_files_come_and_go(fedi_dirs, tmp_path) -> None:
    """Each holder removes the lock file when done; a taker that locked a removed file must not get in."""
    marker = tmp_path / "inside"
    procs = [
        subprocess.Popen([sys.executable, "-c", CONTENDER, str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err.decode()[-1500:] for _, err in results]
    assert sum(int(out) for out, _ in results) > 0


def test_two_real_fedi_up_at_once_the_second_is_refused_and_nothing_is_lost(fedi_dirs) -> None:
    """The issue's case with two real `fedi up` processes of one local stack: the first waits at its
    confirmation (holding the lock, with a terminal), the second is refused with exit 10 naming it;
    the first then goes on undisturbed (here: declined, so it forgets what it stored)."""
    import pty
    import select

    state = fedi_dirs / "state"
    before = _tree(state)
    up = ["up", "--provider", "local", "--software", "lemmy", "--size", "tiny", "--domain", "busy.localhost"]
    leader, follower = pty.openpty()
    first = subprocess.Popen(
        [BIN / "fedi", *up], stdin=follower, stdout=follower, stderr=follower, env=os.environ.copy(), close_fds=True
    )
    os.close(follower)
    seen = b""
    try:
        for _ in range(600):  # bounded: about 60 s for rendering the bundle and the plan
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    seen += os.read(leader, 65536)
                except OSError:  # the first run ended (its terminal closed)
                    break
            if b"as above?" in seen or first.poll() is not None:
                break
        if b"as above?" not in seen:
            first.wait(timeout=60)
            if first.returncode == 3:
                pytest.skip(f"the local provider cannot run here: {seen.decode(errors='replace').strip()[-300:]}")
            raise AssertionError(f"the first `fedi up` never asked: {seen.decode(errors='replace')[-2000:]}")

        second = _fedi(*up, "--yes")
        assert second.returncode == 10, second.stdout + second.stderr
        who = re.escape(f"`fedi up` by {getpass.getuser()}@{socket.gethostname()} (pid {first.pid})")
        since = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
        line = rf"fedi: stack busy-localhost is busy: {who} since {since}; nothing was changed, .*"
        assert re.fullmatch(line, second.stderr.strip()), second.stderr

        os.write(leader, b"n\n")  # the first run goes on: declined, it forgets the secrets it stored
        assert first.wait(timeout=120) == 9
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
        os.close(leader)
    assert _tree(state) == before
