"""Secrets, generated once per stack in the exact forms the apps check. Never printed, never in argv.

The provider stores the dict encrypted (Pulumi secret config on Hetzner, an encrypted state file
locally); the bundle writes the files that hold them 0600. The generators are :mod:`provision.render.keys`.
"""

from __future__ import annotations

from provision import apps
from provision.render.keys import alnum, ssh_ed25519_keypair
from provision.spec import InstanceSpec


def generate_secrets(spec: InstanceSpec) -> dict[str, str]:
    """Every secret the stack needs, as a flat dict. Call once per stack; never regenerate on upgrade."""
    host_priv, host_pub = ssh_ed25519_keypair(f"root@{spec.domain}")
    client_priv, client_pub = ssh_ed25519_keypair(f"fedi@{spec.stack_name}")
    out: dict[str, str] = {
        "db_password": alnum(32),
        "restic_password": alnum(48),
        # Lemmy requires 10-60 characters; 32 letters and digits suit every app.
        "admin_password": alnum(32),
        "ssh_host_ed25519_key": host_priv,
        "ssh_host_ed25519_key_pub": host_pub,
        "ssh_client_key": client_priv,
        "ssh_client_key_pub": client_pub,
    }
    app = apps.get(spec.app)
    if "valkey" in app.services:
        out["valkey_password"] = alnum(32)
    out.update(app.secrets())
    return out


# What stays the stack's own when it takes over another's data: its server's SSH keys (the pinned host
# key, the operator key) and its backup repository's password (its repository was made with it).
OWN_SECRETS = ("ssh_", "restic_password")


def app_secrets(secrets: dict[str, str]) -> dict[str, str]:
    """The secrets that belong to the instance's data rather than to the stack that runs it."""
    return {k: v for k, v in secrets.items() if not k.startswith(OWN_SECRETS)}


def carried_over(old: dict[str, str], own: dict[str, str]) -> dict[str, str]:
    """A stack that takes over another's data (`fedi backup restore --into` or `--from-env`) keeps the old
    app secrets (the data needs them: Mastodon's encryption keys, 2FA secrets, the database password the
    restore set) and its own SSH keys and backup password."""
    return {**own, **app_secrets(old)}
