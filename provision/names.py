"""Names derived from a domain: the stack, and the cloud resources of the stack. The one source of the rule.

The stack name is an injective function of the (validated, ASCII, lower-case) domain: '-' becomes
'--' and '.' becomes '-', so ``chat.social-club.example`` (chat-social--club-example) and
``chat-social.club.example`` (chat--social-club-example) never share a stack. It can be read back:
in a validated hostname no label starts or ends with '-' and no label is empty, so a run of hyphens
in the name is one '.' (odd: exactly one) or hyphens (even).

Limits: Pulumi accepts stack names of at most 100 of [A-Za-z0-9_.-]; Hetzner accepts resource names
of at most 63 characters (the server's name is a hostname label: alphanumeric at both ends); the
local provider keeps a stack under a directory named after it (at most 63). A name that would be
longer is cut and ends in ``---`` and a digest of the whole: a run of exactly three hyphens never
occurs in an uncut name, so a cut name never equals an uncut one, and a cut name never ends with '-'.

Stacks made before this rule (every character outside [a-z0-9-] became '-', uncut) keep their
names: :func:`resolve_stack` finds them by the domain they store.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from provision.errors import UsageError, ValidationError

NAME_MAX = 63  # Hetzner resource names, hostname labels, the local provider's stack directories
PULUMI_STACK_MAX = 100  # Pulumi's limit for stack names
DIGEST_LEN = 8  # hex characters of sha256 appended to a cut name
CUT_MARK = "---"  # separates the kept head of a cut name from its digest

_DOMAIN_CHARS = re.compile(r"^[a-z0-9.-]+$")
_PULUMI_STACK = re.compile(rf"^[A-Za-z0-9_.-]{{1,{PULUMI_STACK_MAX}}}$")
# A stack the local provider keeps (a directory named after it; any name stack_name gives, or --stack).
LOCAL_STACK = re.compile(rf"^[a-z0-9][a-z0-9-]{{0,{NAME_MAX - 1}}}$")
_HETZNER_NAME = re.compile(rf"^[a-z0-9](?:[a-z0-9-]{{0,{NAME_MAX - 2}}}[a-z0-9])?$")
# What the stack program names after the stack (hcloud resource names are unique per project and kind).
RESOURCE_SUFFIXES = ("operator", "fw", "ipv4", "ipv6", "data")


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LEN]


def cut(name: str, limit: int, whole: str | None = None) -> str:
    """``name`` if it fits in ``limit``, else its head + ``---`` + the digest of ``whole`` (default: name)."""
    if len(name) <= limit:
        return name
    head = name[: limit - len(CUT_MARK) - DIGEST_LEN].rstrip("-")
    return f"{head}{CUT_MARK}{digest(whole or name)}"


def escape(domain: str) -> str:
    """The injective, uncut form: '-' -> '--', '.' -> '-'."""
    lowered = domain.lower()
    if not _DOMAIN_CHARS.match(lowered):
        raise ValidationError("domain", f"{domain!r} is not an ASCII hostname (validate it first)")
    return lowered.replace("-", "--").replace(".", "-")


def stack_name(domain: str) -> str:
    """social.example.org -> social-example-org; chat.social-club.example -> chat-social--club-example."""
    return cut(escape(domain), NAME_MAX, domain.lower())


def legacy_stack_name(domain: str) -> str:
    """The name stacks got before the injective rule (kept only to find those stacks again)."""
    return re.sub(r"[^a-z0-9-]", "-", domain.lower())


def server_name(stack: str) -> str:
    return cut(stack, NAME_MAX)


def resource_name(stack: str, what: str) -> str:
    """``<stack>-<what>``, or, when that is too long, the stack cut with a digest, then ``-<what>``."""
    full = f"{stack}-{what}"
    if len(full) <= NAME_MAX:
        return full
    return f"{cut(stack, NAME_MAX - len(what) - 1)}-{what}"


def bucket_names(stack: str, domain: str) -> tuple[str, str]:
    """(media, backups). S3 names are global: a per-domain digest avoids clashes and needs no state.
    Unchanged since the first release (a new bucket name would replace the bucket and its data)."""
    suffix = digest(domain)
    base = stack[:40].strip("-")
    return f"{base}-media-{suffix}", f"{base}-backups-{suffix}"


def hetzner_names(stack: str, domain: str) -> dict[str, str]:
    """Every name the Hetzner stack creates, by role."""
    names = {"server": server_name(stack)}
    names.update({what: resource_name(stack, what) for what in RESOURCE_SUFFIXES})
    names["media_bucket"], names["backups_bucket"] = bucket_names(stack, domain)
    return names


def check_stack(stack: str, domain: str = "") -> None:
    """Refuse (before anything is created) a stack whose own name or resource names break a limit."""
    if not _PULUMI_STACK.match(stack):
        raise ValidationError(
            "stack", f"{stack!r} is not a valid stack name (at most {PULUMI_STACK_MAX} of A-Z a-z 0-9 _ . -)"
        )
    for role, name in hetzner_names(stack, domain or stack).items():
        if not _HETZNER_NAME.match(name):
            raise ValidationError("stack", f"the {role} name {name!r} is not a valid Hetzner resource name")


def resolve_stack(domain: str, stored_domain: Callable[[str], str | None]) -> str:
    """The stack that holds ``domain``: its name under the current rule, or a stack made under the old
    rule that stores this very domain. ``stored_domain(stack)`` is None for no such stack, '' when the
    stack does not say which domain it serves."""
    name = stack_name(domain)
    if stored_domain(name) is not None:
        return name
    old = legacy_stack_name(domain)
    if old != name and stored_domain(old) == domain.lower():
        return old
    return name


def settle(spec: Any, provider: Any) -> Any:
    """The spec with its stack resolved and checked, before anything is created: the stack that holds
    its domain (see :func:`resolve_stack`), every name within its limits, and a refusal when that stack
    stores another domain (``up`` would take over its secrets, state, server and DNS)."""
    stack = spec.stack or resolve_stack(spec.domain, provider.stored_domain)
    check_stack(stack, spec.domain)
    stored = provider.stored_domain(stack)
    if stored and stored != spec.domain:
        raise UsageError(
            f"domain: the stack {stack!r} holds {stored}, not {spec.domain}; nothing was changed",
            hint="see `fedi stacks`",
        )
    return replace(spec, stack=stack)
