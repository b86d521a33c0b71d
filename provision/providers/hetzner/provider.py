"""The Hetzner Cloud provider: the stack program run by the Pulumi engine (or, offline, under mocks).

What it keeps in the state backend per stack (see provision/providers/hetzner/engine.py): the app secrets, the
StackConfig of the last `up`, the pinned host key. Object Storage credentials come from
$FEDI_S3_ACCESS_KEY / $FEDI_S3_SECRET_KEY (created in the Hetzner console); the DNS zone is looked up
at Hetzner's DNS (the Cloud API's zones) with the token: found -> rrsets are managed, else fedi
prints the records to create.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from provision import paths
from provision.errors import MissingPrerequisite, ProvisionError, UsageError
from provision.model import S3_ACCESS_ENV, S3_SECRET_ENV, Bundle, HostAccess, ObjectStorage, StackOutputs
from provision.providers import KeptBackups, Plan, Progress, Provider, StackSummary
from provision.providers.hetzner.api import Api
from provision.sizing import Sizing
from provision.spec import InstanceSpec
from provision.timestamps import as_iso, utc_stamp
from stacks.config import StackConfig, build_config, config_from_json, config_to_json, guess_zone, storage_for

RESIZE_NOTE = (
    "changing the server type powers the server off, changes it and powers it on: expect 1-3 minutes without service"
)


RECORDS = ("admins", "kits")  # lists kept in the stack's config, read back into outputs.extra


def zone_candidates(domain: str) -> list[str]:
    """social.example.org -> [social.example.org, example.org] (longest first, at least two labels)."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def find_zone(domain: str, token: str, *, base_url: str | None = None, client: Any = None) -> str:
    """The Hetzner DNS zone (Cloud API /zones) that holds ``domain``, or '' if it is elsewhere."""
    import httpx

    with Api(token, url=base_url, client=client) as api:
        for candidate in zone_candidates(domain):
            try:
                reply = api.get("/zones", params={"name": candidate})
            except httpx.HTTPError as exc:
                raise ProvisionError(f"cannot reach the Hetzner API to look up the DNS zone: {exc}") from None
            if reply.status_code == 401:
                raise ProvisionError("Hetzner refused the token", hint="HCLOUD_TOKEN must be a Read & Write token")
            if reply.status_code != 200:
                raise ProvisionError(f"the Hetzner API answered {reply.status_code} to a DNS zone look-up")
            zones = reply.json().get("zones", [])
            if any(z.get("name") == candidate for z in zones):
                return candidate
        return ""


def dns_records(outputs: dict[str, Any], domain: str, admin_email: str) -> list[tuple[str, str, str]]:
    """The records to create by hand when the zone is elsewhere: (name, type, value)."""
    from stacks.hetzner import caa_records

    fake = dataclasses.make_dataclass("C", ["admin_email"])(admin_email)
    records = [(domain, "A", outputs.get("ipv4", "")), (domain, "AAAA", outputs.get("ipv6", ""))]
    return records + [(domain, "CAA", value) for value in caa_records(fake)]


def resolve_a(domain: str) -> set[str]:
    import socket

    try:
        return {info[4][0] for info in socket.getaddrinfo(domain, 443, socket.AF_INET, socket.SOCK_STREAM)}
    except (OSError, UnicodeError):  # no answer yet, or a name the resolver cannot even encode
        return set()


def wait_for_dns(
    domain: str,
    ipv4: str,
    progress: Progress,
    *,
    timeout: float = 1800,
    interval: float = 20,
    resolve=resolve_a,
    sleep=time.sleep,
    clock=time.monotonic,
) -> None:
    """Poll (bounded) until ``domain`` resolves to ``ipv4``: Let's Encrypt needs it before Caddy can get a cert."""
    deadline = clock() + timeout
    while True:
        seen = resolve(domain)
        if ipv4 in seen:
            progress(f"DNS: {domain} resolves to {ipv4}")
            return
        if clock() >= deadline:
            raise ProvisionError(
                f"{domain} does not resolve to {ipv4} after {timeout / 60:.0f} minutes (it resolves to "
                f"{', '.join(sorted(seen)) or 'nothing'})",
                hint="create the records printed above at your DNS provider, then re-run `fedi up`",
            )
        progress(f"DNS: waiting for {domain} -> {ipv4} (now: {', '.join(sorted(seen)) or 'nothing'})")
        sleep(interval)


