"""Which stack a command names, and the provider that holds it: one resolver for every command.

``--stack`` or ``--domain`` (else fedi.toml's domain) name the stack; ``--provider`` and ``--backend``
say where to look, and without ``--provider`` the provider that holds the stack is found
(provision.lifecycle.resolve).
"""

from __future__ import annotations

import secrets as _secrets
from typing import Any

from provision.cli.output import note
from provision.config import load_config
from provision.errors import MissingPrerequisite, UsageError
from provision.spec import validate_domain


def make_provider(name: str, backend: str | None = None, yes: bool = False) -> Any:
    """The provider by name; tests replace this to hand in the test engine.

    ``yes`` lets the local provider's preflight install systemd-container/debootstrap without asking.
    """
    from provision.config import state_backend
    from provision.providers import get_provider

    backend = backend or state_backend(load_config())  # --backend, else [state] backend in fedi.toml
    return get_provider(name, backend=backend) if name == "hetzner" else get_provider(name, yes=yes)


def resolve(
    stack: str | None, domain: str | None, provider: str | None, backend: str | None = None, yes: bool = False
) -> tuple[str, Any]:
    """(stack name, the provider that holds it): the one answer to "which stack" for every command
    that names one (the rules are in provision.lifecycle.resolve)."""
    from provision.lifecycle.resolve import provider_for

    configured = load_config().get("provider")
    make = lambda n: make_provider(n, backend, yes=yes)  # noqa: E731 - one line, named for the call below
    prov = provider_for(lambda p: stack_name(stack, domain, p), provider, configured, make)
    return stack_name(stack, domain, prov), prov


def hold_stack(name: str, command: str, prov: Any) -> None:
    """Hold the stack's lock until the command ends (StackBusy at once if another run changes it); in a
    shared s3:// backend, the lock there too."""
    from typer._click.globals import get_current_context  # typer vendors click (see provision/cli/app.py)

    from provision.lifecycle import stacklock

    get_current_context().with_resource(stacklock.hold(name, command, prov.backend))  # released when the command ends


def stack_target(stack: str | None, domain: str | None, provider: str | None, backend: str | None, *, hold: str = ""):
    """(stack name, provider object, its outputs) for the stack the flags name; with ``hold``, that
    command holds the stack's lock first (StackBusy at once if another run is changing the stack), so the
    outputs it reads are the ones it will change."""
    name, prov = resolve(stack, domain, provider, backend)
    if hold:
        hold_stack(name, hold, prov)
    return name, prov, prov.outputs(name)


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
