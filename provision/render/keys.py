"""Key and password generators in the exact forms the apps check: the OS CSPRNG (``secrets``) or
``cryptography``'s key generation. A leaf (no catalog, no spec), so each app's own secrets
(``provision/apps/``) use it without a cycle; :mod:`provision.render.secrets` puts a stack's together.
"""

from __future__ import annotations

import base64
import secrets
import string

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

_ALNUM = string.ascii_letters + string.digits


def alnum(length: int) -> str:
    """Letters and digits only: safe inside URLs, DSNs, .env files, hjson and YAML without quoting."""
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def rails_secret() -> str:
    """What `rake secret` prints: SecureRandom.hex(64), 128 hex characters."""
    return secrets.token_hex(64)


def rails_encryption_key() -> str:
    """What `bin/rails db:encryption:init` prints per key: SecureRandom.alphanumeric(32)."""
    return alnum(32)


def _urlsafe_b64(data: bytes) -> str:
    # Ruby's Base64.urlsafe_encode64 (what the webpush gem uses) keeps the '=' padding.
    return base64.urlsafe_b64encode(data).decode("ascii")


def vapid_keypair() -> tuple[str, str]:
    """(private, public) as `rake mastodon:webpush:generate_vapid_key` prints them.

    A P-256 key pair: the private key is the 32-byte scalar, the public key the 65-byte uncompressed
    point, each urlsafe-base64 encoded.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_numbers().private_value.to_bytes(32, "big")
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return _urlsafe_b64(private), _urlsafe_b64(public)


def vapid_public_from_private(private_b64: str) -> str:
    """Derive the public key from a VAPID private key (used by tests and by `fedi` consistency checks)."""
    value = int.from_bytes(base64.urlsafe_b64decode(private_b64), "big")
    key = ec.derive_private_key(value, ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return _urlsafe_b64(public)


def rsa_keypair(passphrase: str, bits: int = 4096) -> tuple[str, str]:
    """(encrypted private PEM, public PEM): mbin's OAuth2 key pair.

    mbin's docs generate it with `openssl genrsa -des3` and `openssl rsa -pubout`; league/oauth2-server
    opens it with OAUTH_PASSPHRASE through OpenSSL, which reads the PKCS#8 encrypted form written here.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return private, public


def ssh_ed25519_keypair(comment: str) -> tuple[str, str]:
    """(OpenSSH private key text, one-line public key "ssh-ed25519 AAAA... comment")."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode('ascii')} {comment}"
