"""`fedi smoke` and `fedi sweep`: throwaway stacks for tests and CI, and the clean-up that guards them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provision.cli.options import Backend, Json, Location, Provider, Size, Software, spec_from
from provision.cli.output import emit, note, progress_printer
from provision.errors import UsageError


def smoke_cmd(
    software: Software = None,
    size: Size = None,
    domain: Annotated[
        str | None, typer.Option(help="parent domain for the throwaway name, e.g. smoke.example.org")
    ] = None,
    location: Location = None,
    provider: Provider = None,
    backend: Backend = None,
    timeout: Annotated[str, typer.Option(help="give up (and tear down) after this long: 45m, 1h")] = "45m",
    junit: Annotated[Path | None, typer.Option(help="write a JUnit XML report here (for CI)")] = None,
    as_json: Json = False,
) -> None:
    """Up an ephemeral stack, check it (TLS, redirect, nodeinfo, API, webfinger, instance actor), tear it down.

    Exit 0 when every check ran and passed; 1 when a step failed; 6 when nothing failed but checks were
    skipped (the app's containers did not start)."""
    from provision.cli.target import ephemeral_domain, make_provider
    from provision.lifecycle import smoke
    from provision.spec import parse_ttl

    if not domain:
        raise UsageError("domain: is required: the parent domain for throwaway names, e.g. smoke.example.org")
    limit_h = parse_ttl(timeout)
    ttl = f"{max(1.0, limit_h * 2):g}h"  # `fedi sweep` may remove it once twice the timeout has passed
    spec = spec_from(software, size, ephemeral_domain(domain), location, None, provider, ephemeral=True, ttl=ttl)
    prov = make_provider(spec.provider, backend)
    note(f"smoke: {spec.software}/{spec.size} on {spec.domain} (stack {spec.stack_name}), timeout {timeout}")
    report = smoke.run(spec, prov, progress_printer(), timeout=limit_h * 3600)
    if junit:
        junit.write_text(report.junit(), encoding="utf-8")
    emit(report.as_dict(), as_json, report.text())
    if not report.ok:  # 1: a step failed; 6: nothing failed but the app's checks could not run
        raise typer.Exit(report.exit_code)


def sweep_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be destroyed; destroy nothing")] = False,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """Destroy ephemeral stacks past their expiry, and orphaned ephemeral resources at Hetzner.

    Without --provider, every provider is swept; one that cannot be asked (no Pulumi CLI, no token)
    is one line, and the others are still swept."""
    from provision.cli.target import make_provider, provider_name
    from provision.config import load_config
    from provision.errors import MissingPrerequisite
    from provision.lifecycle import sweep

    config = load_config()  # its [hooks] and [coop] hear of every stack swept
    items = []
    for name in [provider_name(provider)] if provider else ["local", "hetzner"]:
        try:
            prov = make_provider(name, backend)
            items += sweep.sweep(prov, dry_run=dry_run, progress=progress_printer(), config=config)
        except MissingPrerequisite as missing:
            if provider:
                raise
            note(f"{name} not swept: {missing.line()}")
    lines = [f"{i.action:<14} {i.kind:<12} {i.name} {i.id}".rstrip() for i in items] or ["nothing to sweep"]
    emit([i.as_dict() for i in items], as_json, "\n".join(lines))
    if any(i.action.startswith("failed") for i in items):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("smoke")(smoke_cmd)
    app.command("sweep")(sweep_cmd)