def server_exists(server_id: str, token: str, *, base_url: str | None = None, client: Any = None) -> bool:
    """Whether Hetzner still has the server (GET /servers/{id}); only a 404 answers no."""
    import httpx

    with Api(token, url=base_url, client=client) as api:
        try:
            reply = api.get(f"/servers/{int(server_id)}")
        except httpx.HTTPError as exc:
            raise ProvisionError(f"cannot reach the Hetzner API to look up server {server_id}: {exc}") from None
        if reply.status_code == 404:
            return False
        if reply.status_code == 401:
            raise ProvisionError("Hetzner refused the token", hint="HCLOUD_TOKEN must be a Read & Write token")
        if reply.status_code != 200:
            raise ProvisionError(f"the Hetzner API answered {reply.status_code} to a server look-up")
        return True


class HetznerProvider(Provider):
    name = "hetzner"

    def __init__(self, engine: Any = None, backend: str | None = None, exists: Any = None, s3: Any = None):
        if engine is None:
            from provision.providers.hetzner.engine import PulumiEngine

            engine = PulumiEngine(backend)
            backend = engine.backend
        self.backend = backend  # the state backend URL (None: the given engine's own, e.g. the offline one)
        self.engine = engine
        self.exists = exists  # server id -> does Hetzner still have it (None: ask its API; offline: never)
        self.s3 = s3  # s3.Bucket -> client (None: Object Storage itself; offline: never asked)
        self._refresh = False  # the next `up` refreshes first: the server was found gone

    # -- before anything is created --

    def preflight(self, spec: InstanceSpec) -> None:
        self.engine.preflight()
        missing = [env for env in (S3_ACCESS_ENV, S3_SECRET_ENV) if not os.environ.get(env)]
        if missing and not self.engine.offline:
            raise MissingPrerequisite(
                f"{' and '.join(missing)} not set: create Object Storage credentials in the Hetzner console "
                "(Object Storage > Security credentials) and export them"
            )

    def storage(self, spec: InstanceSpec) -> ObjectStorage:
        key, secret = os.environ.get(S3_ACCESS_ENV, ""), os.environ.get(S3_SECRET_ENV, "")
        return storage_for(spec, spec.stack_name, key, secret)

    def secrets(self, spec: InstanceSpec, *, store: bool = True) -> dict[str, str]:
        """Stored secrets, else fresh ones (stored encrypted unless ``store`` is False: `plan` stores nothing)."""
        stored = self.engine.read_config(spec.stack_name, "secrets")
        if stored:
            return json.loads(stored)
        from provision.render.secrets import generate_secrets

        fresh = generate_secrets(spec)
        if store:
            self.engine.write_config(spec.stack_name, "secrets", json.dumps(fresh, sort_keys=True), secret=True)
            self.engine.write_config(spec.stack_name, "domain", spec.domain, secret=False)
        return fresh

    def stored_domain(self, stack: str) -> str | None:
        """The domain the stack was made for; None if there is no such stack, '' if it does not say."""
        if stack not in self.engine.stack_names():
            return None
        domain = self.engine.read_config(stack, "domain")
        if domain:
            return domain
        cfg = self.stored_config(stack)
        if cfg is not None:
            return cfg.domain
        try:
            return str(self.engine.outputs(stack).get("domain") or "")
        except ProvisionError:  # in the backend with nothing provisioned
            return ""

    def stored_secrets(self, stack: str) -> dict[str, str]:
        """The secrets the stack keeps in the backend (read only: never creates a stack or a secret)."""
        stored = self.engine.read_config(stack, "secrets")
        if not stored:
            raise ProvisionError(f"stack {stack!r} keeps no secrets in the state backend", hint="see `fedi stacks`")
        return json.loads(stored)

    def adopt_secrets(self, stack: str, old: dict[str, str]) -> None:
        """Keep another stack's app secrets from now on (after its data was restored here)."""
        from provision.render.secrets import carried_over

        own = json.loads(self.engine.read_config(stack, "secrets") or "{}")
        self.engine.write_config(stack, "secrets", json.dumps(carried_over(old, own), sort_keys=True), secret=True)

    def dns_zone(self, spec: InstanceSpec) -> tuple[str, str]:
        """(zone, note). Offline the registrable domain is assumed to be at Hetzner and the note says so."""
        if self.engine.offline:
            zone = guess_zone(spec.domain)
            return zone, f"offline: assumed the DNS zone {zone} is managed at Hetzner"
        zone = find_zone(spec.domain, os.environ.get("HCLOUD_TOKEN", ""))
        note = "" if zone else f"the DNS zone of {spec.domain} is not at Hetzner: fedi prints the records to create"
        return zone, note

    # -- the stack config --

    def stored_config(self, stack: str) -> StackConfig | None:
        text = self.engine.read_config(stack, "stackconfig")
        return config_from_json(text) if text else None

    def _config(self, spec: InstanceSpec, sizing: Sizing, bundle: Bundle, secrets: dict[str, str]) -> StackConfig:
        previous = self.stored_config(spec.stack_name)
        zone, _ = self.dns_zone(spec)
        return build_config(
            spec,
            sizing,
            bundle,
            stack=spec.stack_name,
            ssh_public_key=secrets["ssh_client_key_pub"],
            storage=self.storage(spec),
            dns_zone=zone,
            volume_gb=previous.volume_gb if previous else None,  # the volume never shrinks
            created=previous.created if previous else None,
        )

    def _apply(self, cfg: StackConfig, progress: Progress) -> dict[str, Any]:
        self.engine.write_config(cfg.stack, "stackconfig", config_to_json(cfg), secret=True)
        if self._refresh:  # Pulumi's state still lists the lost server: read what is really there first
            self._refresh = False
            return self.engine.up(cfg, progress, refresh=True)
        return self.engine.up(cfg, progress)

    # -- the Provider protocol --

    def plan(self, spec: InstanceSpec, sizing: Sizing, bundle: Bundle, secrets: dict[str, str] | None = None) -> Plan:
        secrets = secrets or self.secrets(spec, store=False)
        cfg = self._config(spec, sizing, bundle, secrets)
        resources = self.engine.preview(cfg, lambda _line: None)
        zone_note = self.dns_zone(spec)[1]
        notes = [zone_note] if zone_note else []
        if self.engine.offline:
            notes.insert(0, "offline plan: the real stack program ran under Pulumi's mocks (no token or no Pulumi CLI)")
        if not (os.environ.get(S3_ACCESS_ENV) and os.environ.get(S3_SECRET_ENV)):
            notes.append(f"`up` needs Object Storage credentials in ${S3_ACCESS_ENV} and ${S3_SECRET_ENV}")
        if cfg.volume_gb > sizing.volume_gb:
            notes.append(f"the volume stays at {cfg.volume_gb} GB (volumes never shrink)")
        return Plan(cfg.stack, self.name, tuple(resources), offline=self.engine.offline, notes=tuple(notes))

    def up(self, spec: InstanceSpec, sizing: Sizing, bundle: Bundle, progress: Progress) -> StackOutputs:
        secrets = self.secrets(spec)
        cfg = self._config(spec, sizing, bundle, secrets)
        self._apply(cfg, progress)
        if not cfg.dns_zone:
            outputs = self.engine.outputs(cfg.stack)
            for name, rtype, value in dns_records(outputs, spec.domain, spec.admin_email):
                progress(f"DNS: create {name} {rtype} {value}")
            if not self.engine.offline:
                wait_for_dns(spec.domain, outputs.get("ipv4", ""), progress)
        return self.outputs(cfg.stack)

    def resize(self, spec: InstanceSpec, old: Sizing, new: Sizing, progress: Progress) -> StackOutputs:
        cfg = self.stored_config(spec.stack_name)
        if cfg is None:
            raise ProvisionError(f"stack {spec.stack_name!r} does not exist in the state backend")
        volume = max(cfg.volume_gb, new.volume_gb)
        if new.volume_gb < cfg.volume_gb:
            progress(f"the volume stays at {cfg.volume_gb} GB: volumes never shrink")
        if new.server.name != cfg.server_type:
            progress(f"{cfg.server_type} -> {new.server.name}: {RESIZE_NOTE}")
        resized = dataclasses.replace(cfg, server_type=new.server.name, size=new.size, volume_gb=volume)
        started = time.monotonic()
        self._apply(resized, progress)
        progress(f"resized in {time.monotonic() - started:.0f}s")
        return self.outputs(cfg.stack)

    def down(self, stack: str, progress: Progress, *, purge_backups: bool = False, unprotect: bool = False) -> None:
        cfg = self.stored_config(stack)
        if cfg is None:
            if stack in self.engine.stack_names():  # secrets stored, nothing provisioned yet: forget the stack
                self.engine.destroy(stack, progress)
                return
            raise ProvisionError(f"stack {stack!r} does not exist in the state backend", hint="see `fedi stacks`")
        if cfg.production and not unprotect:
            raise ProvisionError(
                f"{cfg.domain} is a production stack with delete protection on",
                hint="re-run with --force-unprotect to lift the protection and destroy it",
            )
        if cfg.production or purge_backups:
            progress("lifting delete protection" if cfg.production else "allowing the backups bucket to be deleted")
            self._apply(dataclasses.replace(cfg, production=False, purge_backups=purge_backups), progress)
        if cfg.storage and not purge_backups:
            progress(f"keeping the backups bucket {cfg.storage.backups_bucket} (use --purge-backups to delete it)")
        self.engine.destroy(stack, progress)
        key_dir = paths.state_dir() / "keys" / stack
        for f in key_dir.glob("*"):
            f.unlink()
        if key_dir.is_dir():
            key_dir.rmdir()

    def outputs(self, stack: str) -> StackOutputs:
        out = self.engine.outputs(stack)
        if not out:  # in the backend, but nothing was ever provisioned (e.g. only its secrets)
            raise ProvisionError(f"stack {stack!r} has no resources yet", hint="run `fedi up`")
        cfg = self.stored_config(stack)
        pinned = self.engine.read_config(stack, "host_key") or ""
        pinned_for = self.engine.read_config(stack, "host_key_server")
        if pinned_for is not None and pinned_for != str(out.get("server_id", "")):
            pinned = ""  # pinned for a server that is gone: this one shows its bootstrap key
        secrets_text = self.engine.read_config(stack, "secrets")
        client_key = None
        if secrets_text:
            client_key = self._client_key_file(stack, json.loads(secrets_text)["ssh_client_key"])
        bootstrap = cfg.host_public_key if cfg else ""
        storage = cfg.storage if cfg else None
        return StackOutputs(
            stack=stack,
            provider=self.name,
            access=HostAccess(address=out.get("ipv4", ""), host_key=pinned or bootstrap, client_key=client_key),
            ipv4=out.get("ipv4", ""),
            ipv6=out.get("ipv6", ""),
            server_id=str(out.get("server_id", "")),
            server_type=out.get("server_type", ""),
            storage=storage,
            extra={**_record(out), **{k: json.loads(self.engine.read_config(stack, k) or "[]") for k in RECORDS}},
        )

    def _client_key_file(self, stack: str, private_key: str) -> Path:
        path = paths.state_dir() / "keys" / stack / "id_ed25519"
        if not path.exists() or path.read_text() != private_key:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            paths.write_private(path, private_key)
        return path

    def stacks(self) -> list[StackSummary]:
        found = []
        for name in self.engine.stack_names():
            try:
                out = self.engine.outputs(name)
            except ProvisionError:
                continue
            if not out:
                continue
            found.append(
                StackSummary(
                    stack=name,
                    provider=self.name,
                    software=out.get("software", ""),
                    size=out.get("size", ""),
                    domain=out.get("domain", ""),
                    created=as_iso(out.get("created")),
                    ephemeral=bool(out.get("ephemeral")),
                    expires=as_iso(out.get("expires")) if out.get("ephemeral") else "",
                    production=bool(out.get("production")),
                    location=out.get("location", ""),
                )
            )
        return found

    def set_admins(self, stack: str, records: list[dict[str, Any]]) -> None:
        """Keep the stack's admins (provision.access.admins records) in the stack's config (no secrets in them)."""
        self.outputs(stack)  # ProvisionError if the stack has no server
        self.engine.write_config(stack, "admins", json.dumps(list(records), sort_keys=True), secret=False)

    def set_kits(self, stack: str, records: list[dict[str, Any]]) -> None:
        """Keep the record of the stack's exported recovery kits in the stack's config (no secrets in it)."""
        self.outputs(stack)
        self.engine.write_config(stack, "kits", json.dumps(list(records), sort_keys=True), secret=False)

    # -- recovery kits: the state stays in its backend; the kit names it and carries its passphrase --

    def kit_state(self, stack: str, backend: str | None) -> dict[str, Any]:
        from provision.config import load_config, state_backend
        from provision.providers.hetzner.engine import BACKEND_ENV, default_backend

        backend = backend or state_backend(load_config()) or default_backend()
        env = {k: os.environ[k] for k in BACKEND_ENV if os.environ.get(k)} if backend.startswith("s3://") else {}
        return {"backend": backend, "backend_env": env, "document": None, "machine": None}

    def check_kit(self, stack: str, state: dict[str, Any], store: Any, passphrase_here: str | None) -> None:
        if passphrase_here is not None and passphrase_here != state["passphrase"]:
            raise UsageError(
                f"this computer's state passphrase is not the one of stack {stack}'s backend",
                hint="open the kit as another user, or with FEDI_CONFIG_DIR pointing at an empty directory",
            )

    def install_kit(self, stack: str, state: dict[str, Any], store: Any) -> None:
        return None  # the backend holds the state; the passphrase file is written by the caller

    def pin_host_key(self, stack: str, host_key: str) -> None:
        """Pin the key together with the server id that showed it: a re-created server is another one."""
        server_id = str(self.engine.outputs(stack).get("server_id", ""))
        self.engine.write_config(stack, "host_key", host_key.strip(), secret=False)
        self.engine.write_config(stack, "host_key_server", server_id, secret=False)

    def _backups_bucket(self, spec: InstanceSpec):
        from provision.providers.hetzner import s3

        storage = self.storage(spec)
        bucket = s3.Bucket(
            storage.endpoint, storage.region, storage.backups_bucket, storage.access_key, storage.secret_key
        )
        client = (self.s3 or s3.S3)(bucket)
        return client, f"s3:{storage.endpoint.rstrip('/')}/{storage.backups_bucket}"

    def kept_backups(self, spec: InstanceSpec) -> KeptBackups | None:
        """A restic repository (its ``config`` object) at the root of the domain's backups bucket, which
        `fedi down` keeps. Offline, or without credentials, nothing can be asked: None."""
        if not (os.environ.get(S3_ACCESS_ENV) and os.environ.get(S3_SECRET_ENV)):
            return None
        if self.engine.offline and self.s3 is None:
            return None
        client, repository = self._backups_bucket(spec)
        if not client.exists("config"):
            return None
        return KeptBackups(where=f"s3://{client.bucket.name}", repository=repository)

    def set_aside_backups(self, spec: InstanceSpec, kept: KeptBackups, progress: Progress) -> KeptBackups:
        """Move the repository's objects under a prefix of the same bucket (copied, then the originals
        removed): restic at the bucket's root starts afresh; the old one is a repository of its own."""
        client, repository = self._backups_bucket(spec)
        prefix = f"restic-before-{utc_stamp()}/"
        keys = [k for k in client.list_keys() if not k.startswith("restic-before-")]
        count = client.move_prefix(keys, prefix)
        moved = KeptBackups(where=f"s3://{client.bucket.name}/{prefix}", repository=f"{repository}/{prefix[:-1]}")
        progress(f"moved the earlier backups aside to {moved.where} ({count} objects, never deleted; "
                 f"RESTIC_REPOSITORY={moved.repository})")  # fmt: skip
        return moved

    def renew_bootstrap_key(self, spec: InstanceSpec, progress: Progress) -> bool:
        """The stack's server was deleted or lost (Hetzner answers 404 for its id): the next `up` refreshes
        and creates a new server, which gets a fresh one-time host key (the lost one's user-data was
        readable on it); the lost server's pin is dropped."""
        from provision.render.keys import ssh_ed25519_keypair

        stack = spec.stack_name
        exists = self.exists
        if exists is None:
            if self.engine.offline:
                return False
            exists = lambda sid: server_exists(sid, os.environ.get("HCLOUD_TOKEN", ""))  # noqa: E731
        server_id = str(self.engine.outputs(stack).get("server_id", ""))
        stored = self.engine.read_config(stack, "secrets")
        if not server_id or not stored or not self.engine.read_config(stack, "host_key"):
            return False
        if exists(server_id):
            return False
        private, public = ssh_ed25519_keypair(f"root@{spec.domain}")
        secrets = {**json.loads(stored), "ssh_host_ed25519_key": private, "ssh_host_ed25519_key_pub": public}
        self.engine.write_config(stack, "secrets", json.dumps(secrets, sort_keys=True), secret=True)
        self.engine.write_config(stack, "host_key", "", secret=False)
        self._refresh = True
        progress(f"server {server_id} of {stack} is gone: a new one is created with a fresh one-time host key")
        return True


def _record(out: dict[str, Any]) -> dict[str, Any]:
    """The stack's exports as every provider records them: ``created``/``expires`` in ISO 8601 UTC
    (the stack program exports unix seconds, the form its labels need)."""
    extra = {k: v for k, v in out.items() if k not in ("ipv4", "ipv6", "server_id", "server_type")}
    for key in ("created", "expires"):
        if key in extra:
            extra[key] = as_iso(extra[key])
    return extra


def provider(**options: Any) -> HetznerProvider:
    return HetznerProvider(**options)
