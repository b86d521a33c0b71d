"""The recovery kit: everything a trustee needs to take an instance over, as data (no I/O here).

A kit is one JSON payload: the stack's identity (name, provider, domain, software, size), its state
(the Pulumi backend URL and the state passphrase; for a local stack, its state document and machine
record), its backup repository settings (restic.env: repository, password, keys), the pinned host
key, and a plain-text page of steps. Each trustee gets it encrypted to their own public key by
Debian's ``age`` (SSH ed25519 and age recipients; provision/cli/kit.py runs it, never with a secret
in argv).

With a threshold N of M trustees, the payload is sealed once with AES-GCM under a random 16-byte
key, and only that key is split with Shamir's scheme (pycryptodome, GF(2^128), 16-byte secrets):
each trustee's file holds one share and the sealed payload, so fewer than N shares say nothing about
the key and nothing readable about the instance.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

from provision.errors import UsageError

FORMAT = 1
AGE_INSTALL = "apt-get install age"
_RECIPIENT = re.compile(r"^(ssh-ed25519 [A-Za-z0-9+/=]+( .*)?|age1[0-9a-z]{58})$")
_LABEL = re.compile(r"[^a-z0-9]+")


# ---- trustees -------------------------------------------------------------------------------------------


def parse_recipient(text: str, source: str) -> str:
    """One recipient line: ``ssh-ed25519 AAAA... [comment]`` or ``age1...``; anything else is refused."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) != 1 or not _RECIPIENT.match(lines[0]):
        raise UsageError(f"--to {source}: not one SSH ed25519 public key or age recipient")
    return lines[0]


def recipient_of(value: str) -> str:
    """--to takes a public key file (e.g. ~/.ssh/id_ed25519.pub) or the key itself."""
    path = Path(value).expanduser()
    if not value.startswith(("ssh-", "age1")) and path.is_file():
        return parse_recipient(path.read_text(), value)
    return parse_recipient(value, value if len(value) < 40 else value[:40] + "...")


def label(recipient: str, index: int) -> str:
    """A file-name-safe label: the key's comment (``alice@laptop``) or the trustee's number."""
    parts = recipient.split(" ", 2)
    comment = _LABEL.sub("-", parts[2].lower()).strip("-")[:32] if len(parts) == 3 else ""
    return f"{index}-{comment}" if comment else str(index)


def kit_filename(stack: str, recipient: str, index: int) -> str:
    return f"{stack}.kit-{label(recipient, index)}.age"


# ---- age argv (data) --------------------------------------------------------------------------------------


def encrypt_argv(recipients_file: Path) -> list[str]:
    """Plaintext on stdin, armored ciphertext on stdout: no secret on the command line."""
    return ["age", "--encrypt", "--armor", "--recipients-file", str(recipients_file)]


def decrypt_argv(identity_file: Path) -> list[str]:
    return ["age", "--decrypt", "--identity", str(identity_file)]


# ---- the payload --------------------------------------------------------------------------------------


def build_payload(
    *,
    stack: str,
    provider: str,
    identity: dict[str, Any],
    passphrase: str,
    backend: str | None,
    restic_env: str,
    host_key: str,
    document: dict[str, Any] | None = None,
    machine: dict[str, Any] | None = None,
    backend_env: dict[str, str] | None = None,
    created: str = "",
) -> dict[str, Any]:
    payload = {
        "format": FORMAT,
        "stack": stack,
        "provider": provider,
        "identity": {k: identity.get(k) for k in ("domain", "software", "size", "production")},
        "created": created,
        "state": {
            "backend": backend,
            "backend_env": dict(backend_env or {}),  # the s3:// backend's own access keys
            "passphrase": passphrase,
            "document": document,
            "machine": machine,
        },
        "backup": {"restic_env": restic_env},
        "host_key": host_key,
    }
    payload["steps"] = steps_page(payload)
    return payload


