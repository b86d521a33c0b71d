"""Which provider holds a stack: the one answer every command that names a stack uses.

A stack named by ``--stack``/``--domain`` lives in the provider that holds it, as ``fedi stacks``
sees them: a stack made with ``--provider local`` needs no ``--provider local`` afterwards. Rules:

1. ``--provider`` given: that provider, asked nothing more.
2. Exactly one provider holds the stack: that one.
3. Several hold it: ``provider`` in fedi.toml decides if it is one of them; otherwise it is a usage
   error naming them (pass ``--provider``).
4. None holds it (or none could be asked): fedi.toml's ``provider``, else hetzner; that provider
   then says in one line that the stack does not exist, or what it needs to look.

A provider that cannot be asked (Hetzner without the Pulumi CLI, or with its backend out of reach)
does not hold the stack as far as this rule knows; if no other provider does, rule 4 lets it give its
own one-line reason. A provider holds a stack when it stores it (``stored_domain`` is not None).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provision.errors import MissingPrerequisite, ProvisionError, UsageError
from provision.spec import PROVIDERS

ASK_ORDER = ("local", "hetzner")  # the cheap question first


def provider_for(
    name_in: Callable[[Any], str],
    explicit: str | None,
    configured: str | None,
    make: Callable[[str], Any],
) -> Any:
    """The provider object that holds the stack (see the module docstring for the rules).

    ``name_in(provider)`` is the stack's name there (a stack made under an older naming rule keeps its
    name), ``explicit`` is ``--provider``, ``configured`` fedi.toml's ``provider``, ``make(name)`` builds
    a provider (with the backend the command was given).
    """
    for name in (explicit, configured):
        if name is not None and name not in PROVIDERS:
            raise UsageError(f"provider: {name!r} is not one of {', '.join(PROVIDERS)}")
    if explicit:
        return make(explicit)
    holders: list[tuple[Any, str]] = []
    for name in ASK_ORDER:
        try:
            prov = make(name)
            stack = name_in(prov)
            if prov.stored_domain(stack) is not None and prov.name not in [p.name for p, _ in holders]:
                holders.append((prov, stack))
        except (MissingPrerequisite, ProvisionError):
            continue  # cannot be asked here (no Pulumi CLI, a backend out of reach): rule 4 lets it say why
    if len(holders) == 1:
        return holders[0][0]
    if len(holders) > 1:
        chosen = [p for p, _ in holders if p.name == configured]
        if chosen:
            return chosen[0]
        names = " and ".join(p.name for p, _ in holders)
        choices = " or ".join(f"--provider {p.name}" for p, _ in holders)
        raise UsageError(f"stack: {holders[0][1]!r} exists in {names}", hint=f"pass {choices}")
    return make(configured or "hetzner")
