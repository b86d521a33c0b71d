"""StackConfig: everything the Hetzner program needs, as plain data, built from spec + sizing + bundle.

Pure Python (no pulumi import): built and tested as a value, then handed to ``stacks.hetzner.program``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass, field

from provision import names
from provision.model import Bundle, ObjectStorage
from provision.sizing import Sizing
from provision.spec import InstanceSpec

IMAGE = "debian-13"
# Hetzner Object Storage locations; the other compute locations use the nearest EU one.
OBJECT_STORAGE_LOCATIONS = {"fsn1": "fsn1", "nbg1": "nbg1", "hel1": "hel1"}
DEFAULT_OBJECT_STORAGE_LOCATION = "fsn1"

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


def label_value(text: str) -> str:
    """A Hetzner label value: at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric."""
    value = _LABEL_VALUE.sub("-", text)
    if len(value) > 63:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = f"{value[:54]}-{digest}"
    return value.strip("-_.")


def bucket_names(stack: str, domain: str) -> tuple[str, str]:
    """(media, backups): the rule is provision.names'."""
    return names.bucket_names(stack, domain)


def object_storage_endpoint(location: str) -> tuple[str, str]:
    """(endpoint URL, region) of Hetzner Object Storage for a compute location."""
    region = OBJECT_STORAGE_LOCATIONS.get(location, DEFAULT_OBJECT_STORAGE_LOCATION)
    return f"https://{region}.your-objectstorage.com", region


def host_key_fingerprint(public_key: str) -> str:
    """OpenSSH's SHA256 fingerprint of a one-line public key ('ssh-ed25519 AAAA... comment')."""
    parts = public_key.split()
    if len(parts) < 2:
        return ""
    blob = base64.b64decode(parts[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def relative_name(domain: str, zone: str) -> str:
    """The rrset name inside ``zone``: '@' for the apex, else the labels in front of the zone."""
    if domain == zone:
        return "@"
    if not domain.endswith("." + zone):
        raise ValueError(f"{domain} is not inside the zone {zone}")
    return domain[: -len(zone) - 1]


def guess_zone(domain: str) -> str:
    """The registrable part (last two labels): the zone assumed when planning offline."""
    return ".".join(domain.split(".")[-2:])


@dataclass(frozen=True)
class StackConfig:
    stack: str  # stack name (from the domain; ephemeral stacks carry a random suffix)
    software: str  # mastodon | lemmy | kbin
    app: str  # mastodon | lemmy | mbin
    size: str  # tiny | small | medium | large
    domain: str  # ASCII hostname
    location: str  # Hetzner location
    admin_email: str  # CAA iodef contact
    server_type: str  # e.g. cx33
    volume_gb: int  # never smaller than the volume that exists (the engine passes the max)
    ssh_public_key: str  # the operator's per-stack key (secrets['ssh_client_key_pub'])
    cloud_init: str = field(repr=False)  # user_data: holds the bootstrap host key, so always a secret
    host_public_key: str = ""  # the bootstrap host key, for the exported fingerprint
    ssh_allow: tuple[str, ...] = ()  # CIDRs for port 22; empty = anywhere
    production: bool = True  # delete + rebuild protection
    ephemeral: bool = False
    expires: int = 0  # ephemeral: unix time after which `fedi sweep` may destroy the stack
    dns_zone: str = ""  # zone managed at Hetzner DNS ('' = elsewhere: fedi prints the records)
    storage: ObjectStorage | None = None  # buckets to declare (credentials from the Hetzner console)
    purge_backups: bool = False  # let `down` delete the backups bucket (and its contents)
    created: int = 0  # unix time the stack was first created (label)

    @property
    def labels(self) -> dict[str, str]:
        labels = {
            "managed-by": "fedi",
            "fedi-stack": label_value(self.stack),
            "fedi-software": self.software,
            "fedi-size": self.size,
            "fedi-domain": label_value(self.domain),
            "fedi-ephemeral": "true" if self.ephemeral else "false",
        }
        if self.ephemeral:
            labels["fedi-expires"] = str(self.expires)
        return labels


def storage_for(spec: InstanceSpec, stack: str, access_key: str, secret_key: str) -> ObjectStorage:
    endpoint, region = object_storage_endpoint(spec.location)
    media, backups = bucket_names(stack, spec.domain)
    return ObjectStorage(
        endpoint=endpoint,
        region=region,
        media_bucket=media,
        backups_bucket=backups,
        access_key=access_key,
        secret_key=secret_key,
        public_host=f"{media}.{region}.your-objectstorage.com",
    )


def build_config(
    spec: InstanceSpec,
    sizing: Sizing,
    bundle: Bundle,
    *,
    stack: str,
    ssh_public_key: str,
    storage: ObjectStorage | None,
    dns_zone: str,
    volume_gb: int | None = None,
    created: int | None = None,
    purge_backups: bool = False,
) -> StackConfig:
    names.check_stack(stack, spec.domain)  # every name within its limits, before anything is created
    now = int(time.time())
    created = created or now
    return StackConfig(
        stack=stack,
        software=spec.software,
        app=spec.app,
        size=spec.size,
        domain=spec.domain,
        location=spec.location,
        admin_email=spec.admin_email,
        server_type=sizing.server.name,
        volume_gb=max(sizing.volume_gb, volume_gb or 0),
        ssh_public_key=ssh_public_key,
        cloud_init=bundle.cloud_init,
        host_public_key=bundle.host_public_key,
        ssh_allow=spec.ssh_allow,
        production=spec.production,
        ephemeral=spec.ephemeral,
        expires=created + int(spec.ttl_hours * 3600) if spec.ephemeral else 0,
        dns_zone=dns_zone,
        storage=storage,
        purge_backups=purge_backups,
        created=created,
    )


def config_to_json(cfg: StackConfig) -> str:
    """For the backend's secret stack config (it holds cloud-init and the storage credentials)."""
    import dataclasses
    import json

    data = dataclasses.asdict(cfg)
    data["storage"] = dataclasses.asdict(cfg.storage) if cfg.storage else None
    return json.dumps(data, sort_keys=True)


def config_from_json(text: str) -> StackConfig:
    import json

    data = json.loads(text)
    storage = data.pop("storage", None)
    data["ssh_allow"] = tuple(data.get("ssh_allow") or ())
    return StackConfig(**data, storage=ObjectStorage(**storage) if storage else None)
