"""Render the bundle: everything the server needs, written atomically into one directory.

``render_bundle`` validates first, renders every file into a private temporary directory next to
``out`` and renames it into place at the end, so a failure leaves nothing half-written. Files that
hold secrets are 0600; ``manifest.json`` holds no secret value (tests check both).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from provision import apps
from provision.apps import BundleFile
from provision.errors import UsageError
from provision.model import S3_ACCESS_ENV, S3_SECRET_ENV, Bundle, ObjectStorage
from provision.render import quote
from provision.render.context import build_context
from provision.render.resources import templates_dir
from provision.sizing import Sizing
from provision.spec import InstanceSpec

SECRETS_FILE = "secrets.json"


_COMMON = [
    BundleFile("cloud-init", "cloud-init.yaml.j2", "cloud-init.yaml", private=True),
    BundleFile("proxy", "caddy/Caddyfile.j2", "caddy/Caddyfile"),
    BundleFile("postgres", "postgres/fedi.conf.j2", "postgres/fedi.conf"),
    BundleFile("backup-service", "systemd/fedi-backup.service.j2", "systemd/fedi-backup.service"),
    BundleFile("backup-timer", "systemd/fedi-backup.timer.j2", "systemd/fedi-backup.timer"),
    BundleFile("backup-check-service", "systemd/fedi-backup-check.service.j2", "systemd/fedi-backup-check.service"),
    BundleFile("backup-check-timer", "systemd/fedi-backup-check.timer.j2", "systemd/fedi-backup-check.timer"),
    BundleFile("cleanup-service", "systemd/fedi-cleanup.service.j2", "systemd/fedi-cleanup.service"),
    BundleFile("cleanup-timer", "systemd/fedi-cleanup.timer.j2", "systemd/fedi-cleanup.timer"),
    BundleFile("backup-env", "restic/restic.env.j2", "backup/restic.env", private=True),
    BundleFile("ansible-vars", "ansible-vars.yml.j2", "ansible-vars.yml", private=True),
    # The app secrets as one file (not the SSH keys or the restic password). The backups carry the bundle,
    # so a stack restored from them on another computer (`fedi backup restore --from-env`) adopts these.
    BundleFile("app-secrets", "", SECRETS_FILE, private=True),
]

VALKEY_FILE = BundleFile("valkey", "valkey/fedi.conf.j2", "valkey/fedi.conf", private=True)


def bundle_files(app: str, root: Path | None = None) -> list[BundleFile]:
    """Every file of the bundle for ``app``, in the order they are written."""
    entry = apps.get(app)
    files = list(_COMMON) + list(entry.bundle_files)
    if "valkey" in entry.services:
        files.append(VALKEY_FILE)
    # The backup scripts: every templates/backup/<name>.sh.j2 -> bin/<name>.
    backup_dir = (root or templates_dir()) / "backup"
    for script in sorted(backup_dir.glob("*.sh.j2")) if backup_dir.is_dir() else []:
        name = script.name.removesuffix(".sh.j2")
        files.append(
            BundleFile(f"{name.removeprefix('fedi-')}-script", f"backup/{script.name}", f"bin/{name}", mode=0o755)
        )
    return files


def _environment(root: Path) -> Any:
    import jinja2

    env = jinja2.Environment(  # noqa: S701 - renders config files, not HTML
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(quote.FILTERS)  # one writer per format; every template quotes through them
    return env


def _check_storage(storage: ObjectStorage | None) -> None:
    if storage is None:
        return
    from urllib.parse import urlsplit

    from provision.errors import ValidationError

    url = urlsplit(storage.endpoint)
    if url.scheme != "https" or not url.hostname or url.path.strip("/"):
        raise ValidationError("storage/endpoint", f"{storage.endpoint!r} must be an https:// URL without a path")
    for field in ("media_bucket", "backups_bucket", "region", "access_key", "secret_key"):
        if not getattr(storage, field):
            raise ValidationError(f"storage/{field}", "is required")
    from provision.fields import check_text

    # the keys come from the environment: checked like every user value
    for field, env in (("access_key", S3_ACCESS_ENV), ("secret_key", S3_SECRET_ENV)):
        check_text(getattr(storage, field), f"storage/{field} (${env})", ("dotenv", "envfile", "yaml"))
    if storage.media_bucket == storage.backups_bucket:
        raise ValidationError("storage/backups_bucket", "must not be the media bucket")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"out: {out} is not empty; give a new or empty directory")


def render_bundle(
    spec: InstanceSpec,
    sizing: Sizing,
    secrets: dict[str, str],
    storage: ObjectStorage | None,
    out: Path,
) -> Bundle:
    """Write the complete bundle into ``out`` (a new or empty directory) and return what was written."""
    out = Path(out)
    _check_out(out)
    _check_storage(storage)
    root = templates_dir()
    env = _environment(root)
    context = build_context(spec, sizing, secrets, storage)
    files = bundle_files(spec.app, root)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # 0700
    try:
        written: dict[str, str] = {}
        for f in files:
            text = _text(f, env, context, secrets)
            _write(tmp / f.path, text, f)
            written[f.role] = f.path
        manifest = _manifest(spec, sizing, storage, written)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(
        root=out,
        manifest=manifest,
        cloud_init=(out / written["cloud-init"]).read_text(encoding="utf-8"),
        host_public_key=secrets["ssh_host_ed25519_key_pub"],
    )


def _text(f: BundleFile, env: Any, context: dict[str, Any], secrets: dict[str, str]) -> str:
    if f.verbatim:
        return secrets[f.verbatim]
    if f.path == SECRETS_FILE:
        from provision.render.secrets import app_secrets

        return json.dumps(app_secrets(secrets), indent=2, sort_keys=True) + "\n"
    try:
        return env.get_template(f.template).render(**context)
    except quote.Unrepresentable as exc:  # a generated or restored value: user values are checked at the edge
        raise UsageError(f"{f.path}: a value cannot be written ({exc})") from None


def _write(path: Path, text: str, f: BundleFile) -> None:
    from provision.paths import write_private

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if f.private:
        write_private(path, text)
    else:
        path.write_text(text, encoding="utf-8")
        path.chmod(f.mode)


def _manifest(spec: InstanceSpec, sizing: Sizing, storage: ObjectStorage | None, files: dict[str, str]) -> dict:
    return {
        "software": spec.software,
        "app": spec.app,
        "size": spec.size,
        "domain": spec.domain,
        "provider": spec.provider,
        "server_type": sizing.server.name,
        "app_version": apps.get(spec.app).version,
        "images": dict(apps.get(spec.app).images),
        "media": "object-storage" if storage else "data-volume",
        "files": dict(sorted(files.items())),
    }
