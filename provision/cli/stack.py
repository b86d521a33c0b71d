"""`fedi plan | up | status | resize | down | stacks | ssh | logs`: parse, call provision.lifecycle.stack, print.

Progress goes to stderr (with the elapsed time), results to stdout (``--json`` for machines).
Nothing here imports pulumi at module level: `fedi --help` stays light.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli import target
from provision.cli.options import (
    AdminEmail,
    Backend,
    Domain,
    Ephemeral,
    Json,
    Location,
    Provider,
    Size,
    Software,
    StackOpt,
    Ttl,
    Yes,
    spec_from,
)
from provision.cli.output import emit, note, progress_printer
from provision.cli.target import all_stacks, ephemeral_domain, hold_stack, resolve
from provision.config import load_config
from provision.errors import Aborted, MissingPrerequisite


def flush_outbox() -> None:
    """Deliver billing events an earlier command could not (an endpoint that was down loses nothing)."""
    from provision.billing.hooks import deliver_pending

    report = deliver_pending()
    for error in report.errors:
        note(f"billing hook: {error}")


# ---- formatting -------------------------------------------------------------------------------------

_KEYS = (
    "serverType",
    "image",
    "location",
    "size",
    "type",
    "name",
    "zone",
    "bucket",
    "autoDelete",
    "deleteProtection",
    "keepDisk",
    "port",
    "records",
)


def _summary(props: dict[str, Any]) -> str:
    parts = []
    for key in _KEYS:
        if key in props and key != "records":
            parts.append(f"{key}={props[key]}")
    if "records" in props:
        parts.append("records=" + ", ".join(str(r.get("value")) for r in props["records"]))
    if "rules" in props:
        parts.append("open=" + ", ".join(f"{r['protocol']}/{r.get('port', '-')}" for r in props["rules"]))
    return " ".join(parts)


def plan_dict(plan, cost) -> dict[str, Any]:
    return {
        "stack": plan.stack,
        "provider": plan.provider,
        "offline": plan.offline,
        "notes": list(plan.notes),
        "resources": [
            {"type": r.type, "name": r.name, "action": r.action, "properties": r.properties} for r in plan.resources
        ],
        "cost": cost.as_dict() if cost is not None else None,
    }


def plan_text(plan, cost) -> str:
    rows = [f"stack {plan.stack} on {plan.provider}" + (" (offline plan)" if plan.offline else "")]
    for r in plan.resources:
        rows.append(f"  {r.action:<8} {r.type.split(':')[-1]:<18} {r.name:<16} {_summary(r.properties)}")
    rows += [f"note: {n}" for n in plan.notes]
    if cost is not None:
        rows.append(cost.text())
    return "\n".join(rows)


def outputs_dict(outputs) -> dict[str, Any]:
    return {
        "stack": outputs.stack,
        "provider": outputs.provider,
        "ipv4": outputs.ipv4,
        "ipv6": outputs.ipv6,
        "server_id": outputs.server_id,
        "server_type": outputs.server_type,
        "address": outputs.access.address,
        "host_key": outputs.access.host_key,
        "media_bucket": outputs.storage.media_bucket if outputs.storage else None,
        "backups_bucket": outputs.storage.backups_bucket if outputs.storage else None,
        "s3_endpoint": outputs.storage.endpoint if outputs.storage else None,
        **{k: v for k, v in outputs.extra.items() if k not in ("stack",)},
    }


def _health_dict(report) -> Any:
    if report is None or not hasattr(report, "checks"):
        return report
    return [{"name": c.name, "ok": c.ok, "detail": c.detail, "skipped": c.skipped} for c in report.checks]


def result_dict(result) -> dict[str, Any]:
    return {
        "stack": result.stack,
        "outputs": outputs_dict(result.outputs) if result.outputs else None,
        "cost": result.cost.as_dict() if hasattr(result.cost, "as_dict") else None,
        "health": _health_dict(result.health),
        "configure": {"changed": result.configure.changed, "failed": result.configure.failed}
        if result.configure is not None
        else None,
        "notes": list(result.notes),
        "elapsed_s": round(result.elapsed_s, 1),
    }


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise Aborted("confirmation needed but there is no terminal: pass --yes")
    return typer.confirm(question, default=False, err=True)


# ---- commands ---------------------------------------------------------------------------------------


def plan_cmd(
    software: Software = None,
    size: Size = None,
    domain: Domain = None,
    location: Location = None,
    admin_email: AdminEmail = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """Show what `up` would create or change, and the monthly cost (offline under mocks when needed)."""
    from provision.lifecycle import stack as lifecycle

    spec = spec_from(software, size, domain, location, admin_email, provider)
    prov = target.make_provider(spec.provider, backend)
    if spec.provider == "hetzner":
        try:
            prov.engine.preflight()
        except MissingPrerequisite as missing:
            from provision.providers.hetzner.offline import OfflineEngine
            from provision.providers.hetzner.provider import HetznerProvider

            note(f"planning offline under Pulumi's mocks: {missing.line()}")
            prov = HetznerProvider(engine=OfflineEngine())
    the_plan, cost = lifecycle.plan(spec, prov)
    emit(plan_dict(the_plan, cost), as_json, plan_text(the_plan, cost))


Images = Annotated[
    str | None,
    typer.Option(
        help="load the app's images from `docker save` archives in this directory instead of pulling them "
        "(one per pinned image: see the README)",
        show_default=False,
    ),
]


def up_cmd(
    software: Software = None,
    size: Size = None,
    domain: Domain = None,
    location: Location = None,
    admin_email: AdminEmail = None,
    provider: Provider = None,
    backend: Backend = None,
    ephemeral: Ephemeral = False,
    ttl: Ttl = "2h",
    new_backups: Annotated[
        bool,
        typer.Option(
            "--new-backups", help="backups an earlier stack of this domain left: move them aside (never deleted)"
        ),
    ] = False,
    yes: Yes = False,
    as_json: Json = False,
    images: Images = None,
) -> None:
    """Provision (or converge) an instance, configure it and wait until it is healthy."""
    from provision.billing import coop
    from provision.lifecycle import stack as lifecycle

    if ephemeral and domain:
        domain = ephemeral_domain(domain)
    spec = spec_from(
        software, size, domain, location, admin_email, provider, ephemeral=ephemeral, ttl=ttl, images=images
    )
    coop.validate_config(load_config())  # a bad [coop] or [hooks] fails before anything is created
    prov = target.make_provider(spec.provider, backend, yes=yes)
    flush_outbox()

    def confirm(the_plan, cost) -> bool:
        note(plan_text(the_plan, cost))
        return _confirm(f"Create or update {spec.domain} as above?")

    result = lifecycle.up(spec, prov, progress_printer(), confirm=None if yes else confirm, new_backups=new_backups)
    out = result.outputs
    lines = [f"{spec.domain} is up: {out.ipv4} {out.ipv6} ({result.elapsed_s:.0f}s)".replace("  ", " ")]
    # The local provider says how to open the instance, how to trust Caddy's CA, and whether the app runs.
    lines += [str(out.extra[k]) for k in ("app_note", "open_hint", "trust_hint") if out.extra.get(k)]
    emit(result_dict(result), as_json, "\n".join(lines))


def status_cmd(
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    no_health: Annotated[bool, typer.Option("--no-health", help="skip the health check")] = False,
    as_json: Json = False,
) -> None:
    """Show a stack's outputs, cost and health."""
    from provision.lifecycle import stack as lifecycle

    name, prov = resolve(stack, domain, provider, backend)
    result = lifecycle.status(name, prov, check_health=not no_health, config=load_config())
    data = result_dict(result)
    lines = [f"{k}: {v}" for k, v in data["outputs"].items() if v not in (None, "")]
    if result.cost is not None:
        lines.append(result.cost.text())
    if data["health"]:
        marks = {(True, False): "ok  ", (False, False): "FAIL", (False, True): "skip"}
        lines += [f"{marks[c['ok'], c['skipped']]} {c['name']}: {c['detail']}" for c in data["health"]]
    if not no_health:  # the age of the last good backup: a backup counts once it exists
        from provision.lifecycle import backup

        backup_data, line = backup.status_line(result.outputs.access)
        if backup_data is not None:
            data["backup"] = backup_data
        lines.append(line)
    lines += [f"note: {n}" for n in result.notes]
    from provision.cli.covenant import status_lines

    lines += status_lines(name, prov, backend, result, data, server=not no_health)
    emit(data, as_json, "\n".join(lines))


