"""`fedi cost` and `fedi coop ...`: what the instance costs, who covers it, and the billing hook.

Parses and calls; the logic lives in provision/billing/ (pricing, cost, dues, hooks, coop).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from provision.billing import pricing
from provision.billing.hooks import DEFAULT_SECRET_ENV, TOLERANCE_S
from provision.cli.options import AdminEmail, Backend, Domain, Json, Location, Provider, Size, Software, spec_from
from provision.cli.output import emit, note
from provision.config import load_config

coop_app = typer.Typer(
    name="coop",
    help="Co-op funding: member dues, the signed billing hook and its outbox, the monthly run.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

Backups = Annotated[bool, typer.Option("--backups", help="include Hetzner's own server backups (20% of the server)")]
StorageTb = Annotated[
    float,
    typer.Option(
        "--storage-tb",
        min=0.0,
        help="object storage the account holds, in TB, when [account] stored_gb does not say (1 TB is included)",
    ),
]
NoStorage = Annotated[bool, typer.Option("--no-object-storage", help="leave out object storage")]


StackOpt = Annotated[str | None, typer.Option("--stack", help="an existing stack of the account", show_default=False)]
AllStacks = Annotated[bool, typer.Option("--all", help="the account's whole bill: every stack, shared lines once")]
Alone = Annotated[bool, typer.Option("--alone", help="price the stack as the account's only one")]


def _account(backend: str | None) -> tuple[Any, list[Any], str]:
    """(account settings, the account's stacks, why they could not be listed or "")."""
    from provision.billing.account_stacks import list_members, parse_account
    from provision.cli.target import make_provider

    settings = parse_account(load_config().get("account"))
    members, why = list_members(make_provider("hetzner", backend), settings)
    return settings, members, why


def cost(
    software: Software = None,
    size: Size = None,
    location: Location = None,
    domain: Domain = None,
    stack: StackOpt = None,
    all_stacks: AllStacks = False,
    alone: Alone = False,
    backend: Backend = None,
    backups: Backups = False,
    storage_tb: StorageTb = 1.0,
    no_object_storage: NoStorage = False,
    hours: Annotated[
        float | None, typer.Option(min=0.01, help="price an ephemeral stack for this many hours", show_default=False)
    ] = None,
    as_json: Json = False,
) -> None:
    """Print the monthly cost of an instance: its own lines and its share of what the account pays once.

    --all prints the account's whole bill (every Hetzner stack in the state backend, or [account] stacks);
    --stack NAME one stack of it; otherwise the stack the flags and fedi.toml describe, as it would join
    the account (--alone: as its only stack).
    """
    from provision.errors import MissingPrerequisite, UsageError

    if hours is not None and (all_stacks or stack):
        raise UsageError("hours: prices one ephemeral stack alone; not with --all or --stack")
    if all_stacks or stack:
        _, members, why = _account(backend)
        if not members:
            raise MissingPrerequisite("the account has no Hetzner stacks to price" + (f": {why}" if why else ""))
        bill = pricing.bill(members, backups, storage_tb, no_object_storage)
        if all_stacks:
            emit(bill.as_dict(), as_json, bill.text())
            return
        if stack not in [m.stack for m in members]:
            raise UsageError(f"stack: {stack!r} is not a Hetzner stack of the account (see `fedi cost --all`)")
        data, human = pricing.stack_view(bill, stack)
        emit(data, as_json, human)
        return
    target, provider = pricing.price_target(software, size, location, load_config())
    options = {"hetzner_backups": backups, "object_storage": not no_object_storage, "object_storage_tb": storage_tb}
    if hours is not None or provider == "local":
        breakdown = pricing.target_cost(target, provider, ephemeral_hours=hours, **options)
        emit(breakdown.as_dict(), as_json, breakdown.text())
        return
    from provision.billing.account_stacks import parse_account, planned_member, with_planned
    from provision.cli.target import stack_name

    domain = domain or load_config().get("domain")
    name = stack_name(None, domain) if domain else "this-stack"
    if alone:
        settings, members, why = parse_account(load_config().get("account")), [], ""
    else:
        settings, members, why = _account(backend)
    members = with_planned(members, planned_member(name, *target, settings))
    bill = pricing.bill(members, backups, storage_tb, no_object_storage)
    data, human = pricing.stack_view(bill, name, f"{why}; priced alone" if why else "")
    emit(data, as_json, human)


def _dues_cost(
    software: str | None, size: str | None, location: str | None, stack: str | None, backups: bool, backend: str | None
) -> tuple[Any, str]:
    """What the dues cover: the account's total, one named stack with its share, or (no account) one stack."""
    from provision.errors import UsageError

    local = load_config().get("provider") == "local"  # a local co-op has no Hetzner account to list
    _, members, why = ([], [], "") if local else _account(backend)
    if members:
        bill = pricing.bill(members, backups, None, False)
        if stack is None:
            names = ", ".join(m.stack for m in members)
            return bill, f"the co-op's {len(members)} stack{'s' if len(members) > 1 else ''} ({names})"
        if stack not in [m.stack for m in members]:
            raise UsageError(f"stack: {stack!r} is not a Hetzner stack of the account (see `fedi cost --all`)")
        return bill.breakdown(stack), f"stack {stack} with its share of the shared lines"
    if stack:
        raise UsageError(f"stack: {stack!r} is not a Hetzner stack of the account" + (f" ({why})" if why else ""))
    target, provider = pricing.price_target(software, size, location, load_config())
    return pricing.target_cost(target, provider, hetzner_backups=backups), "one stack alone" + (
        f" ({why})" if why else ""
    )


@coop_app.command("dues")
def dues(
    software: Software = None,
    size: Size = None,
    location: Location = None,
    stack: StackOpt = None,
    backend: Backend = None,
    backups: Backups = False,
    as_json: Json = False,
) -> None:
    """How many paying members cover the co-op's bill (every stack of the account, or --stack NAME)."""
    from provision.billing.dues import compute_dues, parse_coop

    total, basis = _dues_cost(software, size, location, stack, backups, backend)
    report = compute_dues(parse_coop(load_config().get("coop")), total)
    data = report.as_dict() | {"note": total.note, "basis": basis}
    prices = f"prices: {total.source}" + (f" ({total.note})" if total.note else "")
    emit(data, as_json, f"Costs of {basis}.\n{report.summary()}\n{prices}")


@coop_app.command("verify-signature")
def verify_signature(
    webhook_id: Annotated[str, typer.Option("--id", help="the webhook-id header")],
    timestamp: Annotated[str, typer.Option(help="the webhook-timestamp header")],
    signature: Annotated[str, typer.Option(help="the webhook-signature header (v1,<base64> ...)")],
    body: Annotated[Path, typer.Option(help="file with the exact request body; - reads standard input")] = Path("-"),
    secret_env: Annotated[str, typer.Option(help="the variable holding the whsec_ secret")] = DEFAULT_SECRET_ENV,
    tolerance: Annotated[int, typer.Option(min=0, help="seconds a timestamp may be off")] = TOLERANCE_S,
    as_json: Json = False,
) -> None:
    """Check a received billing event: exit 0 if it is authentic and fresh, 8 if tampered, stale or foreign."""
    import os

    from provision.billing.hooks import verify_signature as verify
    from provision.errors import MissingPrerequisite

    secret = os.environ.get(secret_env, "")
    if not secret:
        raise MissingPrerequisite(f"set ${secret_env} to the whsec_ secret the events are signed with")
    raw = sys.stdin.buffer.read() if str(body) == "-" else body.read_bytes()
    headers = {"webhook-id": webhook_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    payload = verify(secret, headers, raw, tolerance=tolerance)
    kind = payload.get("type", "?") if isinstance(payload, dict) else "?"
    emit({"valid": True, "id": webhook_id, "type": kind}, as_json, f"valid: {kind} {webhook_id}")


@coop_app.command("outbox")
def outbox(
    flush: Annotated[
        bool, typer.Option("--flush", help="deliver everything pending now, ignoring retry waits")
    ] = False,
    drop: Annotated[
        str | None, typer.Option(help="remove this event unsent (an endpoint gone for good)", show_default=False)
    ] = None,
    as_json: Json = False,
) -> None:
    """List the billing events not yet delivered; --flush sends them now."""
    from provision.billing import hooks

    if drop:
        found = hooks.drop(drop)
        emit({"dropped": drop if found else None}, as_json, f"dropped {drop}" if found else f"no event {drop}")
        return
    if flush:
        report = hooks.deliver_pending(force=True)
        for line in report.errors:
            note(f"fedi: {line}")
        lines = [f"delivered {len(report.delivered)}, pending {len(report.pending)}"]
        emit(report.as_dict(), as_json, "\n".join(lines))
        return
    pending = [event.summary() for event in hooks.list_pending()]
    rows = [f"{p['id']}  {p['type']:<16} {p['url']}  tries {p['attempts']}  {p['last_error']}" for p in pending]
    emit({"pending": pending}, as_json, "\n".join(rows) or "the outbox is empty")


def _monthly_targets(
    flags: dict[str, Any], stack: str | None, provider: str | None, backend: str | None
) -> list[tuple[Any, Any, Any]]:
    """(spec, provider, outputs) of each stack the monthly run covers.

    With --software/--size: the instance those flags and fedi.toml describe (priced, no stack needed).
    Else the stack named by --stack, --domain or fedi.toml's domain, as it runs (a domain with no stack
    yet: the instance fedi.toml describes). Else every stack that is not ephemeral, in every provider,
    as `fedi stacks` lists them.
    """
    from provision.cli.target import all_stacks, resolve
    from provision.errors import MissingPrerequisite, ProvisionError, UsageError
    from provision.lifecycle.stack import spec_of_outputs

    config = load_config()
    if flags["software"] or flags["size"]:
        return [(spec_from(**flags, provider=provider), None, None)]
    if stack or flags["domain"] or config.get("domain"):
        try:
            name, prov = resolve(stack, flags["domain"], provider, backend)
            outputs = prov.outputs(name)
        except (MissingPrerequisite, ProvisionError):
            if stack or not (config.get("software") and config.get("size")):
                raise
            return [(spec_from(**flags, provider=provider), None, None)]  # not made yet: as fedi.toml says
        spec = spec_of_outputs(outputs, config)
        if spec is None:
            raise UsageError(f"stack {name!r} does not say what it runs", hint="pass --software and --size")
        return [(spec, prov, outputs)]
    found = []
    for prov, summary in all_stacks(provider, backend):
        if summary.ephemeral:
            continue
        outputs = prov.outputs(summary.stack)
        spec = spec_of_outputs(outputs, config)
        if spec is None:
            note(f"stack {summary.stack} does not say what it runs: left out")
            continue
        found.append((spec, prov, outputs))
    if not found:
        raise UsageError(
            "no stack to cover", hint="name one with --domain or --stack, or price one with --software and --size"
        )
    return found


@coop_app.command("monthly")
def monthly(
    software: Software = None,
    size: Size = None,
    domain: Domain = None,
    location: Location = None,
    admin_email: AdminEmail = None,
    provider: Provider = None,
    stack: Annotated[str | None, typer.Option("--stack", help="stack name (default: every stack)")] = None,
    backend: Backend = None,
    announce: Annotated[
        bool | None,
        typer.Option(
            "--announce/--no-announce", help="post the funding status on the instance (default: [coop] announce)"
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """The monthly run: the account's bill, the cost.monthly event of every stack (or the one named),
    the outbox, and the funding status."""
    from provision.billing import coop, hooks
    from provision.billing.account_stacks import planned_member, with_planned
    from provision.billing.cost import monthly_cost
    from provision.billing.dues import compute_dues, parse_coop
    from provision.cli.target import make_provider

    flags = {"software": software, "size": size, "domain": domain, "location": location, "admin_email": admin_email}
    settings = parse_coop(load_config().get("coop"))
    targets = _monthly_targets(flags, stack, provider, backend)
    hetzner = [spec for spec, _prov, _out in targets if spec.provider != "local"]
    bill, why = None, ""
    if hetzner:  # the account's bill, once: every stack of it, with the covered ones as they run now
        account, members, why = _account(backend)
        for spec in hetzner:
            member = planned_member(spec.stack_name, spec.size, spec.app, spec.location, account)
            members = with_planned(members, member)
        bill = pricing.bill(members, False, None, False)
    ids: list[str] = []
    reports = []
    for spec, _prov, outputs in targets:
        if spec.provider == "local" or bill is None:  # a local machine is never part of the account
            breakdown, account_bill = monthly_cost(spec), None
            report = compute_dues(settings, breakdown)
        else:
            breakdown, account_bill = bill.breakdown(spec.stack_name), bill
            report = compute_dues(settings, bill)
        reports.append((spec, report, breakdown))
        ids += hooks.emit_lifecycle(
            "cost.monthly", spec=spec, outputs=outputs, cost=breakdown, account=account_bill, deliver=False
        )
    delivery = hooks.deliver_pending()
    for line in delivery.errors:
        note(f"fedi: {line}")
    posted = []
    if settings.announce if announce is None else announce:
        for (spec, prov, _outputs), (_spec, report, _cost) in zip(targets, reports, strict=True):
            posted.append(coop.announce(spec, report, prov or make_provider(spec.provider, backend)))
    data = {
        "events": ids,
        "delivered": list(delivery.delivered),
        "pending": len(delivery.pending),
        "stacks": [{"stack": spec.stack_name, "domain": spec.domain, "dues": r.as_dict()} for spec, r, _ in reports],
        "dues": reports[0][1].as_dict() if len(reports) == 1 else None,
        "account": bill.as_dict() if bill is not None else None,
        "account_note": why,
        "announced": "; ".join(posted) or None,
    }
    human = [bill.text()] if bill is not None else []
    if why:
        human.append(f"account: {why}; these stacks alone")
    for spec, report, breakdown in reports:
        human.append(f"{spec.domain}: {report.summary()}")
        if breakdown.note and bill is None:
            human.append(f"  prices: {breakdown.source} ({breakdown.note})")
    human.append(f"events: {len(ids)} queued, {len(delivery.pending)} still pending")
    human += posted
    emit(data, as_json, "\n".join(human))


def register(app: typer.Typer) -> None:
    app.command("cost")(cost)
    app.add_typer(coop_app, name="coop")
