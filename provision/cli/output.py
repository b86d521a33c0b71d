"""What commands print: results on stdout (JSON for machines with --json), progress and notes on stderr."""

from __future__ import annotations

import json
import time
from typing import Any

import typer


def emit(data: Any, as_json: bool, human: str) -> None:
    """Print ``data`` as JSON for machines, or ``human`` for people."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(human)


def note(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays clean for --json."""
    typer.echo(message, err=True)


def progress_printer():
    started = time.monotonic()

    def progress(line: str) -> None:
        note(f"[{time.monotonic() - started:5.0f}s] {line}")

    return progress
