"""Copy a local directory tree to the server over SFTP, keeping each file's and directory's mode.

Secret files stay 0600 all the way: each remote file gets its mode before its first byte is written,
inside a 0700 staging directory that only the login user can enter.
"""

from __future__ import annotations

import stat
from pathlib import Path

import paramiko

SKIP = {"__pycache__", ".git", ".pytest_cache"}
CHUNK = 1 << 16


def put_tree(sftp: paramiko.SFTPClient, local: Path, remote: str) -> int:
    """Upload ``local`` as ``remote`` (which must not exist yet); return the number of files sent."""
    sftp.mkdir(remote, 0o700)
    count = 0
    for entry in sorted(local.iterdir()):
        if entry.name in SKIP or entry.name.endswith((".pyc", ".retry")):
            continue
        target = f"{remote}/{entry.name}"
        if entry.is_dir():
            count += put_tree(sftp, entry, target)
            continue
        mode = stat.S_IMODE(entry.stat().st_mode)
        with entry.open("rb") as src, sftp.open(target, "wb") as dst:
            dst.chmod(mode & 0o600 or 0o600)  # owner-only until written; widened below if the source is
            dst.set_pipelined(True)
            while chunk := src.read(CHUNK):
                dst.write(chunk)
        sftp.chmod(target, mode)
        count += 1
    sftp.chmod(remote, stat.S_IMODE(local.stat().st_mode))
    return count


def put_private(sftp: paramiko.SFTPClient, remote: str, data: bytes) -> None:
    """Write one 0600 file."""
    with sftp.open(remote, "wb") as dst:
        dst.chmod(0o600)
        dst.write(data)
