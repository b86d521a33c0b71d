"""Who holds a stack's lock: written by this computer's lock (stacklock) and the shared one (s3lock)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Holder:
    """Who holds a stack's lock (written into the lock file, read by the one refused)."""

    user: str  # login name of the holder
    host: str  # this computer's host name
    pid: int  # the holder's process id
    command: str  # what it is doing: "fedi up", "fedi backup restore", ...
    since: str  # when it took the lock, UTC, ISO 8601 ("2026-12-05T07:55:02Z")

    def line(self) -> str:
        return f"`{self.command}` by {self.user}@{self.host} (pid {self.pid}) since {self.since}"
