"""The Jinja context every template gets, and the values derived once for all files.

Contract (shared by every template, including the backup engineer's templates/backup/*.sh.j2):
``spec``, ``sizing``, ``secrets``, ``storage``, ``versions``, ``paths``. On top of it: ``ports``
(every loopback port a process listens on: the one table the compose file, the app configs and the
Caddyfile all read, so they cannot disagree), ``media`` (where uploads go), ``backup`` (restic
settings) and ``db`` (database name, user, host, port).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from provision import versions
from provision.model import ObjectStorage
from provision.sizing import Sizing
from provision.spec import InstanceSpec

PATHS = {
    "bundle_dir": "/opt/fedi/bundle",
    "app_dir": "/opt/fedi/app",
    "data_dir": "/srv/fedi",
    "sbin": "/usr/local/sbin",
}

LOOPBACK = "127.0.0.1"
LOCAL_RESTIC_REPOSITORY = "/var/backups/fedi/restic"

# Every port something listens on, all on 127.0.0.1. Caddy (80/443) is the only public listener.
BASE_PORTS = {"postgres": 5432, "valkey": 6379, "rabbitmq": 5672}
APP_PORTS = {
    # Mastodon's defaults: Puma on 3000, streaming on 4000 (4000 + i for each further process).
    "mastodon": {"web": 3000, "streaming": 4000},
    # Lemmy's defaults: lemmy 8536, lemmy-ui 1234, pict-rs 8080.
    "lemmy": {"lemmy": 8536, "lemmy-ui": 1234, "pictrs": 8080},
    # mbin's FrankenPHP (its own Caddy) on 8080 behind the host's Caddy; its admin API moves off 2019,
    # which the host's Caddy uses.
    "mbin": {"php": 8080, "php-admin": 2020},
}


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
        local = {"mastodon": "system", "lemmy": "pictrs", "mbin": "media"}[spec.app]
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
    ports.update(APP_PORTS[spec.app])
    if sizing.mastodon:
        base = APP_PORTS["mastodon"]["streaming"]
        ports["streaming_all"] = [base + i for i in range(sizing.mastodon.streaming_processes)]
    return ports


def sidekiq_argv(process: Any) -> list[str]:
    """One Sidekiq container's command: threads, and its queues (none = Mastodon's sidekiq.yml: all)."""
    argv = ["bundle", "exec", "sidekiq", "-c", str(process.concurrency)]
    for queue in process.queues:
        argv += ["-q", queue]
    return argv


def build_context(
    spec: InstanceSpec, sizing: Sizing, secrets: dict[str, str], storage: ObjectStorage | None
) -> dict[str, Any]:
    return {
        "spec": spec,
        "sizing": sizing,
        "secrets": secrets,
        "storage": storage,
        "versions": versions,
        "paths": dict(PATHS),
        "ports": app_ports(spec, sizing),
        "loopback": LOOPBACK,
        "media": media_for(spec, storage),
        "images": versions.images(spec.app),
        "db": {"name": spec.app, "user": spec.app, "host": LOOPBACK, "port": BASE_PORTS["postgres"]},
        "backup": {"repository": backup_repository(storage)},
        "sidekiq_argv": sidekiq_argv,
        "smtp_password": spec.smtp.password() if spec.smtp else "",
    }
