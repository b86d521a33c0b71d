"""`fedi plan | up | status | resize | down | stacks | ssh | logs`: parse, call provision.lifecycle, print.

Progress goes to stderr (with the elapsed time), results to stdout (``--json`` for machines).
Nothing here imports pulumi at module level: `fedi --help` stays light.
"""

from __future__ import annotations

import secrets as _secrets
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli import AdminEmail, Domain, Json, Location, Provider, Size, Software, Yes, emit, note, spec_from
from provision.errors import Aborted, MissingPrerequisite, UsageError
from provision.spec import load_config, validate_domain

Backend = Annotated[
    str | None,
    typer.Option(help="Pulumi state backend, e.g. s3://coop-state/fedi (default: a local file backend)"),
]
StackOpt = Annotated[str | None, typer.Option("--stack", help="stack name (default: from --domain)")]
Ephemeral = Annotated[bool, typer.Option("--ephemeral", help="a throwaway stack on a random subdomain")]
Ttl = Annotated[str, typer.Option(help="ephemeral stacks: lifetime before `fedi sweep` removes it (90m, 2h, 1d)")]


def make_provider(name: str, backend: str | None = None, yes: bool = False) -> Any:
    """The provider by name; tests replace this to hand in the test engine.

    ``yes`` lets the local provider's preflight install systemd-container/debootstrap without asking.
    """
    from provision.providers import get_provider
    from provision.spec import state_backend

    backend = backend or state_backend(load_config())  # --backend, else [state] backend in fedi.toml
    return get_provider(name, backend=backend) if name == "hetzner" else get_provider(name, yes=yes)


def resolve(
    stack: str | None, domain: str | None, provider: str | None, backend: str | None = None, yes: bool = False
) -> tuple[str, Any]:
    """(stack name, the provider that holds it): the one answer to "which stack" for every command
    that names one (the rules are in provision.resolve)."""
    from provision.resolve import provider_for

    configured = load_config().get("provider")
    make = lambda n: make_provider(n, backend, yes=yes)  # noqa: E731 - one line, named for the call below
    prov = provider_for(lambda p: stack_name(stack, domain, p), provider, configured, make)
    return stack_name(stack, domain, prov), prov


def flush_outbox() -> None:
    """Deliver billing events an earlier command could not (an endpoint that was down loses nothing)."""
    from provision.hooks import deliver_pending

    report = deliver_pending()
    for error in report.errors:
        note(f"billing hook: {error}")


def progress_printer():
    started = time.monotonic()

    def progress(line: str) -> None:
        note(f"[{time.monotonic() - started:5.0f}s] {line}")

    return progress


def hold_stack(name: str, command: str, prov: Any) -> None:
    """Hold the stack's lock until the command ends (StackBusy at once if another run changes it); in a
    shared s3:// backend, the lock there too."""
    from typer._click.globals import get_current_context  # typer vendors click (see provision/cli.py)

    from provision import stacklock

    get_current_context().with_resource(stacklock.hold(name, command, prov.backend))  # released when the command ends


def ephemeral_domain(domain: str) -> str:
    """A throwaway subdomain with a random suffix: the stack name carries it too."""
    return f"t{_secrets.token_hex(3)}.{validate_domain(domain)}"


def stack_name(stack: str | None, domain: str | None, provider: Any = None) -> str:
    """The stack the flags name; with ``provider``, a stack made under the old naming rule is found too."""
    from provision import names

    if stack:
        return stack
    domain = domain or load_config().get("domain")
    if not domain:
        raise UsageError("domain: is required to find the stack (pass --domain or --stack)")
    domain = validate_domain(domain)
    return names.resolve_stack(domain, provider.stored_domain) if provider is not None else names.stack_name(domain)


def all_stacks(provider: str | None, backend: str | None) -> list[tuple[Any, Any]]:
    """(provider, StackSummary) of every stack. Without --provider every provider is asked; one that
    cannot be asked (no Pulumi CLI, no token) is one note, and the others' stacks are still listed."""
    names = [provider_name(provider)] if provider else ["local", "hetzner"]
    found = []
    for name in names:
        try:
            prov = make_provider(name, backend)
            found += [(prov, summary) for summary in prov.stacks()]
        except MissingPrerequisite as missing:
            if provider:
                raise
            note(f"{name} stacks not listed: {missing.line()}")
    return found