def steps_page(payload: dict[str, Any]) -> str:
    """The plain-text page a trustee reads first. It names no secret."""
    stack, domain = payload["stack"], payload["identity"].get("domain") or "?"
    provider, backend = payload["provider"], payload["state"]["backend"]
    flags = f"--domain {domain} --provider {provider}" + (f" --backend {backend}" if backend else "")
    lines = [
        f"Recovery kit for {domain} (stack {stack}, {payload['identity'].get('software')}, provider {provider})",
        f"made {payload.get('created') or '?'}.",
        "",
        "This file holds the keys to the instance: its state passphrase, its backup repository password and",
        "keys, and the pinned host key of its server. Keep it offline; never send it decrypted.",
        "",
        "1. Install fedi and age (apt-get install age) on a computer of yours.",
        "2. Open the kit (with a threshold, every trustee's file and key together):",
        "     fedi kit open KIT-FILE --identity ~/.ssh/id_ed25519",
        "   This computer now knows the stack, its state passphrase and its backup settings.",
    ]
    if payload["state"].get("backend_env"):
        lines += [
            "   The state backend's access keys are in the backend.env `fedi kit open` saved: load them first,",
            f"   in each shell:  set -a; . ~/.local/state/fedi/kits/{stack}/backend.env; set +a",
        ]
    lines += [
        "3. See how the instance is:",
        f"     fedi status {flags}",
        f"     fedi backup list {flags}",
        "4. The server is lost: create it again for the same domain, then bring the data back:",
        f"     fedi up {flags} --software {payload['identity'].get('software')} --size "
        f"{payload['identity'].get('size')}",
        f"     fedi backup restore {flags} --no-safety-snapshot",
        "   Or restore into another stack with the backup settings `fedi kit open` saved:",
        "     fedi backup restore --domain NEW-DOMAIN --from-env RESTIC-ENV-FILE --no-safety-snapshot",
        f"5. Check: fedi backup verify {flags}; then log in, and point DNS at the new server if its address",
        "   changed.",
    ]
    if provider == "local":
        lines += ["", "A local stack's machine and backups live on the computer that runs it: open the kit there."]
    elif not backend or backend.startswith("file://"):
        lines += [
            "",
            "The stack's state lives in a file backend on the admin's computer: this kit carries its passphrase",
            "and the backup settings, not the state. Without that computer, restore from the backups (step 4).",
        ]
    return "\n".join(lines) + "\n"


def check_payload(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not payload.get("stack"):
        raise UsageError("the kit is not a fedi recovery kit this version can open")
    return payload


# ---- trustee files ------------------------------------------------------------------------------------


def single_file(payload: dict[str, Any]) -> bytes:
    """What one trustee's file holds without a threshold: the whole payload."""
    return json.dumps({"fedi_kit": FORMAT, "stack": payload["stack"], "payload": payload}).encode()


def _aad(stack: str, threshold: int) -> bytes:
    return f"fedi-kit:{FORMAT}:{stack}:{threshold}".encode()


def share_files(payload: dict[str, Any], trustees: int, threshold: int) -> list[bytes]:
    """What each of ``trustees`` files holds with a threshold: one Shamir share of a random 16-byte key
    and the payload sealed with that key (AES-128-GCM). Any ``threshold`` shares rebuild the key."""
    from Crypto.Protocol.SecretSharing import Shamir
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not 2 <= threshold <= trustees:
        raise UsageError(f"--threshold {threshold}: needs 2 to {trustees} (the number of --to keys)")
    key, nonce = os.urandom(16), os.urandom(12)
    stack = payload["stack"]
    sealed = AESGCM(key).encrypt(nonce, json.dumps(payload).encode(), _aad(stack, threshold))
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    files = []
    for index, share in Shamir.split(threshold, trustees, key):
        files.append(
            json.dumps(
                {
                    "fedi_kit": FORMAT,
                    "stack": stack,
                    "threshold": threshold,
                    "trustees": trustees,
                    "share": {"index": index, "value": b64(share)},
                    "sealed": {"nonce": b64(nonce), "ciphertext": b64(sealed)},
                }
            ).encode()
        )
    return files


def read_file(plain: bytes, source: str) -> dict[str, Any]:
    try:
        data = json.loads(plain)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("fedi_kit") != FORMAT:
        raise UsageError(f"{source}: not a fedi recovery kit this version can open")
    return data


def combine(files: list[dict[str, Any]]) -> dict[str, Any]:
    """The payload from opened trustee files: the payload itself, or enough shares to rebuild its key."""
    if len(files) == 1 and "payload" in files[0]:
        return check_payload(files[0]["payload"])
    if any("share" not in f for f in files):
        raise UsageError("open a kit without a threshold on its own, one file")
    from Crypto.Protocol.SecretSharing import Shamir
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    first = files[0]
    threshold, stack = int(first["threshold"]), first["stack"]
    if any((f["stack"], f["sealed"]) != (stack, first["sealed"]) for f in files):
        raise UsageError("these files belong to different kits")
    shares = {int(f["share"]["index"]): base64.b64decode(f["share"]["value"]) for f in files}
    if len(shares) < threshold:
        raise UsageError(
            f"this kit needs {threshold} of its {first['trustees']} trustees' files; {len(shares)} given",
            hint="fedi kit open FILE --identity KEY FILE2 --identity KEY2 ...",
        )
    key = Shamir.combine(list(shares.items()))
    try:
        plain = AESGCM(key).decrypt(
            base64.b64decode(first["sealed"]["nonce"]),
            base64.b64decode(first["sealed"]["ciphertext"]),
            _aad(stack, threshold),
        )
    except InvalidTag:
        raise UsageError("the shares do not open this kit (a file altered, or from another kit)") from None
    return check_payload(json.loads(plain))
