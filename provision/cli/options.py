"""The options every command shares, declared once, and the spec they build.

None = "not given": fedi.toml fills it (``spec_from``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provision import apps
from provision.config import load_config
from provision.spec import InstanceSpec, build_spec, parse_ttl

# Said where the software is named: each app's note about the names it is asked for by (kbin -> mbin).
APP_NOTES = " ".join(a.note for a in apps.all_apps() if a.note)
_NAMES = apps.software_names()
SOFTWARE_CHOICES = f"{', '.join(_NAMES[:-1])} or {_NAMES[-1]}" if len(_NAMES) > 1 else _NAMES[0]

# Options shared by every command that needs an instance spec. None = "not given": fedi.toml fills it.
Software = Annotated[
    str | None,
    typer.Option(help=f"{SOFTWARE_CHOICES}. {APP_NOTES}", show_default=False),
]
Size = Annotated[
    str | None,
    typer.Option(
        help="tiny (50 users, 20 active a month), small (500/150), medium (3000/1000), large (15000/5000)",
        show_default=False,
    ),
]
Domain = Annotated[str | None, typer.Option(help="bare hostname, e.g. social.example.org", show_default=False)]
Location = Annotated[
    str | None,
    typer.Option(
        help="Hetzner location: fsn1, nbg1 or hel1 (where the cx line and Object Storage are offered)",
        show_default=False,
    ),
]
AdminEmail = Annotated[str | None, typer.Option(help="first admin's e-mail", show_default=False)]
Provider = Annotated[
    str | None,
    typer.Option(
        help="hetzner (default for a new stack) or local (a Debian 13 machine here); a named stack is found "
        "in the provider that holds it",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]


Backend = Annotated[
    str | None,
    typer.Option(help="Pulumi state backend, e.g. s3://coop-state/fedi (default: a local file backend)"),
]
StackOpt = Annotated[str | None, typer.Option("--stack", help="stack name (default: from --domain)")]
Ephemeral = Annotated[bool, typer.Option("--ephemeral", help="a throwaway stack on a random subdomain")]
Ttl = Annotated[str, typer.Option(help="ephemeral stacks: lifetime before `fedi sweep` removes it (90m, 2h, 1d)")]


def spec_from(
    software: str | None = None,
    size: str | None = None,
    domain: str | None = None,
    location: str | None = None,
    admin_email: str | None = None,
    provider: str | None = None,
    ephemeral: bool = False,
    ttl: str | None = None,
    images: str | None = None,
) -> InstanceSpec:
    flags: dict[str, Any] = {
        "software": software,
        "size": size,
        "domain": domain,
        "location": location,
        "admin_email": admin_email,
        "provider": provider,
        "ephemeral": ephemeral,
        "ttl_hours": parse_ttl(ttl) if ephemeral else None,
        "images": images,
    }
    return build_spec(flags, load_config())
