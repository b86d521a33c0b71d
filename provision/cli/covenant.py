"""`fedi covenant`: the Mastodon Server Covenant's operational promises, per stack (provision/access/covenant.py).

Reads the facts (the stack's record through its provider; the backup timer, the last good backup and
the last verified restore from the server over the pinned channel; [coop] from fedi.toml) and prints
the judgement. Exit 0 when every checked promise is met, 11 when one is not (for cron).
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from provision.cli.options import Backend, Domain, Json, Provider, StackOpt
from provision.cli.output import emit


def fix_flags(outputs: Any, backend: str | None) -> str:
    """The flags that name this stack in the fix commands."""
    domain = outputs.extra.get("domain")
    flags = f"--domain {domain}" if domain else f"--stack {outputs.stack}"
    return flags + (f" --backend {backend}" if backend else "")


def _server_facts(access: Any) -> tuple[str | None, Any, str, dict[str, Any] | None, str]:
    """(timer calendar, BackupStatus, its error, the last verify's record, its error), read from the server."""
    from provision.errors import FediError
    from provision.lifecycle import backup
    from provision.remote.commands import privileged

    if not access.address:
        why = "the stack has no running server to reach"
        return None, None, why, None, why
    try:
        st = backup.status(access)
        rc, schedule, err = backup.default_runner(access, privileged(backup.schedule_argv(), access.user))
        if rc != 0:
            raise FediError(f"systemctl show failed: {err.strip()[:200]}")
        rc, text, _ = backup.default_runner(access, privileged(backup.last_verify_argv(), access.user))
    except FediError as exc:
        return None, None, exc.line(), None, exc.line()
    record, verify_error = None, ""
    if rc == 0 and text.strip():
        try:
            record = json.loads(text)
        except ValueError:
            verify_error = f"{backup.LAST_VERIFY} is not JSON"
    return schedule, st, "", record, verify_error


def _funding(outputs: Any, cost: Any, backend: str | None) -> tuple[Any, str]:
    """(DuesReport or None without [coop], the cost's basis)."""
    from provision.billing.dues import compute_dues, parse_coop
    from provision.config import load_config
    from provision.errors import FediError

    raw = load_config().get("coop")  # checked when read: a bad [coop] is one line before this
    if not raw:
        return None, ""
    settings = parse_coop(raw)
    basis, total = f"stack {outputs.stack}", cost
    if outputs.provider == "hetzner":  # the co-op's whole bill, as `fedi coop dues` figures it
        from provision.billing import pricing
        from provision.cli.coop import _account

        try:
            _, members, _ = _account(backend)
        except FediError:
            members = []
        if members:
            total, basis = pricing.bill(members, False, None, False), f"the co-op's {len(members)} stack(s)"
    if total is None:  # the stack's outputs do not say what it runs: nothing to weigh the dues against
        return None, basis
    return compute_dues(settings, total), basis


def judge(name: str, prov: Any, backend: str | None, *, result: Any = None) -> Any:
    """The covenant.Report of one stack. ``result``: `fedi status`'s lifecycle result, when it has one."""
    from provision.access import covenant
    from provision.config import load_config
    from provision.lifecycle import stack as lifecycle

    if result is None:
        result = lifecycle.status(name, prov, check_health=False, config=load_config())
    outputs = result.outputs
    flags = fix_flags(outputs, backend)
    schedule, st, backup_error, record, verify_error = _server_facts(outputs.access)
    report, basis = _funding(outputs, result.cost, backend)
    own = covenant.own_keys()
    items = (
        covenant.backups_item(schedule, st, flags, backup_error),
        covenant.access_item(outputs.extra.get("admins") or [], outputs.extra.get("kits") or [], own, flags),
        covenant.verify_item(record, time.time(), flags, verify_error),
        covenant.funding_item(report, basis),
    )
    return covenant.Report(name, outputs.extra.get("domain") or "", items)


def status_lines(name: str, prov: Any, backend: str | None, result: Any, data: dict, *, server: bool) -> list[str]:
    """The Covenant's checked promises (provision.access.covenant) under `fedi status`; without the server
    (--no-health) only what the stack's record says: whether the instance depends on one person."""
    from provision.access import covenant

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


def covenant_cmd(
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """Check the Mastodon Server Covenant's operational promises: daily backups, another person with
    emergency access, a restore verified within 30 days, funding for three months. Every stack without
    --domain/--stack. Each failing item names the command that fixes it; exit 11 when one fails."""
    from provision.access import covenant
    from provision.cli.target import all_stacks, resolve
    from provision.config import load_config

    if stack or domain or load_config().get("domain"):
        targets = [resolve(stack, domain, provider, backend)]
    else:
        targets = [(s.stack, prov) for prov, s in all_stacks(provider, backend) if not s.ephemeral]
    reports = [judge(name, prov, backend) for name, prov in targets]
    data = {"ok": all(r.ok for r in reports), "stacks": [r.as_dict() for r in reports]}
    emit(data, as_json, "\n\n".join(r.text() for r in reports) or "no stacks")
    if not data["ok"]:
        raise typer.Exit(covenant.EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("covenant")(covenant_cmd)
