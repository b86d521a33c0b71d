"""`fedi backup now | list | restore | verify | env`: parse, call provision.lifecycle.backup, print.

The work happens on the server (fedi-backup / fedi-restore from the bundle); this module finds the
stack's server through the provider contract and runs them over SSH. No heavy import at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli.options import Backend, Domain, Json, Provider, StackOpt, Yes
from provision.cli.output import emit, note
from provision.cli.target import stack_target
from provision.errors import Aborted

HELP = """Backups of an instance: restic snapshots of its database, configuration and secrets (and media
not in object storage), taken on the server by a systemd timer and sent to the stack's backups bucket.

Restore onto a new server after losing the old one, step by step:

\b
 1. Before anything goes wrong, save the backup settings and keep them away from the server and
    from this computer (a password manager): they hold the repository password and bucket keys.
      fedi backup env --domain social.example.org --out social-restic.env
 2. The server is lost but this computer still knows the stack: run the same `fedi up` again.
    It creates a new server with the stack's own secrets. Then bring the data back:
      fedi up --domain social.example.org --software ... --size ...
      fedi backup restore --domain social.example.org --no-safety-snapshot
 3. This computer is lost too: install fedi on another one, create the instance again for the
    same domain (a Fediverse instance is its domain), and restore from the saved settings. `fedi up`
    finds the old repository in the backups bucket and stops; --new-backups moves it aside (never
    deleted) and prints its new RESTIC_REPOSITORY: put that into the saved file, then restore:
      fedi up --domain social.example.org --software ... --size ... --new-backups
      fedi backup restore --domain social.example.org --from-env social-restic.env --no-safety-snapshot
    The new stack then keeps the app secrets of the restored configuration (the data needs them).
 4. Check: `fedi backup list`, `fedi backup verify` (compares the restored snapshot with the live
    database), log in, and point DNS at the new server if its address changed.

Moving an instance to another stack while the old one still runs (a migration, a handoff to new
admins): fedi backup restore --domain OLD-DOMAIN --into NEW-STACK

Restoring into the same stack asks first and takes a safety snapshot of what is live."""

backup_app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, rich_markup_mode=None)


@backup_app.command("now")
def now_cmd(
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """Run a backup now (the fedi-backup unit) and wait for it; fails if the backup fails."""
    from provision.lifecycle import backup

    _, _, outputs = stack_target(stack, domain, provider, backend)
    note(f"backing up {outputs.stack} ...")
    run = backup.backup_now(backup.reachable(outputs))
    human = (
        f"backup done at {run.last_backup}: snapshot {run.snapshot_id[:8]}, "
        f"read {backup.human_size(run.total_bytes)}, added {backup.human_size(run.data_added)}"
    )
    emit(run.__dict__, as_json, human)


@backup_app.command("status")
def status_cmd(
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """When the last good backup was taken, how the last run ended and when the next one runs."""
    from provision.lifecycle import backup

    _, _, outputs = stack_target(stack, domain, provider, backend)
    st = backup.status(backup.reachable(outputs))
    age = f"{st.age_hours} h ago" if st.age_hours is not None else "never"
    human = (
        f"last good backup: {st.last_backup or 'never'} ({age}); last run: {st.last_result or 'none yet'}; "
        f"next: {st.next_run or 'not scheduled'}" + ("" if st.ok else f"\nFAIL: {st.reason}")
    )
    emit({**st.__dict__, "ok": st.ok}, as_json, human)
    if not st.ok:
        raise typer.Exit(1)


@backup_app.command("list")
def list_cmd(
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """The stack's snapshots, newest first, with their time and size."""
    from provision.lifecycle import backup

    _, _, outputs = stack_target(stack, domain, provider, backend)
    snaps = backup.list_snapshots(backup.reachable(outputs))
    rows = [f"{'ID':<10} {'TIME':<20} {'SIZE':>10}  KIND       HOST"]
    for s in snaps:
        rows.append(
            f"{s.short_id:<10} {s.time[:19].replace('T', ' '):<20} {backup.human_size(s.size_bytes):>10}  "
            f"{s.kind:<10} {s.hostname}"
        )
    if not snaps:
        rows = ["no snapshots yet (run `fedi backup now`)"]
    emit([{**s.__dict__, "kind": s.kind} for s in snaps], as_json, "\n".join(rows))


