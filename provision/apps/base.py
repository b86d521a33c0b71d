"""The app catalog's shape: one frozen :class:`App` per app fedi deploys, and the one lookup.

Everything that differs between apps lives in its module (``provision/apps/<app>.py``): pinned versions
and images, loopback ports, media path, container uid, the services it needs (Valkey, RabbitMQ), the
upload limit, its bundle files, its tuning per size, its secrets, its API health check and its funding
announcement. Shared code asks the catalog (``get(spec.app)``) and never names an app; templates
(``templates/<app>/``, ``templates/caddy/<app>.caddy.j2``) and start tasks (``ansible/roles/<app>``) stay
per app. A new app is one module that calls :func:`register`, its templates and its start tasks.

Nothing here imports the rest of ``provision`` at module level, so every shared module may import it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SERVICES = frozenset({"valkey", "rabbitmq"})  # what the host playbook can run beside Postgres for an app


@dataclass(frozen=True)
class BundleFile:
    role: str  # manifest role ("compose", "app-config", ...)
    template: str  # path under templates/, or "" for files written straight from secrets
    path: str  # path relative to the bundle directory
    private: bool = False  # holds a secret: 0600
    mode: int = 0o644  # mode when not private
    verbatim: str = ""  # name of a generated value written as-is (key files), instead of a template


class Tuning(ABC):
    """An app's tuning for one size (a frozen dataclass in the app's module); what shared sizing asks of it."""

    @abstractmethod
    def memory_mb(self) -> dict[str, int]:
        """What each app process is configured to use, by component (MB): the keys of the memory budget."""

    @abstractmethod
    def db_connections(self) -> int:
        """Postgres connections the app's pools open at most."""

    def queue_memory_mb(self) -> int:
        """RabbitMQ's memory high watermark in MB (0 = RabbitMQ is not deployed)."""
        return 0

    def extra_ports(self, ports: Mapping[str, int]) -> dict[str, Any]:
        """Ports derived from the tuning (more processes of one kind), given the app's base ports."""
        return {}


@dataclass(frozen=True)
class Cleanup:
    """What the server's fedi-cleanup timer runs for the app (templates/backup/fedi-cleanup.sh.j2 writes it)."""

    doc: tuple[str, ...]  # its lines of the script's header (what runs, and why)
    services: str = ""  # the compose services to run in, first running one wins (bash words); '' = none
    commands: tuple[str, ...] = ()  # bash lines run in that service (``in_app CMD...``)
    nothing: str = ""  # why there is nothing to run, when ``services`` is ''


@dataclass(frozen=True)
class AdminAccount:
    """How an admin gets an account with a role in the app (``fedi admins add --app-role``).

    ``commands`` gets the ``docker compose run`` prefix for ``service``, the login name (already checked
    against ``[a-z][a-z0-9_-]*``), the e-mail and the role, and returns the commands fedi runs as root on
    the server; each reads a throwaway password on stdin where the app needs one, never in argv."""

    service: str  # the compose service the app's own commands run in
    commands: Callable[[list[str], str, str, str], list[list[str]]]
    refused: Mapping[str, str] = field(default_factory=dict)  # role -> why the app cannot give it
    # Non-empty when the account must exist already (the admin signs up first): the last command prints
    # the name when it found the account, and this says what to do when it did not.
    signup_first: str = ""


class CheckFailed(Exception):
    """A health check's failure, with its one-line reason (raised by an app's API check)."""


def field_of(data: Any, key: str) -> Any:
    """``data[key]`` when ``data`` is a JSON object, else None (for checks of untrusted answers)."""
    return data.get(key) if isinstance(data, dict) else None


@dataclass(frozen=True)
class App:
    name: str  # the app fedi deploys: database name and user, templates/<name>/, ansible role, nodeinfo
    software: tuple[str, ...]  # what `--software` accepts for it (first: the usual name)
    note: str  # said when the app is asked for by another name ('' = nothing to say)
    version: str  # the app's own version (manifest.json, `fedi status`)
    pins: Mapping[str, str]  # every pinned component version by name (templates' headers)
    images: Mapping[str, str]  # compose service role -> image ref (exact tags, never `latest`)
    ports: Mapping[str, int]  # loopback ports its processes listen on
    media_path: str  # URL path of uploads kept on the data volume (https://<domain>/<media_path>)
    uid: str  # uid:gid its containers write data as (data_dir subdirectories are owned by it)
    services: frozenset[str]  # of SERVICES
    upload_limit_mb: int  # the largest request body the proxy accepts (matches the app's own limit)
    bundle_files: tuple[BundleFile, ...]  # its files in the bundle, beside the shared ones
    tuning: Mapping[str, Tuning]  # size -> its tuning
    secrets: Callable[[], dict[str, str]]  # its own secrets, generated once per stack
    nodeinfo_name: str  # nodeinfo software.name
    actor_path: str  # where it serves the instance actor (with an ActivityPub Accept header)
    api_check: Callable[[Callable[[str], Any], str], str]  # (GET-JSON by path, domain) -> detail; CheckFailed
    announce: Callable[..., str]  # (spec, report, provider, outputs, *, base_url, verify, run) -> what was done
    cleanup: Cleanup  # cached remote media and caches removed on a schedule
    admin_account: AdminAccount  # an admin's own account and role in the app
    resolves_admin_email: bool = False  # its admin creation refuses an address whose domain does not resolve


CATALOG: dict[str, App] = {}


def register(app: App) -> App:
    """Add ``app`` to the catalog (each app module calls this once, at import)."""
    if app.name in CATALOG:
        raise ValueError(f"app {app.name!r} is registered twice")
    if not app.services <= SERVICES:
        raise ValueError(f"app {app.name!r} asks for unknown services {sorted(app.services - SERVICES)}")
    taken = {s for other in CATALOG.values() for s in other.software}
    if taken & set(app.software):
        raise ValueError(f"app {app.name!r} claims software names already taken: {sorted(taken & set(app.software))}")
    CATALOG[app.name] = app
    return app


def software_names() -> tuple[str, ...]:
    """Every name `--software` accepts, in catalog order."""
    return tuple(s for app in CATALOG.values() for s in app.software)


def app_name(software_or_app: str) -> str:
    """The app deployed for a software name (``kbin`` -> ``mbin``); an app's own name is returned as is."""
    for app in CATALOG.values():
        if software_or_app in app.software:
            return app.name
    return software_or_app


def get(software_or_app: str) -> App:
    """The catalog entry for an app or a software name; ValueError for one nobody registered."""
    name = app_name(software_or_app)
    if name not in CATALOG:
        raise ValueError(f"unknown app {software_or_app!r}")
    return CATALOG[name]


def all_apps() -> tuple[App, ...]:
    return tuple(CATALOG.values())
