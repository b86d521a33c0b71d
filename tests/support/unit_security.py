"""`systemd-analyze security` of the units fedi installs: the repository's ceilings and the parser.

Shared by tests/test_unit_security.py (offline, on the rendered units) and tests/test_security_testhost.py
(on a configured test host), and by bench/security.py (the figures in bench/security.json).
"""

from __future__ import annotations

import re
from pathlib import Path

EXPOSURE_FILE = Path(__file__).parents[1] / "data" / "unit-exposure.txt"
GOAL = 4.9  # the highest exposure rated OK (5.0 and above is MEDIUM)
_OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+\.\d) (\w+)")


def ceilings(path: Path = EXPOSURE_FILE) -> dict[str, tuple[float, str]]:
    """`unit ceiling -- reason` lines -> {unit: (ceiling, reason)}."""
    found: dict[str, tuple[float, str]] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"(\S+\.service)\s+(\d+\.\d)\s+--\s+(\S.*)", line)
        if not match:
            raise ValueError(f"{path.name}:{number}: expected 'UNIT CEILING -- reason': {raw!r}")
        found[match.group(1)] = (float(match.group(2)), match.group(3))
    return found


def overall(output: str) -> dict[str, tuple[float, str]]:
    """{unit: (exposure, rating)} from `systemd-analyze security UNIT...` output."""
    return {m.group(1): (float(m.group(2)), m.group(3)) for m in _OVERALL.finditer(output)}
