"""Which stacks share one Hetzner account, and what is known of each (see provision/billing/account.py).

The account is every Hetzner stack in the state backend (ephemeral ones only when named), or the stacks
that ``[account] stacks`` in fedi.toml names. ``[account] stored_gb`` gives what each stack's buckets
hold (from the Hetzner console); with every stack's figure the shared lines are shared by stored bytes::

    [account]
    stacks = ["social-example-coop", "forum-example-coop"]
    stored_gb = { "social-example-coop" = 300, "forum-example-coop" = 100 }

Local stacks cost nothing and are never part of an account.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from provision.errors import ValidationError

ACCOUNT_KEYS = ("stacks", "stored_gb")
GB = 10**9


@dataclass(frozen=True)
class Member:
    """One stack of the account, as the state backend (or a plan) knows it."""

    stack: str  # stack name
    size: str  # tiny | small | medium | large
    app: str  # mastodon | lemmy | mbin
    location: str  # fsn1 | nbg1 | hel1
    stored_bytes: int | None = None  # what its buckets hold, when known
    planned: bool = False  # not in the backend yet: the stack `fedi cost` was asked about


@dataclass(frozen=True)
class AccountSettings:
    """The [account] table of fedi.toml, validated."""

    stacks: tuple[str, ...] = ()  # the account's stacks; empty = every Hetzner stack in the backend
    stored_gb: dict[str, Decimal] = field(default_factory=dict)  # object storage held per stack, GB


def parse_account(raw: Any) -> AccountSettings:
    """Validate ``[account]``; errors name the bad key's path (``account/stored_gb/x: ...``)."""
    if raw is None:
        return AccountSettings()
    if not isinstance(raw, dict):
        raise ValidationError("account", "must be a table with stacks and stored_gb")
    unknown = sorted(set(raw) - set(ACCOUNT_KEYS))
    if unknown:
        raise ValidationError(f"account/{unknown[0]}", f"unknown key (known: {', '.join(ACCOUNT_KEYS)})")
    stacks = raw.get("stacks", [])
    if not isinstance(stacks, list) or not all(isinstance(s, str) and s for s in stacks):
        raise ValidationError("account/stacks", "must be a list of stack names")
    stored = raw.get("stored_gb", {})
    if not isinstance(stored, dict):
        raise ValidationError("account/stored_gb", 'must be a table of stack = GB, e.g. { "social-example-org" = 120 }')
    parsed: dict[str, Decimal] = {}
    for name, value in stored.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValidationError(f"account/stored_gb/{name}", f"{value!r} must be a number of GB, 0 or more")
        parsed[name] = Decimal(str(value))
    return AccountSettings(tuple(stacks), parsed)


def members_from(summaries: list[Any], settings: AccountSettings) -> list[Member]:
    """The account's stacks from the backend's :class:`provision.providers.StackSummary` list.

    Only Hetzner stacks that say what they run count; ephemeral ones (billed by the hour, swept within
    hours) only when ``[account] stacks`` names them. ``[account] stacks`` sets the list (a named stack
    missing from the backend is an error: the bill would be short without saying so).
    """
    from provision import apps

    found = {
        s.stack: s
        for s in summaries
        if getattr(s, "provider", "hetzner") == "hetzner" and getattr(s, "size", "") and getattr(s, "software", "")
    }
    names = list(settings.stacks) or sorted(n for n, s in found.items() if not getattr(s, "ephemeral", False))
    missing = [n for n in names if n not in found]
    if missing:
        raise ValidationError("account/stacks", f"{missing[0]!r} is not a Hetzner stack in the state backend")
    return [
        Member(
            n,
            found[n].size,
            apps.app_name(found[n].software),
            getattr(found[n], "location", "") or "fsn1",
            _stored_bytes(settings, n),
        )
        for n in names
    ]


def _stored_bytes(settings: AccountSettings, stack: str) -> int | None:
    gb = settings.stored_gb.get(stack)
    return None if gb is None else int(gb * GB)


def planned_member(stack: str, size: str, app: str, location: str, settings: AccountSettings) -> Member:
    return Member(stack, size, app, location, _stored_bytes(settings, stack), planned=True)


def list_members(provider: Any, settings: AccountSettings) -> tuple[list[Member], str]:
    """The account's stacks from ``provider`` (the Hetzner provider of the state backend).

    Returns ``(members, "")``, or ``([], why)`` when the backend cannot be read here (no Pulumi CLI, no
    passphrase): the caller then prices a stack alone and says why.
    """
    from provision.errors import MissingPrerequisite, ProvisionError

    try:
        summaries = provider.stacks()
    except (MissingPrerequisite, ProvisionError) as exc:
        return [], exc.line()
    return members_from(summaries, settings), ""


def with_planned(members: list[Member], planned: Member) -> list[Member]:
    """``members`` with the stack `fedi cost` was asked about: in place of its namesake, else added."""
    if any(m.stack == planned.stack for m in members):
        same = Member(planned.stack, planned.size, planned.app, planned.location, planned.stored_bytes)
        return [same if m.stack == planned.stack else m for m in members]
    return [*members, planned]
