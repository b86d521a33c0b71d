"""`fedi render`: write the bundle a server needs, without creating anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provision import apps
from provision.cli.options import AdminEmail, Domain, Json, Location, Provider, Size, Software, spec_from
from provision.cli.output import emit, note


def render(
    out: Annotated[Path, typer.Option(help="directory to write the bundle into")],
    software: Software = None,
    size: Size = None,
    domain: Domain = None,
    location: Location = None,
    admin_email: AdminEmail = None,
    provider: Provider = None,
    as_json: Json = False,
) -> None:
    """Write the complete bundle the server needs into OUT (with freshly generated secrets).

    Mail comes from [smtp] in fedi.toml, its password from $FEDI_SMTP_PASSWORD; the accepted form of
    every field is in the README's fedi.toml section.
    """
    from provision.render.bundle import render_bundle
    from provision.render.secrets import generate_secrets
    from provision.sizing import sizing

    spec = spec_from(software, size, domain, location, admin_email, provider)
    if apps.get(spec.software).note:
        note(apps.get(spec.software).note)
    bundle = render_bundle(spec, sizing(spec), generate_secrets(spec), storage=None, out=out)
    emit(bundle.manifest, as_json, f"Wrote {len(bundle.manifest['files'])} files to {out}")


def register(app: typer.Typer) -> None:
    app.command("render")(render)