@backup_app.command("verify")
def verify_cmd(
    snapshot: Annotated[
        str, typer.Argument(help="snapshot id, latest, or expected: the one the live data should match")
    ] = "expected",
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """Restore SNAPSHOT's database into a scratch database on the server and compare its tables and row
    counts with the live one. The live data is only read. By default it compares with the snapshot
    the live data should match: the one last restored (unless a regular backup came after it), else
    the newest regular backup, never a safety snapshot; it says which. Rows written since that
    snapshot show as differences: run it right after `fedi backup now` for an exact comparison."""
    from provision.lifecycle import backup

    _, _, outputs = stack_target(stack, domain, provider, backend)
    report = backup.verify(backup.reachable(outputs), snapshot)
    lines = [
        f"snapshot {report['snapshot'][:8]} ({report['snapshot_time'][:19]}), {_why(report)}: "
        f"{report['tables']} tables, {report['rows_restored']} rows restored, {report['rows_live']} live"
    ]
    lines += [f"  {d['table']}: live {d['live']}, restored {d['restored']}" for d in report["differences"]]
    lines.append("verify: SAME" if report["ok"] else "verify: DIFFERENT")
    emit(report, as_json, "\n".join(lines))
    if not report["ok"]:
        raise typer.Exit(2)


def _why(report: dict[str, Any]) -> str:
    """Which snapshot verify compared with, in words."""
    why = report.get("compared_with", "")
    if why == "restored":
        return f"the one restored at {report.get('restored_at') or '?'}"
    if why == "newest-backup":
        return "the newest regular backup"
    if why == "newest":
        return "the newest snapshot"
    return "as asked"


@backup_app.command("restore")
def restore_cmd(
    snapshot: Annotated[str, typer.Argument(help="snapshot id (from `fedi backup list`) or latest")] = "latest",
    into: Annotated[
        str | None,
        typer.Option("--into", help="restore onto this other stack, from the backups of the one named by --domain"),
    ] = None,
    from_env: Annotated[
        Path | None,
        typer.Option("--from-env", help="restore from the repository in this saved restic.env (`fedi backup env`)"),
    ] = None,
    safety: Annotated[
        bool, typer.Option("--safety-snapshot/--no-safety-snapshot", help="back up what is live first")
    ] = True,
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Replace the database, configuration and secrets (and media kept on the server) with SNAPSHOT.

    From the stack's own backups by default; from another repository with --from-env FILE; onto
    another stack with --into STACK (from the backups of the stack --domain/--stack names)."""
    from provision.lifecycle import backup, restore

    if into is not None:
        target_name, target_prov, target = stack_target(into, None, provider, backend, hold="fedi backup restore")
    else:
        target_name, target_prov, target = stack_target(stack, domain, provider, backend, hold="fedi backup restore")
    source_env, source, old_secrets = None, f"stack {target_name}", None
    if from_env is not None:
        source_env, source = backup.load_env_file(from_env), str(from_env)
    elif into is not None:
        name, prov, outputs = stack_target(stack, domain, provider, backend)
        source_env, source, old_secrets, source_domain = restore.source_env(name, prov, outputs, target)
        warning = restore.domain_warning(source, source_domain, target_name, target.extra.get("domain") or "")
        if warning:
            note(warning)
    _confirm(
        f"Replace the live database and configuration of {target_name} with snapshot {snapshot} of {source}"
        f"{' (after a safety snapshot)' if safety else ''}?",
        yes,
    )
    result, notes = restore.restore(
        target_name,
        target_prov,
        target,
        snapshot,
        source=source,
        env=source_env,
        old_secrets=old_secrets,
        from_env_file=from_env is not None,
        safety=safety,
    )
    for line in notes:
        note(line)
    emit(
        result,
        as_json,
        f"restored snapshot {result['snapshot'][:8]} ({result['time'][:19]}) of {source}: "
        f"databases {', '.join(result['databases'])}, config {result['config']}, media {result['media']}",
    )


@backup_app.command("env")
def env_cmd(
    out: Annotated[Path, typer.Option("--out", help="file to write (0600); keep it away from the server")],
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
) -> None:
    """Save the stack's backup settings (restic.env: repository, password, bucket keys) to OUT.

    With this file alone, `fedi backup restore --from-env OUT` brings the instance back on a new
    server, even if this computer is lost too (see `fedi backup --help`)."""
    from provision.lifecycle import backup
    from provision.paths import write_private

    _, _, outputs = stack_target(stack, domain, provider, backend)
    text = backup.read_server_env(backup.reachable(outputs))
    write_private(out, text)
    note(f"wrote {out} (0600). It holds the repository password: store it somewhere safe, offline.")


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not typer.confirm(question, default=False, err=True):
        raise Aborted("nothing was changed")


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")
