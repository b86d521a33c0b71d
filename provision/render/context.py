"""The Jinja context every template gets, and the values derived once for all files.

Contract (shared by every template, including templates/backup/*.sh.j2):
``spec``, ``app`` (the app's catalog entry: ``app.version``, ``app.pins``, ``app.uid``...), ``sizing`` (with
``sizing.tuning``, the app's tuning for the size), ``secrets``, ``storage``, ``paths``. On top of it: ``ports``
(every loopback port a process listens on: the one table the compose file, the app configs and the
Caddyfile all read, so they cannot disagree), ``media`` (where uploads go), ``backup`` (restic
settings) and ``db`` (database name, user, host, port).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from provision import apps
from provision.model import APP_DIR, BUNDLE_DIR, DATA_DIR, SBIN, ObjectStorage
from provision.sizing import Sizing
from provision.spec import InstanceSpec

PATHS = {"bundle_dir": BUNDLE_DIR, "app_dir": APP_DIR, "data_dir": DATA_DIR, "sbin": SBIN}

LOOPBACK = "127.0.0.1"
LOCAL_RESTIC_REPOSITORY = "/var/backups/fedi/restic"

# Every port something listens on, all on 127.0.0.1. Caddy (80/443) is the only public listener.
BASE_PORTS = {"postgres": 5432, "valkey": 6379, "rabbitmq": 5672}


@dataclass(frozen=True)
class Media:
    """Where uploads and cached remote media live."""

    object_storage: bool  # True: in the media bucket; False: on the data volume under data_dir
    endpoint: str  # https://fsn1.your-objectstorage.com ('' without storage)
    endpoint_host: str  # fsn1.your-objectstorage.com
    bucket: str
    region: str
    public_host: str  # host that serves the bucket's objects publicly (Mastodon's S3_ALIAS_HOST)
    public_url: str  # https://<public_host> or, on the data volume, https://<domain>/<app's media path>


def media_for(spec: InstanceSpec, storage: ObjectStorage | None) -> Media:
    if storage is None:
        local = apps.get(spec.app).media_path
        return Media(False, "", "", "", "", spec.domain, f"https://{spec.domain}/{local}")
    host = urlsplit(storage.endpoint).hostname or ""
    # Virtual-hosted style is how Hetzner Object Storage serves public objects: <bucket>.<endpoint host>.
    public = storage.public_host or f"{storage.media_bucket}.{host}"
    return Media(
        True, storage.endpoint.rstrip("/"), host, storage.media_bucket, storage.region, public, f"https://{public}"
    )


def backup_repository(storage: ObjectStorage | None) -> str:
    """RESTIC_REPOSITORY: the backups bucket with storage, else a local path on the data volume."""
    if storage is None:
        return LOCAL_RESTIC_REPOSITORY
    return f"s3:{storage.endpoint.rstrip('/')}/{storage.backups_bucket}"


def app_ports(spec: InstanceSpec, sizing: Sizing) -> dict[str, Any]:
    ports: dict[str, Any] = dict(BASE_PORTS)
    ports.update(apps.get(spec.app).ports)
    ports.update(sizing.tuning.extra_ports(ports))
    return ports


def build_context(
    spec: InstanceSpec, sizing: Sizing, secrets: dict[str, str], storage: ObjectStorage | None
) -> dict[str, Any]:
    app = apps.get(spec.app)
    return {
        "spec": spec,
        "app": app,
        "catalog": apps.all_apps(),  # every app (fedi-cleanup carries each app's commands)
        "sizing": sizing,
        "secrets": secrets,
        "storage": storage,
        "paths": dict(PATHS),
        "ports": app_ports(spec, sizing),
        "loopback": LOOPBACK,
        "media": media_for(spec, storage),
        "images": dict(app.images),
        "db": {"name": spec.app, "user": spec.app, "host": LOOPBACK, "port": BASE_PORTS["postgres"]},
        "backup": {"repository": backup_repository(storage)},
        "smtp_password": spec.smtp.password() if spec.smtp else "",
    }
