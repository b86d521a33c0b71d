"""Where the shipped data lives: templates/ and ansible/.

In a wheel they are installed inside the package (``provision/_data/``, see pyproject's force-include);
in a source checkout they sit at the repository root.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # provision/


@cache
def data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"fedi is installed without its {name}/ directory")


def templates_dir() -> Path:
    return data_dir("templates")


def ansible_dir() -> Path:
    return data_dir("ansible")
