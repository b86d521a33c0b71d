"""The `fedi` command line. It parses and calls; it holds no logic.

One error boundary (:func:`main`): a :class:`FediError` is one line on stderr and its exit code;
anything else is a bug and keeps its traceback. Heavy modules (Pulumi, cloud SDKs, paramiko) are
imported inside the commands that need them, so `fedi --help` and `fedi render` start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException

from provision import apps
from provision.errors import FediError
from provision.spec import InstanceSpec, build_spec, load_config, parse_ttl

# Said where the software is named: each app's note about the names it is asked for by (kbin -> mbin).
APP_NOTES = " ".join(a.note for a in apps.all_apps() if a.note)
_NAMES = apps.software_names()
SOFTWARE_CHOICES = f"{', '.join(_NAMES[:-1])} or {_NAMES[-1]}" if len(_NAMES) > 1 else _NAMES[0]

app = typer.Typer(
    name="fedi",
    help=(
        "Provision a live, TLS-secured Mastodon, Lemmy or kbin instance, sized for its users, "
        f"with DNS, object storage, hardening, backups and a co-op billing hook. {APP_NOTES}"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    # A group callback keeps `fedi render` a subcommand even while it is the only command registered.
    pass


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


def emit(data: Any, as_json: bool, human: str) -> None:
    """Print ``data`` as JSON for machines, or ``human`` for people."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(human)


def note(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays clean for --json."""
    typer.echo(message, err=True)


@app.command()
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
    from provision.bundle import render_bundle
    from provision.secrets import generate_secrets
    from provision.sizing import sizing

    spec = spec_from(software, size, domain, location, admin_email, provider)
    if apps.get(spec.software).note:
        note(apps.get(spec.software).note)
    bundle = render_bundle(spec, sizing(spec), generate_secrets(spec), storage=None, out=out)
    emit(bundle.manifest, as_json, f"Wrote {len(bundle.manifest['files'])} files to {out}")


def _register_commands() -> None:
    """Command groups living in their own modules register themselves here."""
    import importlib

    for module in (
        "provision.cli_stack",
        "provision.cli_backup",
        "provision.cli_coop",
        "provision.cli_smoke",
        "provision.cli_kit",
        "provision.cli_admins",
        "provision.cli_covenant",
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


if __name__ != "__main__":  # `python -m provision.cli` registers on the importable copy (see the end)
    _register_commands()


def main(argv: list[str] | None = None) -> int:
    """The single error boundary of fedi."""
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="fedi")  # click returns Exit codes here
    except FediError as err:
        typer.echo(f"fedi: {err.line()}", err=True)
        return err.exit_code
    except typer.Abort:
        typer.echo("fedi: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("fedi: interrupted", err=True)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:  # typer vendors click: bad options, missing values
        exc.show()
        return exc.exit_code
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    # Run the importable module: command modules import provision.cli and register on its app.
    from provision.cli import main as _main

    sys.exit(_main())