def provider_name(provider: str | None) -> str:
    name = provider or load_config().get("provider") or "hetzner"
    if name not in ("hetzner", "local"):
        raise UsageError(f"provider: {name!r} is not one of hetzner, local")
    return name


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
    from provision import lifecycle

    spec = spec_from(software, size, domain, location, admin_email, provider)
    prov = make_provider(spec.provider, backend)
    if spec.provider == "hetzner":
        try:
            prov.engine.preflight()
        except MissingPrerequisite as missing:
            from provision.offline import OfflineEngine
            from provision.providers.hetzner import HetznerProvider

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
    from provision import coop, lifecycle

    if ephemeral and domain:
        domain = ephemeral_domain(domain)
    spec = spec_from(
        software, size, domain, location, admin_email, provider, ephemeral=ephemeral, ttl=ttl, images=images
    )
    coop.validate_config(load_config())  # a bad [coop] or [hooks] fails before anything is created
    prov = make_provider(spec.provider, backend, yes=yes)
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
    from provision import lifecycle

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
        from dataclasses import asdict

        from provision import backup
        from provision.errors import FediError

        try:
            b = backup.status(result.outputs.access)
        except FediError as err:
            lines.append(f"backup: unknown ({err.line()})")
        else:
            data["backup"] = {**asdict(b), "ok": b.ok}
            lines.append(b.line())
    lines += [f"note: {n}" for n in result.notes]
    lines += _covenant(name, prov, backend, result, data, server=not no_health)
    emit(data, as_json, "\n".join(lines))


def _covenant(name: str, prov: Any, backend: str | None, result: Any, data: dict, *, server: bool) -> list[str]:
    """The Covenant's checked promises (provision.covenant) under `fedi status`; without the server
    (--no-health) only what the stack's record says: whether the instance depends on one person."""
    from provision import covenant
    from provision.cli_covenant import fix_flags, judge

    if server:
        report = judge(name, prov, backend, result=result)
        data["covenant"] = report.as_dict()
        lines = ["covenant:"] + ["  " + i.line() for i in report.items]
        lines += [f"  not judged: {n}" for n in covenant.NOT_JUDGED]
    else:
        extra = result.outputs.extra
        flags = fix_flags(result.outputs, backend)
        item = covenant.access_item(extra.get("admins") or [], extra.get("kits") or [], covenant.own_keys(), flags)
        report = covenant.Report(name, extra.get("domain") or "", (item,))
        lines = []
    alone = covenant.one_person(report)
    data["depends_on_one_person"] = bool(alone)
    return [*lines, alone] if alone else lines


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
    from dataclasses import replace

    from provision import lifecycle
    from provision.spec import SIZES, one_of

    one_of("size", size, tuple(SIZES))
    config = load_config()  # every section validated: its [hooks] and [coop] hear of the resize
    name, prov = resolve(stack, domain, provider, backend)
    flush_outbox()
    hold_stack(name, "fedi resize", prov)  # before the question: a busy stack is refused at once
    current = prov.outputs(name)
    spec = lifecycle.spec_of_outputs(current, config)
    if spec is None:
        raise UsageError(f"stack {name!r} does not say what it runs; resize it with `fedi up --size {size}`")
    if spec.size == size:
        raise UsageError(f"size: {name} is already {size}")
    new_spec = replace(spec, size=size)
    note(f"{name}: {spec.size} -> {size}. The server is powered off while its type changes (about 1-3 minutes).")
    if spec.provider == "hetzner":
        from provision.cost import monthly_cost, resize_difference

        note(resize_difference(monthly_cost(spec), monthly_cost(new_spec)).text())
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
    from provision import lifecycle

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
    from provision.cost import monthly_cost
    from provision.timestamps import epoch

    summaries = [summary for _prov, summary in all_stacks(provider, backend)]
    now = time.time()
    rows = []
    for s in summaries:
        created = epoch(s.created)
        age_h = (now - created) / 3600 if created else None
        cost = None
        if s.size and s.software:
            from provision import apps

            location = getattr(s, "location", "") or "fsn1"
            cost = monthly_cost((s.size, apps.app_name(s.software), location)) if s.provider != "local" else None
        rows.append(
            {
                "stack": s.stack,
                "provider": s.provider,
                "software": s.software,
                "size": s.size,
                "domain": s.domain,
                "created": s.created,
                "age_hours": round(age_h, 1) if age_h is not None else None,
                "ephemeral": s.ephemeral,
                "expires": s.expires,
                "production": s.production,
                "monthly_gross": float(cost.total_gross.quantize(1 / __import__("decimal").Decimal(100)))
                if cost
                else 0.0,
                "currency": cost.currency if cost else "EUR",
            }
        )
    lines = [f"{'stack':<32} {'software':<9} {'size':<7} {'domain':<32} {'age':>7} {'EUR/month':>10}"]
    for r in rows:
        age = f"{r['age_hours']:.0f}h" if r["age_hours"] is not None else "?"
        lines.append(
            f"{r['stack']:<32} {r['software']:<9} {r['size']:<7} {r['domain']:<32} {age:>7} {r['monthly_gross']:>10.2f}"
        )
    emit(rows, as_json, "\n".join(lines) if rows else "no stacks")


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
    from provision import admins, remote

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
