"""Debian's age, run for the recovery kit: the plaintext goes in on stdin and comes out on stdout, so no
secret is ever in argv, and the child gets nothing of the caller's environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from provision.errors import MissingPrerequisite, UsageError

Runner = Callable[..., subprocess.CompletedProcess]


def _run(argv: list[str], data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=data, capture_output=True, timeout=120, env=_age_env())


RUN: Runner = _run  # tests wrap it to see every age argv


def _age_env() -> dict[str, str]:
    """age needs nothing of the caller's environment: no secret of it reaches the child."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def require_age() -> None:
    from provision.access.kit import AGE_INSTALL

    if shutil.which("age") is None:
        raise MissingPrerequisite("age is not installed (it encrypts the kit)", hint=f"run `{AGE_INSTALL}`")


def encrypt(plain: bytes, recipient: str) -> bytes:
    from provision.access.kit import encrypt_argv
    from provision.paths import write_private

    with tempfile.TemporaryDirectory(prefix="fedi-kit-") as tmp:
        recipients = Path(tmp) / "recipients"
        write_private(recipients, recipient + "\n")
        proc = RUN(encrypt_argv(recipients), plain)
    if proc.returncode != 0:
        raise UsageError(f"age could not encrypt to {recipient[:40]}...: {_last(proc.stderr)}")
    return proc.stdout


def decrypt(cipher: bytes, identity: Path, source: str) -> bytes:
    from provision.access.kit import decrypt_argv

    if not identity.is_file():
        raise UsageError(f"--identity {identity}: no such file")
    proc = RUN(decrypt_argv(identity), cipher)
    if proc.returncode != 0:
        why = _last(proc.stderr)
        if "no identity matched" in why:
            raise UsageError(
                f"{source} is not encrypted to the key {identity}", hint="use the key the kit was made for"
            )
        raise UsageError(f"{source}: age could not open it ({why})")
    return proc.stdout


def _last(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("age: report unexpected")]
    return (lines or ["no output"])[-1].removeprefix("age: error: ")
