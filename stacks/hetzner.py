"""The Hetzner Cloud stack of one instance, as a Pulumi program over pulumi-hcloud (+ pulumi-minio).

``program(cfg)`` declares the resources and returns the exports as a dict of Outputs, so the same
function runs under the Automation API (``inline(cfg)`` exports them) and under Pulumi's mocks
(``provision.providers.hetzner.offline``, the tests) where the dict is resolved directly.

Decisions:
- Primary IPv4/IPv6 with ``auto_delete=False``: DNS and federation survive a server replacement.
- ``keep_disk=True``: a type change resizes CPU/RAM only, so the server can be moved back down later
  (a grown disk could never shrink again). Data lives on the volume, which only ever grows.
- ``user_data``, ``image`` and ``ssh_keys`` force a replacement at Hetzner: they are ignored after
  creation, so a new bundle never silently replaces a server (a migration is an explicit act).
- Buckets through pulumi-minio (the Terraform ``aminueza/minio`` provider), the S3 provider Hetzner
  documents for Object Storage. No ``acl`` is set: with ``acl`` the provider calls DeleteBucketPolicy,
  which Hetzner refuses with 403; Hetzner buckets are private by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_hcloud as hcloud

from provision import names
from stacks.config import IMAGE, StackConfig, host_key_fingerprint, relative_name

ANYWHERE = ["0.0.0.0/0", "::/0"]
DNS_TTL = 300


def firewall_rules(cfg: StackConfig) -> list[dict[str, Any]]:
    """Inbound: SSH (allow-list or anywhere), HTTP, HTTPS over TCP and UDP (HTTP/3), ICMP. Nothing else."""
    ssh_sources = list(cfg.ssh_allow) or ANYWHERE
    rules = [
        {"direction": "in", "protocol": "tcp", "port": "22", "source_ips": ssh_sources, "description": "ssh"},
        {"direction": "in", "protocol": "tcp", "port": "80", "source_ips": ANYWHERE, "description": "http"},
        {"direction": "in", "protocol": "tcp", "port": "443", "source_ips": ANYWHERE, "description": "https"},
        {"direction": "in", "protocol": "udp", "port": "443", "source_ips": ANYWHERE, "description": "http3"},
        {"direction": "in", "protocol": "icmp", "source_ips": ANYWHERE, "description": "icmp"},
    ]
    return rules


def caa_records(cfg: StackConfig) -> list[str]:
    """Only Let's Encrypt may issue (staging identifies as letsencrypt.org too); no wildcards."""
    return ['0 issue "letsencrypt.org"', '0 issuewild ";"', f'0 iodef "mailto:{cfg.admin_email}"']


def _name(cfg: StackConfig, what: str) -> str:
    return names.resource_name(cfg.stack, what)


@dataclass
class Declared:
    """The resources ``declare`` created (tests read their Outputs) and the stack's exports."""

    server: Any
    firewall: Any
    ipv4: Any
    ipv6: Any
    volume: Any
    key: Any
    rrsets: dict[str, Any] = field(default_factory=dict)
    buckets: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, pulumi.Output[Any]] = field(default_factory=dict)


def program(cfg: StackConfig) -> dict[str, pulumi.Output[Any]]:
    """Declare the stack; return its exports."""
    return declare(cfg).exports


