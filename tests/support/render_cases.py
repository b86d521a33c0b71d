"""Shared by the bundle tests: render every software x size once per test session, plus variants."""

from __future__ import annotations

import itertools
import os
import shutil
from functools import cache
from pathlib import Path

import pytest

from provision import apps
from provision.model import Bundle, ObjectStorage
from provision.render.bundle import render_bundle
from provision.render.secrets import generate_secrets
from provision.sizing import sizing
from provision.spec import SIZES, build_spec

SOFTWARE = tuple(app.software[0] for app in apps.all_apps())  # every app of the catalog, as users name it
COMBOS = list(itertools.product(SOFTWARE, SIZES))
DOMAIN = "social.example.org"

STORAGE = ObjectStorage(
    endpoint="https://fsn1.your-objectstorage.com",
    region="fsn1",
    media_bucket="social-example-org-media",
    backups_bucket="social-example-org-backups",
    access_key="AKIAFEDITESTACCESSKEY",
    secret_key="fediTestSecretKeyValue0123456789abcdefgh",
    public_host="media.social.example.org",
)
SMTP = {
    "host": "smtp.example.net",
    "port": 587,
    "user": "postmaster@social.example.org",
    "from": "no-reply@social.example.org",
}
SMTP_PASSWORD = "smtpPassw0rdFromTheEnvironment"

_ROOT = Path(os.environ.get("FEDI_TEST_RENDER_DIR", "")) if os.environ.get("FEDI_TEST_RENDER_DIR") else None


@cache
def _root() -> Path:
    import atexit
    import tempfile

    if _ROOT:
        return _ROOT
    root = Path(tempfile.mkdtemp(prefix="fedi-bundles-"))
    atexit.register(shutil.rmtree, root, True)  # the bundles hold (test) secrets: leave nothing behind
    return root


def rendered(software: str, size: str, variant: str = "plain") -> tuple[Bundle, dict[str, str]]:
    """variant: plain (hetzner, no bucket, no smtp) | storage (bucket + smtp) | local | ephemeral."""
    return _rendered(software, size, variant)  # one cache key per bundle directory


@cache
def _rendered(software: str, size: str, variant: str) -> tuple[Bundle, dict[str, str]]:
    flags = {"software": software, "size": size, "domain": DOMAIN}
    config: dict = {}
    if variant == "storage":
        config["smtp"] = SMTP
    if variant == "local":
        flags["provider"] = "local"
    if variant == "ephemeral":
        flags.update(ephemeral=True, ttl_hours=2.0)
    spec = build_spec(flags, config)
    secrets = generate_secrets(spec)
    out = _root() / f"{software}-{size}-{variant}"
    if out.exists():
        shutil.rmtree(out)
    mp = pytest.MonkeyPatch()
    mp.setenv("FEDI_SMTP_PASSWORD", SMTP_PASSWORD)
    try:
        bundle = render_bundle(spec, sizing(spec), secrets, STORAGE if variant == "storage" else None, out)
    finally:
        mp.undo()
    return bundle, secrets


def read(bundle: Bundle, role: str) -> str:
    return bundle.path(role).read_text(encoding="utf-8")


def dotenv(text: str) -> dict[str, str]:
    """Parse KEY=value lines the way docker compose's env_file does for our (simple) files."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {line!r}"
        key = key.strip()
        assert key not in out, f"{key} defined twice"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def tool(name: str) -> str:
    """The path of a real reader. Missing: skip on a developer machine, FAIL in CI (CI=true)."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{name} is not installed; scripts/test installs it (APT_PACKAGES)")
    pytest.skip(f"{name} is not installed (scripts/test installs it)")
    raise AssertionError  # unreachable