def resize_cmd(
    size: Annotated[str, typer.Option(help="the new size: tiny, small, medium, large")],
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Change the size in place (server type, volume grows only, Postgres and app re-tuned)."""
    from provision.lifecycle import stack as lifecycle
    from provision.spec import SIZES, one_of

    one_of("size", size, tuple(SIZES))
    config = load_config()  # every section validated: its [hooks] and [coop] hear of the resize
    name, prov = resolve(stack, domain, provider, backend)
    flush_outbox()
    hold_stack(name, "fedi resize", prov)  # before the question: a busy stack is refused at once
    spec, new_spec, difference = lifecycle.resize_target(name, prov, size, config)
    note(f"{name}: {spec.size} -> {size}. The server is powered off while its type changes (about 1-3 minutes).")
    if difference:
        note(difference)
    if not yes and not _confirm(f"Resize {spec.domain} to {size}?"):
        raise Aborted("nothing was changed")
    result = lifecycle.resize(new_spec, prov, progress_printer())
    human = f"{spec.domain} is now {size}" + (f"; {result.cost.text()}" if hasattr(result.cost, "text") else "")
    emit(result_dict(result), as_json, human)


def down_cmd(
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    force_unprotect: Annotated[
        bool, typer.Option("--force-unprotect", help="lift delete protection of a production stack first")
    ] = False,
    purge_backups: Annotated[bool, typer.Option("--purge-backups", help="delete the backups bucket too")] = False,
    skip_backup: Annotated[bool, typer.Option("--skip-backup", help="do not run the pre-destroy backup")] = False,
    confirm_domain: Annotated[
        str | None, typer.Option("--confirm", help="production stacks: the domain, instead of typing it")
    ] = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Destroy a stack (the backups bucket is kept unless --purge-backups) and remove it from the backend."""
    from provision.lifecycle import stack as lifecycle

    config = load_config()  # every section validated: its [hooks] and [coop] hear of the destroy
    name, prov = resolve(stack, domain, provider, backend)
    flush_outbox()
    hold_stack(name, "fedi down", prov)  # before the question: a busy stack is refused at once
    outputs = prov.outputs(name)
    target = outputs.extra.get("domain") or name
    if outputs.extra.get("production"):
        typed = confirm_domain
        if typed is None:
            if not sys.stdin.isatty():
                raise Aborted(f"{target} is a production stack: pass --confirm {target}")
            typed = typer.prompt(f"{target} is a production stack. Type its domain to destroy it", err=True)
        if typed.strip() != target:
            raise Aborted(f"the domain typed does not match {target}: nothing was destroyed")
    elif not yes and not _confirm(f"Destroy {target}?"):
        raise Aborted("nothing was destroyed")
    result = lifecycle.down(
        name,
        prov,
        progress_printer(),
        purge_backups=purge_backups,
        unprotect=force_unprotect,
        skip_backup=skip_backup,
        config=config,
    )
    emit(result_dict(result), as_json, f"{target} destroyed; the stack is removed from the backend")


def stacks_cmd(provider: Provider = None, backend: Backend = None, as_json: Json = False) -> None:
    """List the stacks in the state backend with software, size, domain, age and monthly cost."""
    from provision.lifecycle.listing import stack_rows, stack_table

    rows = stack_rows([summary for _prov, summary in all_stacks(provider, backend)], time.time())
    emit(rows, as_json, stack_table(rows))


def ssh_cmd(
    command: Annotated[list[str] | None, typer.Argument(help="a command to run instead of a login shell")] = None,
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    as_admin: Annotated[
        str | None, typer.Option("--as", help="log in as this admin (fedi admins add) with their own key")
    ] = None,
    identity: Annotated[Path | None, typer.Option("--identity", help="with --as: the admin's private key file")] = None,
) -> None:
    """Open a shell on the server (host key pinned), or run COMMAND there."""
    from provision import remote
    from provision.access import admins

    name, prov = resolve(stack, domain, provider, backend)
    outputs = prov.outputs(name)
    access = outputs.access
    if as_admin is not None or identity is not None:
        access = admins.login_access(access, admins.from_records(outputs.extra.get("admins")), as_admin, identity)
    raise typer.Exit(remote.interactive_shell(access, command or None))


def logs_cmd(
    service: Annotated[str | None, typer.Argument(help="a compose service or unit (default: all)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    lines: Annotated[int, typer.Option(help="how many lines to show first")] = 200,
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
) -> None:
    """Show the instance's logs (journal and containers)."""
    from provision import remote

    name, prov = resolve(stack, domain, provider, backend)
    outputs = prov.outputs(name)
    raise typer.Exit(remote.logs(outputs.access, service, follow, lines=lines))


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
    app.command("up")(up_cmd)
    app.command("status")(status_cmd)
    app.command("resize")(resize_cmd)
    app.command("down")(down_cmd)
    app.command("stacks")(stacks_cmd)
    app.command("ssh")(ssh_cmd)
    app.command("logs")(logs_cmd)
