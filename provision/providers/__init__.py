"""The provider contract: the few operations `up`, `resize`, `down`, `status` and `ssh` need from a
place that runs servers. Hetzner (the Pulumi stack, ``providers/hetzner/``) and local (a booted
Debian 13 machine under systemd-nspawn, ``providers/local/``) implement it.

Typed data in and out; a provider never configures the server itself (that is ``remote`` + the
playbook, the same for every provider) and never prints: it reports through ``progress``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from provision.model import Bundle, ObjectStorage, Progress, StackOutputs
from provision.sizing import Sizing
from provision.spec import InstanceSpec


@dataclass(frozen=True)
class PlannedResource:
    type: str  # e.g. hcloud:index/server:Server, or local:machine
    name: str  # logical name
    action: str  # create | update | replace | delete | same
    properties: dict[str, Any] = field(default_factory=dict)  # key properties, no secrets


@dataclass(frozen=True)
class Plan:
    stack: str
    provider: str
    resources: tuple[PlannedResource, ...]
    offline: bool = False  # True: computed under Pulumi's mocks (no token or no Pulumi CLI)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StackSummary:
    stack: str
    provider: str
    software: str
    size: str
    domain: str
    created: str  # ISO 8601 UTC
    ephemeral: bool = False
    expires: str = ""  # ISO 8601 UTC, ephemeral stacks only
    production: bool = False
    location: str = ""  # fsn1 | nbg1 | hel1 (Hetzner); "" where it does not apply


class Provider(ABC):
    """What every provider implements, with these exact signatures (a missing method fails at construction)."""

    name: str
    backend: (
        str | None
    )  # the state backend URL; an s3:// one is shared, and locked there (provision/lifecycle/s3lock.py)

    @abstractmethod
    def preflight(self, spec: InstanceSpec) -> None:
        """Raise MissingPrerequisite (one clear line) for anything missing; create nothing."""

    @abstractmethod
    def storage(self, spec: InstanceSpec) -> ObjectStorage | None:
        """The stack's object storage (buckets and keys), or None where media stay on the server's disk."""

    @abstractmethod
    def secrets(self, spec: InstanceSpec, *, store: bool = True) -> dict[str, str]:
        """The stack's app secrets: generated once, stored encrypted, the same on every later call.
        With ``store=False`` (a plan) nothing is stored: a new stack's secrets are generated and dropped."""

    @abstractmethod
    def stored_secrets(self, stack: str) -> dict[str, str]:
        """The secrets an existing stack keeps; ProvisionError if there are none. Creates nothing."""

    @abstractmethod
    def plan(self, spec: InstanceSpec, sizing: Sizing, bundle: Bundle) -> Plan: ...

    @abstractmethod
    def up(self, spec: InstanceSpec, sizing: Sizing, bundle: Bundle, progress: Progress) -> StackOutputs:
        """Create or converge the host; return how to reach it (pinned host key included)."""

    @abstractmethod
    def resize(self, spec: InstanceSpec, old: Sizing, new: Sizing, progress: Progress) -> StackOutputs: ...

    @abstractmethod
    def down(self, stack: str, progress: Progress, *, purge_backups: bool = False, unprotect: bool = False) -> None:
        """Destroy the stack; its backups stay unless ``purge_backups``. ``unprotect`` lifts deletion
        protection first where the provider has it."""

    @abstractmethod
    def outputs(self, stack: str) -> StackOutputs:
        """The outputs of an existing stack; ProvisionError if there is none."""

    @abstractmethod
    def stacks(self) -> list[StackSummary]: ...

    @abstractmethod
    def stored_domain(self, stack: str) -> str | None:
        """The domain the stack was made for; None if there is no such stack, '' if it does not say."""

    @abstractmethod
    def adopt_secrets(self, stack: str, old: dict[str, str]) -> None:
        """Keep another stack's app secrets (not its SSH keys) after its data was restored here."""

    @abstractmethod
    def set_admins(self, stack: str, records: list[dict[str, Any]]) -> None:
        """Keep the stack's admins (provision.access.admins records); ``outputs(stack).extra["admins"]`` reads them
        back, and every converge hands them to the playbook."""

    @abstractmethod
    def set_kits(self, stack: str, records: list[dict[str, Any]]) -> None:
        """Keep the record of the stack's exported recovery kits (when, trustee key fingerprints,
        threshold; provision.access.covenant.kit_record, no secret) the way set_admins keeps the admins;
        ``outputs(stack).extra["kits"]`` reads them back."""

    @abstractmethod
    def kit_state(self, stack: str, backend: str | None) -> dict[str, Any]:
        """What a recovery kit carries of the stack's state, besides the passphrase (reads only):
        ``backend`` (the state backend URL, None where the state is on this computer), ``backend_env``
        (what an s3:// backend reads from the environment), ``document`` and ``machine`` (a state and
        machine record kept on this computer, else None)."""

    @abstractmethod
    def check_kit(self, stack: str, state: dict[str, Any], store: Any, passphrase_here: str | None) -> None:
        """Before `fedi kit open` writes anything: raise UsageError if this computer cannot take the
        kit's stack (``store`` is this computer's StateStore, ``passphrase_here`` its passphrase or None)."""

    @abstractmethod
    def install_kit(self, stack: str, state: dict[str, Any], store: Any) -> None:
        """Write what :meth:`kit_state` gathered onto this computer (after :meth:`check_kit` passed)."""

    @abstractmethod
    def pin_host_key(self, stack: str, host_key: str) -> None:
        """Store the server's new host key (the playbook rotates the one-time bootstrap key), together
        with the server's identity: a server created later (after a loss) is not trusted with it."""

    @abstractmethod
    def kept_backups(self, spec: InstanceSpec) -> KeptBackups | None:
        """Before `up` creates a stack: the repository an earlier stack of this domain left, or None.
        Reads only; creates nothing."""

    @abstractmethod
    def set_aside_backups(self, spec: InstanceSpec, kept: KeptBackups, progress: Progress) -> KeptBackups:
        """Move that repository aside (renamed, never deleted) so the new stack starts a fresh one;
        return where it is now."""

    @abstractmethod
    def renew_bootstrap_key(self, spec: InstanceSpec, progress: Progress) -> bool:
        """Before `up`: if the stack's configured server is gone (lost with its disk, deleted), so that
        `up` creates a new one, give that one a fresh one-time bootstrap host key and drop the lost
        server's pin. True if it did. Never creates or changes a server."""


@dataclass(frozen=True)
class KeptBackups:
    """A backup repository an earlier stack of the same domain left behind (`fedi down` keeps them)."""

    where: str  # where it is, for the admin: a directory on this computer, or s3://bucket
    repository: str  # RESTIC_REPOSITORY as the new server would reach it


def get_provider(name: str, **options: Any) -> Provider:
    """``hetzner`` or ``local``; imported lazily so the other provider's SDKs are never loaded."""
    module = importlib.import_module(f"provision.providers.{name}.provider")
    return module.provider(**options)
