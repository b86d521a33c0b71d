"""One change to a stack at a time on this computer.

Every command that changes a stack (up, resize, down, backup restore, admins add/remove; sweep and smoke
through the same lifecycle functions) holds the stack's lock for its whole run; for a stack kept in a
shared s3:// state backend, also the lock object in that bucket (provision/lifecycle/s3lock.py). A second one is
refused at once with one line that says who holds the lock and since when (:class:`StackBusy`, exit
code 10); read-only commands (status, stacks, cost, backup list) never take it.

The lock is ``flock(2)`` on ``<state dir>/locks/<stack>.lock`` (0600): the kernel releases it when
the holder exits, however it exits (Ctrl-C, a crash, SIGKILL), so there is no stale lock to clear.
The holder writes who it is into the file for the refusal message, and removes the file (while still
holding it) when done, so a command that fails early leaves nothing behind; a taker that locked a file
removed meanwhile sees that its inode is no longer the path's and starts over. Within one
process the lock nests: the CLI takes it before it asks for a confirmation, and the lifecycle function
it then calls takes it again without refusing itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from provision import paths
from provision.errors import StackBusy
from provision.lifecycle.holder import Holder
from provision.timestamps import utc_iso

_held: dict[str, Holder] = {}  # the stacks this process holds, for nesting


def lock_path(stack: str) -> Path:
    return paths.state_dir() / "locks" / f"{stack}.lock"


def _me(command: str) -> Holder:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (a container)
        user = str(os.getuid())
    return Holder(user, socket.gethostname(), os.getpid(), command, utc_iso())


def _holder(fd: int) -> Holder | None:
    """The holder's record, or None while it has not written it yet (it writes right after locking)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode())
        return Holder(**data)
    except (ValueError, TypeError, OSError):
        return None


def _open_locked(path: Path, stack: str) -> int:
    """An open descriptor of ``path``, flock-ed exclusively; StackBusy if another process holds it."""
    for _ in range(20):  # bounded: each retry means a holder removed the file just as we opened it
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, FileExistsError):  # another holder removed the directory just then
            continue
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = holder.line() if holder else "another fedi run (it is starting)"
            raise StackBusy(f"stack {stack} is busy: {who}; nothing was changed, try again when it is done") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # we locked a file its holder had just removed: take the path's new one
    raise StackBusy(f"stack {stack} is busy: its lock {path} keeps changing hands; try again")


@contextlib.contextmanager
def hold(stack: str, command: str, backend: str | None = None) -> Iterator[Holder]:
    """Hold ``stack``'s lock for the block; :class:`StackBusy` at once if another run holds it.

    With ``backend`` an s3:// state backend other computers share, the run also holds the stack's lock
    object in that bucket (provision/lifecycle/s3lock.py), so a run on another computer is refused the same way."""
    if stack in _held:  # this process holds it already (the CLI, then the lifecycle function)
        yield _held[stack]
        return
    path = lock_path(stack)
    fd = _open_locked(path, stack)
    try:
        me = _me(command)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
        _held[stack] = me
        try:
            with _shared_lock(backend, stack, me):
                yield me
        finally:
            del _held[stack]
            path.unlink(missing_ok=True)  # still locked: a taker that opened it meanwhile starts over
            with contextlib.suppress(OSError):  # other stacks' locks are there
                path.parent.rmdir()
    finally:
        os.close(fd)  # releases the lock


def _shared_lock(backend: str | None, stack: str, me: Holder) -> contextlib.AbstractContextManager[None]:
    from provision.lifecycle import s3lock

    return s3lock.hold(backend, stack, me) if backend and s3lock.shared(backend) else contextlib.nullcontext()
