"""A booted Debian 13 test host for tests that need a bare machine (conftest's session machine, the
security host): created with the development bootstrap, booted, destroyed on the way out."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def booted_machine(state: Path, prefix: str, progress: Callable[[str], None]) -> Iterator[tuple[Any, Any, Path]]:
    """(the booted machine, its bootstrap, its directory), named ``<prefix>-<random>`` under ``state``."""
    from provision.providers.local import machine, manual

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    directory = machine.machine_dir(name, state)
    directory.mkdir(parents=True, mode=0o700)
    boot = manual.dev_bootstrap(directory)
    try:
        machine.create(name, boot, progress, state=state)
        yield machine.boot(name, progress, cpus=2, memory_mb=4096, state=state), boot, directory
    finally:
        machine.destroy(name, progress, state=state, purge_backups=True)
