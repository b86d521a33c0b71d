"""The `fedi` application: its command groups and the one error boundary. Run as `fedi` or `python -m provision`.

One error boundary (:func:`main`): a :class:`FediError` is one line on stderr and its exit code;
anything else is a bug and keeps its traceback. Heavy modules (Pulumi, cloud SDKs, paramiko) are
imported inside the commands that need them, so `fedi --help` and `fedi render` start fast.
"""

from __future__ import annotations

import typer
from typer._click.exceptions import ClickException

from provision.cli import admins, backup, coop, covenant, kit, render, smoke, stack
from provision.cli.options import APP_NOTES
from provision.errors import FediError

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
    # A group callback keeps every command a subcommand, whatever is registered.
    pass


# Every command group, registered explicitly: a module that fails to import fails `fedi` itself.
for _module in (render, stack, backup, coop, smoke, kit, admins, covenant):
    _module.register(app)


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
