"""`fedi admins add | remove | list`: more than one admin, each with a personal login on the server.

Parse, check, apply at once (provision.access.admins_play) and record in the stack, which every converge
applies again. Bad input is one line and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provision.cli.options import Backend, Domain, Json, Provider, StackOpt
from provision.cli.output import emit, note

HELP = "Several admins, each with their own login on the server (own key, sudo); listed, added and removed."
admins_app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, rich_markup_mode=None)


def _key_text(value: str) -> str:
    """--ssh-key is the key line itself or the path of a .pub file."""
    path = Path(value).expanduser()
    if not value.lstrip().startswith(("ssh-", "ecdsa-", "sk-")) and path.is_file():
        return path.read_text()
    return value


def _target(stack, domain, provider, backend, command: str):
    from provision.access import admins
    from provision.cli.target import stack_target

    name, prov, outputs = stack_target(stack, domain, provider, backend, hold=command)
    return name, prov, outputs, admins.from_records(outputs.extra.get("admins"))


def _software(outputs) -> str:
    from provision import apps

    return apps.app_name(outputs.extra.get("software", ""))


def _apply(prov, name, outputs, records, what: str, *, record_first: bool) -> None:
    """An addition is recorded once the server took it (a name the server already uses is refused there,
    with nothing written); a removal is recorded first, so the next converge revokes it even if now fails."""
    from provision.access import admins, admins_play
    from provision.cli.output import progress_printer
    from provision.errors import RemoteError

    if record_first:
        prov.set_admins(name, admins.to_records(records))
    try:
        admins_play.apply(outputs.access, records, progress_printer())
    except RemoteError as exc:
        if not record_first:
            raise
        message = f"{what} is recorded, but the server was not changed: {exc.message}"
        raise RemoteError(message, hint="run `fedi up`") from None
    if not record_first:
        prov.set_admins(name, admins.to_records(records))


@admins_app.command("add")
def add_cmd(
    name: Annotated[str, typer.Argument(help="the admin's login on the server, e.g. alice")],
    ssh_key: Annotated[str, typer.Option("--ssh-key", help="the admin's public key: the line, or its .pub file")],
    app_role: Annotated[
        str | None, typer.Option("--app-role", help="also an account in the app: admin or moderator")
    ] = None,
    email: Annotated[str | None, typer.Option(help="the app account's e-mail (with --app-role)")] = None,
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
) -> None:
    """Give NAME a personal login on the server (their key only, sudo), at once and on every converge."""
    from provision.access import admins, admins_play
    from provision.timestamps import utc_iso

    key_text = _key_text(ssh_key)
    admins.validate_name(name)  # bad input: one line before the stack is even looked up
    admins.parse_key(key_text)
    stack_name, prov, outputs, records = _target(stack, domain, provider, backend, "fedi admins add")
    admin = admins.make(name, key_text, _software(outputs), records, app_role=app_role, email=email, added=utc_iso())
    _apply(prov, stack_name, outputs, [*records, admin], f"admin {name}", record_first=False)
    note(f"{name} can log in: fedi ssh --as {name} --identity THEIR_PRIVATE_KEY ({admin.fingerprint})")
    if admin.app_role:
        admins_play.create_app_account(outputs.access, _software(outputs), admin)
        note(f"{name} is {admin.app_role} in the app ({admin.email}); they set their password with 'Forgot password'")


@admins_app.command("remove")
def remove_cmd(
    name: Annotated[str, typer.Argument(help="the admin to remove")],
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
) -> None:
    """Remove NAME's login, key and sessions from the server at once; later converges keep it removed."""
    from provision.access import admins

    stack_name, prov, outputs, records = _target(stack, domain, provider, backend, "fedi admins remove")
    _apply(prov, stack_name, outputs, admins.without(records, name), f"the removal of {name}", record_first=True)
    note(f"{name} can no longer log in to {outputs.access.address}")


@admins_app.command("list")
def list_cmd(
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """The stack's admins besides the operator's own login (fedi)."""
    from provision.access import admins
    from provision.cli.target import stack_target

    _, _, outputs = stack_target(stack, domain, provider, backend)
    records = admins.from_records(outputs.extra.get("admins"))
    rows = admins.to_records(records)
    lines = [f"{'name':<16} {'key':<52} {'app role':<10} added"]
    lines += [f"{a.name:<16} {a.fingerprint:<52} {a.app_role or '-':<10} {a.added}" for a in records]
    emit(rows, as_json, "\n".join(lines) if records else f"no admins besides the operator's login ({admins.OPERATOR})")


def register(app: typer.Typer) -> None:
    app.add_typer(admins_app, name="admins")
