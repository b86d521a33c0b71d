"""The one shape of a point in time in fedi's records: ISO 8601 UTC to the second, ``2026-12-05T07:45:00Z``.

A stack's ``created`` and ``expires`` (every provider's outputs and ``fedi stacks``), a local machine's
start, an offline stack's last update: all are written by :func:`utc_iso` and read by :func:`epoch`.
Hetzner labels cannot hold ``:``, so the stack program keeps unix seconds in its labels and exports;
the Hetzner provider turns them into this shape at its boundary, and :func:`epoch` still reads them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

FORMAT = "%Y-%m-%dT%H:%M:%SZ"
BASIC = "%Y%m%dT%H%M%SZ"  # ISO 8601 basic form: for names (log files, set-aside backups) and SigV4's x-amz-date


def utc_iso(epoch_s: float | None = None) -> str:
    """``epoch_s`` (default: now) as ISO 8601 UTC, e.g. ``2026-12-05T07:45:00Z``."""
    return time.strftime(FORMAT, time.gmtime(time.time() if epoch_s is None else epoch_s))


def utc_stamp(epoch_s: float | None = None) -> str:
    """``epoch_s`` (default: now) in the basic form that fits in a name, e.g. ``20261205T074500Z``."""
    return time.strftime(BASIC, time.gmtime(time.time() if epoch_s is None else epoch_s))


def epoch(value: object) -> float:
    """Unix seconds of a recorded time: ISO 8601 (``Z`` or an offset) or unix seconds; 0 for none.

    A text that is neither raises ValueError: a damaged record is a bug to see, not a time to guess.
    """
    if value in (None, "", 0):
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:  # written by fedi, so UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def as_iso(value: object) -> str:
    """A recorded time (either shape :func:`epoch` reads) in the one shape; '' for none."""
    seconds = epoch(value)
    return utc_iso(seconds) if seconds else ""
