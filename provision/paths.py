"""The user's XDG directories for fedi: state (stacks), cache (images, prices), config (passphrase)."""

from __future__ import annotations

import os
import tempfile
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


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` whole: a crash leaves the old file or the new one, never half of it.

    The temporary file sits in the same directory (so the rename is atomic), has ``mode`` before
    the first byte is written (0600 by default: most of fedi's files hold a secret), and both the
    file and the directory are fsynced so the new content survives a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