def declare(cfg: StackConfig) -> Declared:
    labels = cfg.labels
    protect = cfg.production

    key = hcloud.SshKey("operator-key", name=_name(cfg, "operator"), public_key=cfg.ssh_public_key, labels=labels)
    firewall = hcloud.Firewall("firewall", name=_name(cfg, "fw"), rules=firewall_rules(cfg), labels=labels)
    ipv4 = hcloud.PrimaryIp(
        "ipv4",
        name=_name(cfg, "ipv4"),
        type="ipv4",
        location=cfg.location,
        assignee_type="server",
        auto_delete=False,
        delete_protection=protect,
        labels=labels,
    )
    ipv6 = hcloud.PrimaryIp(
        "ipv6",
        name=_name(cfg, "ipv6"),
        type="ipv6",
        location=cfg.location,
        assignee_type="server",
        auto_delete=False,
        delete_protection=protect,
        labels=labels,
    )
    server = hcloud.Server(
        "server",
        name=names.server_name(cfg.stack),
        server_type=cfg.server_type,
        image=IMAGE,
        location=cfg.location,
        ssh_keys=[key.id],
        user_data=pulumi.Output.secret(cfg.cloud_init),
        firewall_ids=[firewall.id.apply(int)],
        public_nets=[
            {"ipv4_enabled": True, "ipv4": ipv4.id.apply(int), "ipv6_enabled": True, "ipv6": ipv6.id.apply(int)}
        ],
        keep_disk=True,
        shutdown_before_deletion=True,
        delete_protection=protect,
        rebuild_protection=protect,
        labels=labels,
        opts=pulumi.ResourceOptions(ignore_changes=["userData", "image", "sshKeys"]),
    )
    volume = hcloud.Volume(
        "data",
        name=_name(cfg, "data"),
        size=cfg.volume_gb,
        location=cfg.location,
        format="ext4",
        automount=False,  # the playbook mounts it (runtime fedi_volume_device) where Postgres lives
        delete_protection=protect,
        labels=labels,
    )
    hcloud.VolumeAttachment(
        "data-attachment", server_id=server.id.apply(int), volume_id=volume.id.apply(int), automount=False
    )

    exports: dict[str, pulumi.Output[Any]] = {
        "stack": pulumi.Output.from_input(cfg.stack),
        "domain": pulumi.Output.from_input(cfg.domain),
        "software": pulumi.Output.from_input(cfg.software),
        "size": pulumi.Output.from_input(cfg.size),
        "location": pulumi.Output.from_input(cfg.location),
        "server_type": pulumi.Output.from_input(cfg.server_type),
        "production": pulumi.Output.from_input(cfg.production),
        "ephemeral": pulumi.Output.from_input(cfg.ephemeral),
        "expires": pulumi.Output.from_input(cfg.expires),
        "created": pulumi.Output.from_input(cfg.created),
        "ipv4": ipv4.ip_address,
        "ipv6": server.ipv6_address,
        "server_id": server.id,
        "volume_id": volume.id,
        "volume_gb": pulumi.Output.from_input(cfg.volume_gb),
        "volume_device": volume.linux_device,
        "host_key_fingerprint": pulumi.Output.from_input(host_key_fingerprint(cfg.host_public_key)),
        "dns_zone": pulumi.Output.from_input(cfg.dns_zone),
    }

    declared = Declared(server=server, firewall=firewall, ipv4=ipv4, ipv6=ipv6, volume=volume, key=key)
    if cfg.dns_zone:
        rel = relative_name(cfg.domain, cfg.dns_zone)
        rrsets = {
            "A": [ipv4.ip_address],
            "AAAA": [server.ipv6_address],
            "CAA": caa_records(cfg),
        }
        for rtype, values in rrsets.items():
            declared.rrsets[rtype] = hcloud.ZoneRrset(
                f"dns-{rtype.lower()}",
                zone=cfg.dns_zone,
                name=rel,
                type=rtype,
                ttl=DNS_TTL,
                records=[{"value": v} for v in values],
                labels=labels,
            )

    if cfg.storage:
        declared.buckets = _buckets(cfg)
        exports.update(
            media_bucket=declared.buckets["media"].bucket,
            backups_bucket=declared.buckets["backups"].bucket,
            s3_endpoint=pulumi.Output.from_input(cfg.storage.endpoint),
            s3_region=pulumi.Output.from_input(cfg.storage.region),
        )
    declared.exports = exports
    return declared


def _buckets(cfg: StackConfig) -> dict[str, Any]:
    import pulumi_minio as minio

    storage = cfg.storage
    assert storage is not None
    s3 = minio.Provider(
        "object-storage",
        minio_server=storage.endpoint.removeprefix("https://"),
        minio_region=storage.region,
        minio_user=pulumi.Output.secret(storage.access_key),
        minio_password=pulumi.Output.secret(storage.secret_key),
        minio_ssl=True,
    )
    media = minio.S3Bucket(
        "media-bucket",
        bucket=storage.media_bucket,
        force_destroy=True,  # uploads and cached remote media go with the instance
        opts=pulumi.ResourceOptions(provider=s3),
    )
    backups = minio.S3Bucket(
        "backups-bucket",
        bucket=storage.backups_bucket,
        force_destroy=cfg.purge_backups,
        # kept on `fedi down` (dropped from the state, left in the account) unless --purge-backups
        opts=pulumi.ResourceOptions(provider=s3, retain_on_delete=not cfg.purge_backups),
    )
    return {"media": media, "backups": backups}


def inline(cfg: StackConfig):
    """The Automation API's inline program: run ``program`` and export its outputs."""

    def run() -> None:
        for name, value in program(cfg).items():
            pulumi.export(name, value)

    return run
