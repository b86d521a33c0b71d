"""The user's XDG directories for fedi: state (stacks), cache (images, prices), config (passphrase)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def _dir(env: str, default: str) -> Path:
    path = Path(os.environ[env]) if os.environ.get(env) else Path(default)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def state_dir() -> Path:
    """Stacks and their encrypted state. Override with FEDI_STATE_DIR (tests use a temporary one)."""
    return _dir("FEDI_STATE_DIR", platformdirs.user_state_dir("fedi"))


def cache_dir() -> Path:
    """Rebuildable things: the Debian 13 image, the price list. Override with FEDI_CACHE_DIR."""
    return _dir("FEDI_CACHE_DIR", platformdirs.user_cache_dir("fedi"))


def config_dir() -> Path:
    """The generated state passphrase. Override with FEDI_CONFIG_DIR."""
    return _dir("FEDI_CONFIG_DIR", platformdirs.user_config_dir("fedi"))


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file that holds a secret: created 0600 before the first byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode() if isinstance(data, str) else data)
    finally:
        os.close(fd)
