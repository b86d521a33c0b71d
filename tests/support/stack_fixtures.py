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


def isolate(monkeypatch, tmp_path: Path) -> Path:
    """Fresh state/cache/config dirs, no token, no passphrase, and a PATH without `pulumi`."""
    for env in ("FEDI_STATE_DIR", "FEDI_CACHE_DIR", "FEDI_CONFIG_DIR"):
        monkeypatch.setenv(env, str(tmp_path / env.lower()))
    for env in (
        "HCLOUD_TOKEN",
        "PULUMI_CONFIG_PASSPHRASE",
        "PULUMI_CONFIG_PASSPHRASE_FILE",
        "FEDI_PASSPHRASE",
    ):
        monkeypatch.delenv(env, raising=False)
    # Object Storage credentials as the Hetzner console issues them (made up: nothing talks to S3 here)
    monkeypatch.setenv("FEDI_S3_ACCESS_KEY", "AKEXAMPLEEXAMPLE0001")
    monkeypatch.setenv("FEDI_S3_SECRET_KEY", "SKexampleexampleexampleexampleexample0001")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return bindir


def fake_cli(bindir: Path) -> None:
    """An executable named `pulumi` on PATH: only its presence is checked (it is never run here)."""
    cli = bindir / "pulumi"
    cli.write_text("#!/bin/sh\nexit 99\n")
    cli.chmod(0o755)
