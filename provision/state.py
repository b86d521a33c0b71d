"""A small encrypted store for local stacks: one JSON document per stack, encrypted at rest.

The key is derived with scrypt from a passphrase: ``FEDI_PASSPHRASE`` or ``PULUMI_CONFIG_PASSPHRASE``
from the environment, else a passphrase generated once into ``<config_dir>/passphrase`` (0600) - the
same rule the Pulumi secrets provider uses for Hetzner stacks, so one passphrase opens both.

Each file is an envelope ``{"format": 1, "kdf": {...}, "nonce": ..., "ciphertext": ...}`` sealed with
AES-256-GCM; the stack name is authenticated data, so a file copied under another stack's name does
not decrypt. Files are 0600 and written atomically.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as pysecrets
from pathlib import Path
from typing import Any

from provision import names, paths
from provision.errors import ProvisionError, UsageError

PASSPHRASE_ENVS = ("FEDI_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE")
PASSPHRASE_FILE = "passphrase"
FORMAT = 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # ~32 MiB, ~0.1 s: RFC 7914's interactive-use cost


def passphrase() -> str:
    """The state passphrase: from the environment, else the generated one in the config dir."""
    for env in PASSPHRASE_ENVS:
        if os.environ.get(env):
            return os.environ[env]
    path = paths.config_dir() / PASSPHRASE_FILE
    if not path.exists():
        paths.write_private(path, pysecrets.token_urlsafe(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise UsageError(f"{path} is readable by other users", hint=f"chmod 600 {path}")
    return path.read_text().strip()


def _derive(passphrase_text: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase_text.encode())


def seal(stack: str, data: dict[str, Any], passphrase_text: str) -> dict[str, Any]:
    """Encrypt ``data`` for ``stack``: a JSON-serialisable envelope holding no plaintext."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(16), os.urandom(12)
    key = _derive(passphrase_text, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    ciphertext = AESGCM(key).encrypt(nonce, json.dumps(data, sort_keys=True).encode(), stack.encode())
    b64 = base64.b64encode
    return {
        "format": FORMAT,
        "stack": stack,
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": b64(salt).decode()},
        "cipher": "aes-256-gcm",
        "nonce": b64(nonce).decode(),
        "ciphertext": b64(ciphertext).decode(),
    }


def unseal(stack: str, envelope: dict[str, Any], passphrase_text: str) -> dict[str, Any]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        if envelope.get("format") != FORMAT or envelope.get("cipher") != "aes-256-gcm":
            raise ValueError("unknown format")
        kdf = envelope["kdf"]
        key = _derive(passphrase_text, base64.b64decode(kdf["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
        nonce, ciphertext = base64.b64decode(envelope["nonce"]), base64.b64decode(envelope["ciphertext"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProvisionError(f"the local state of stack {stack!r} is damaged ({exc})") from None
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, stack.encode())
    except InvalidTag:
        raise ProvisionError(
            f"cannot decrypt the local state of stack {stack!r}: wrong passphrase",
            hint="set FEDI_PASSPHRASE to the passphrase the stack was created with",
        ) from None
    return json.loads(plain)


class StateStore:
    """Encrypted per-stack documents under ``<state_dir>/local/<stack>/state.json``."""

    def __init__(self, root: Path | None = None, passphrase_text: str | None = None):
        self.root = root or paths.state_dir() / "local"
        self._passphrase = passphrase_text

    def _key_text(self) -> str:
        if self._passphrase is None:
            self._passphrase = passphrase()
        return self._passphrase

    def path(self, stack: str) -> Path:
        if not names.LOCAL_STACK.match(stack):
            raise UsageError(f"stack: {stack!r} is not a valid stack name")
        return self.root / stack / "state.json"

    def exists(self, stack: str) -> bool:
        return self.path(stack).exists()

    def load(self, stack: str) -> dict[str, Any]:
        path = self.path(stack)
        if not path.exists():
            raise ProvisionError(f"there is no local stack {stack!r}", hint="fedi stacks lists them")
        try:
            envelope = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"the local state of stack {stack!r} is unreadable ({exc})") from None
        return unseal(stack, envelope, self._key_text())

    def save(self, stack: str, data: dict[str, Any]) -> None:
        path = self.path(stack)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths.write_atomic(path, json.dumps(seal(stack, data, self._key_text()), indent=1) + "\n")

    def update(self, stack: str, **changes: Any) -> dict[str, Any]:
        data = self.load(stack)
        data.update(changes)
        self.save(stack, data)
        return data

    def delete(self, stack: str) -> None:
        self.path(stack).unlink(missing_ok=True)

    def stacks(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/state.json"))
