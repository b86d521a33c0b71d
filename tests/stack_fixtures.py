"""Shared inputs for the stack, engine and CLI tests (plain values, no secrets of any worth)."""

from __future__ import annotations

from pathlib import Path

from provision.model import Bundle
from provision.sizing import sizing
from provision.spec import build_spec
from stacks.config import build_config, guess_zone, storage_for

HOST_KEY_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq5Ad0FvXw2Nn6WjKx4QbQ0z8o3h2S6b6m5X1tq3Yqk fedi-host"
CLIENT_KEY_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2Zb2v5qk4Jc3qV2b4Qq0dYzq1d8yH8fKp9xQqQmQ0c fedi-operator"


def spec_of(**flags):
    base = {"software": "lemmy", "size": "small", "domain": "social.example.org"}
    base.update(flags)
    return build_spec(base)


def bundle_of(tmp: Path | None = None) -> Bundle:
    return Bundle(Path(tmp or "/nonexistent"), {"files": {}}, "#cloud-config\nusers: []\n", HOST_KEY_PUB)


def config_of(*, storage: bool = True, zone: str | None = None, **flags):
    spec = spec_of(**flags)
    stack = spec.stack_name
    return build_config(
        spec,
        sizing(spec),
        bundle_of(),
        stack=stack,
        ssh_public_key=CLIENT_KEY_PUB,
        storage=storage_for(spec, stack, "AKEXAMPLE", "SKEXAMPLE") if storage else None,
        dns_zone=guess_zone(spec.domain) if zone is None else zone,
        created=1_800_000_000,
    )
