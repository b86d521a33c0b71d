"""The typed data that passes between layers (spec -> sizing -> bundle -> stack -> remote -> health).

InstanceSpec lives in ``spec.py`` and Sizing in ``sizing.py``; the rest of the contract is here.
Every arrow above is a plain function call on these frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[str], None]  # one human line per event ("+ hcloud:Server created (12s)")

# Where things live on the server: the bundle's templates (render.context PATHS), the remote commands
# (remote.commands.Layout) and the backup commands all read these; the playbook's defaults agree.
SERVER_ROOT = "/opt/fedi"  # bundle, ansible, runtime.yml and the rotated host key
BUNDLE_DIR = f"{SERVER_ROOT}/bundle"
APP_DIR = f"{SERVER_ROOT}/app"  # the compose project directory
DATA_DIR = "/srv/fedi"
SBIN = "/usr/local/sbin"  # fedi-backup, fedi-restore, fedi-cleanup

# Where the Object Storage keys come from (created in the Hetzner console; never in fedi.toml).
S3_ACCESS_ENV = "FEDI_S3_ACCESS_KEY"
S3_SECRET_ENV = "FEDI_S3_SECRET_KEY"  # noqa: S105 - the name of a variable, not a secret


@dataclass(frozen=True)
class ObjectStorage:
    """An S3-compatible bucket pair (Hetzner Object Storage on Hetzner; moto in tests)."""

    endpoint: str  # https://fsn1.your-objectstorage.com
    region: str  # fsn1
    media_bucket: str  # uploads and cached remote media
    backups_bucket: str  # restic repository; never the media bucket
    access_key: str  # from the Hetzner console (secret)
    secret_key: str  # from the Hetzner console (secret)
    public_host: str = ""  # host that serves media publicly (Mastodon's S3_ALIAS_HOST), no scheme

    def __repr__(self) -> str:  # never show credentials in logs or tracebacks
        return f"ObjectStorage({self.endpoint!r}, media={self.media_bucket!r}, backups={self.backups_bucket!r})"


@dataclass(frozen=True)
class Bundle:
    """What `fedi render` wrote: everything the server needs, under ``root``."""

    root: Path  # the output directory
    manifest: dict[str, Any]  # manifest.json as written (no secret values)
    cloud_init: str  # user-data text (bootstrap only)
    host_public_key: str  # the pre-generated SSH host key (OpenSSH one-line form) to pin on first connect

    def path(self, role: str) -> Path:
        return self.root / self.manifest["files"][role]


@dataclass(frozen=True)
class HostAccess:
    """How to reach a server over SSH with its host key pinned."""

    address: str  # IP address or hostname to connect to
    port: int = 22
    user: str = "fedi"  # the admin user cloud-init creates; the playbook runs as root through sudo
    host_key: str = ""  # the pinned host public key, OpenSSH one-line form ("ssh-ed25519 AAAA...")
    netns: str | None = None  # local provider: /proc/<pid>/ns/net the client must connect from
    client_key: Path | None = None  # private key file for `user` (0600)


@dataclass(frozen=True)
class StackOutputs:
    """What a provider reports for one stack."""

    stack: str  # stack name (derived from the domain)
    provider: str  # hetzner | local
    access: HostAccess  # how to reach the server
    ipv4: str = ""
    ipv6: str = ""
    server_id: str = ""
    server_type: str = ""
    storage: ObjectStorage | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific outputs (for --json)
