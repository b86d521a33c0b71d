"""The local provider: one booted Debian 13 machine per stack on this host (systemd-nspawn).

`up` builds or reuses the cached image, unpacks it for the stack, applies the bundle's cloud-init
bootstrap (admin user, client key, pre-generated host key) and boots it in its own network namespace;
from there the same remote + playbook + health path as Hetzner runs against the machine's address.
Secrets and the stack's record live encrypted in ``provision.state`` under ``<state_dir>/local/<stack>``.

Where this host can reach the image registries (and has ``nft``), the machine gets internet access
through the host (forwarding + masquerade in the host's own ``ip fedi-<short>`` table) and the app's
containers start. Where it cannot, the machine stays offline, ``start_app`` is False and `up` says
exactly that; everything else runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provision import paths
from provision.errors import MissingPrerequisite, ProvisionError, UsageError
from provision.model import Bundle, HostAccess, ObjectStorage, StackOutputs
from provision.providers import KeptBackups, Plan, PlannedResource, Progress, Provider, StackSummary
from provision.sizing import Sizing
from provision.spec import InstanceSpec
from provision.timestamps import utc_iso, utc_stamp

APT_PACKAGES = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap", "zstd": "zstd", "ip": "iproute2"}
CADDY_ROOT_CA = "var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"
NEED_DISK_MB = {"state": 4096, "cache": 1536}  # unpacked rootfs + data; the image while it is built
APP_NOTE = "the app's containers are not started: their images cannot be pulled from this machine"
NFT_NOTE = "this host reaches the image registries but has no nft: `apt-get install nftables` to let the machine pull"


def install_argv(packages: list[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def free_mb(path: Path) -> int:
    usage = shutil.disk_usage(path)
    return usage.free // (1 << 20)


def open_hint(domain: str, address: str, ca: Path) -> str:
    """How to open the instance from this host. Names under .localhost resolve to loopback in browsers
    and curl whatever /etc/hosts says, so curl is pointed at the machine; for a browser, use a domain
    outside .localhost (e.g. social.fedi.test) and an /etc/hosts line."""
    return (
        f"curl --cacert {ca} --resolve {domain}:443:{address} https://{domain}/"
        f"  (browser: add '{address} {domain}' to /etc/hosts, for a domain outside .localhost)"
    )


def trust_hint(stack: str, ca: Path) -> str:
    """How to make this host trust the machine's Caddy internal CA."""
    return f"cp {ca} /usr/local/share/ca-certificates/fedi-{stack}.crt && update-ca-certificates"


class LocalProvider(Provider):
    name = "local"
    backend = None  # its state stays on this computer

    def __init__(
        self,
        yes: bool = False,
        confirm: Callable[[str], bool] | None = None,
        boot_timeout: float = 180,
        internet: bool | None = None,
    ):
        self.yes = yes  # install missing host packages without asking
        self.confirm = confirm  # asks the user (None: never ask; the missing piece is reported)
        self.boot_timeout = boot_timeout
        self.internet = internet  # give the machine internet access; None = when the registries answer

    # -- state --

    def _store(self):
        from provision.state import StateStore

        return StateStore()

    def _doc(self, stack: str) -> dict[str, Any]:
        return self._store().load(stack)

    # -- recovery kits: the whole state and the machine record travel in the kit --

    def kit_state(self, stack: str, backend: str | None) -> dict[str, Any]:
        from dataclasses import asdict

        from provision.providers.local import machine

        record = machine.load(stack)
        found = {"record": asdict(record) if record else None, "server_id": machine.server_id(stack)}
        return {"backend": None, "backend_env": {}, "document": self._doc(stack), "machine": found}

    def check_kit(self, stack: str, state: dict[str, Any], store: Any, passphrase_here: str | None) -> None:
        if store.exists(stack):
            raise UsageError(f"this computer already has a local stack {stack}", hint="open the kit in a fresh HOME")

    def install_kit(self, stack: str, state: dict[str, Any], store: Any) -> None:
        from provision.providers.local import machine

        store.save(stack, state["document"])  # sealed with this computer's passphrase
        found = state.get("machine") or {}
        directory = machine.machine_dir(stack)
        if found.get("record"):
            paths.write_atomic(directory / "machine.json", json.dumps(found["record"], indent=1) + "\n", mode=0o644)
        if found.get("server_id"):
            paths.write_private(directory / "bootstrapped", found["server_id"] + "\n")

    # -- before anything is created --

    def missing_tools(self) -> list[str]:
        return [tool for tool in APT_PACKAGES if shutil.which(tool) is None]

    def preflight(self, spec: InstanceSpec) -> None:
        if os.geteuid() != 0:
            raise MissingPrerequisite("the local provider needs root (it boots a machine with systemd-nspawn)")
        missing = self.missing_tools()
        if missing:
            packages = sorted({APT_PACKAGES[t] for t in missing})
            command = " ".join(install_argv(packages))
            if not (self.yes or (self.confirm and self.confirm(f"Install {', '.join(packages)} with apt-get?"))):
                raise MissingPrerequisite(
                    f"{', '.join(missing)} not installed", hint=f"run `{command}`, or re-run with --yes to let fedi"
                )
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            result = subprocess.run(install_argv(packages), capture_output=True, text=True, env=env)
            if result.returncode != 0 or self.missing_tools():
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise MissingPrerequisite(f"`{command}` failed: {last}")
        from provision.providers.local import image, machine

        machine.check_host()
        need_cache = 0 if image.image_path().exists() else NEED_DISK_MB["cache"]
        for path, need in ((paths.state_dir(), NEED_DISK_MB["state"]), (image.image_dir(), need_cache)):
            path.mkdir(parents=True, exist_ok=True)
            if need and free_mb(path) < need:
                raise MissingPrerequisite(
                    f"not enough disk for the local machine: {free_mb(path)} MB free in {path}, {need} MB needed"
                )

    def storage(self, spec: InstanceSpec) -> ObjectStorage | None:
        return None  # media stay on the machine's disk

    def secrets(self, spec: InstanceSpec, *, store: bool = True) -> dict[str, str]:
        """Stored secrets, else fresh ones (stored encrypted unless ``store`` is False: `plan` stores nothing)."""
        store_ = self._store()
        if store_.exists(spec.stack_name):
            doc = store_.load(spec.stack_name)
            if doc.get("secrets"):
                return doc["secrets"]
        from provision.render.secrets import generate_secrets

        fresh = generate_secrets(spec)
        if store:
            store_.save(spec.stack_name, {**self._spec_fields(spec), "secrets": fresh, "created": utc_iso()})
        return fresh

    def stored_domain(self, stack: str) -> str | None:
        """The domain the stack was made for; None if there is no such stack, '' if it does not say."""
        from provision.providers.local import machine

        store = self._store()
        try:
            exists = store.exists(stack)
        except UsageError:  # not a name a local stack can have
            return None
        if exists:
            return str(self._doc(stack).get("domain") or "")
        return "" if machine.load(stack) is not None else None

    def stored_secrets(self, stack: str) -> dict[str, str]:
        """The secrets the stack keeps (read only: never generates or stores anything)."""
        store = self._store()
        found = store.load(stack).get("secrets") if store.exists(stack) else None
        if not found:
            raise ProvisionError(f"the local stack {stack!r} keeps no secrets", hint="see `fedi stacks`")
        return found

    @staticmethod
    def _spec_fields(spec: InstanceSpec) -> dict[str, Any]:
        expires = ""
        if spec.ephemeral and spec.ttl_hours:
            expires = utc_iso(time.time() + spec.ttl_hours * 3600)
        return {
            "software": spec.software,
            "size": spec.size,
            "domain": spec.domain,
            "production": spec.production,
            "ephemeral": spec.ephemeral,
            "expires": expires,
        }

    def plan(self, spec: InstanceSpec, sizing: Sizing, bundle: Bundle) -> Plan:
        from provision.providers.local import image, machine

        name = spec.stack_name
        record = machine.load(name)
        cpus, memory = float(sizing.server.vcpus), sizing.server.ram_mb
        if record is None:
            action = "create"
        elif not machine.running(record):
            action = "update"  # boot it again
        else:
            action = "same" if (record.cpus, record.memory_mb) == (cpus, memory) else "update"
        props = {"cpus": cpus, "memory_mb": memory, "image": image.image_path().name}
        if record:
            props["address"] = record.address
        resources = [
            PlannedResource("local:image", "debian13", "same" if image.image_path().exists() else "create"),
            PlannedResource("local:network", f"fedi-{name}", "same" if record else "create"),
            PlannedResource("local:machine", name, action, props),
        ]
        notes = ("the app's containers start only if this host can reach the image registries",)
        return Plan(name, self.name, tuple(resources), notes=notes)

    # -- create, change, destroy --

    def up(self, spec: InstanceSpec, sizing: Sizing, bundle: Bundle, progress: Progress) -> StackOutputs:
        from provision.providers.local import bootstrap, image, machine

        name = spec.stack_name
        secrets = self.secrets(spec)
        self._store().update(name, **self._spec_fields(spec))
        image.ensure_image(progress)
        boot = bootstrap.parse_cloud_init(bundle.cloud_init)
        machine.create(name, boot, progress)
        cpus, memory = float(sizing.server.vcpus), sizing.server.ram_mb
        record = machine.load(name)
        if record is not None and machine.running(record) and (record.cpus, record.memory_mb) != (cpus, memory):
            machine.resize(name, cpus, memory)
        internet = self._internet(progress)
        booted = machine.boot(name, progress, cpus=cpus, memory_mb=memory, timeout=self.boot_timeout, internet=internet)
        for item in booted.unenforced:
            progress(f"  not enforced here: {item}")
        start_app = booted.extra.get("internet") == "yes"
        doc = self._doc(name)
        changes: dict[str, Any] = {"machine": name, "address": booted.address, "start_app": start_app}
        if not doc.get("bootstrap_host_key") or not self._pinned(doc, machine.server_id(name)):
            changes["bootstrap_host_key"] = bundle.host_public_key  # what a machine that was never configured shows
        self._store().update(name, **changes)
        self._client_key_file(name, secrets["ssh_client_key"])
        progress("  the machine pulls the app's images through this host" if start_app else f"  {APP_NOTE}")
        return self.outputs(name)

    def _internet(self, progress: Progress) -> bool:
        from provision.providers.local import net

        if self.internet is not None:
            return self.internet
        if not net.internet_reachable():
            return False
        if shutil.which("nft") is None:
            progress(f"  {NFT_NOTE}")
            return False
        return True

    def resize(self, spec: InstanceSpec, old: Sizing, new: Sizing, progress: Progress) -> StackOutputs:
        from provision.providers.local import machine

        name = spec.stack_name
        if machine.load(name) is None:
            raise ProvisionError(f"there is no local machine for {name!r}", hint="fedi up --provider local first")
        cpus, memory = float(new.server.vcpus), new.server.ram_mb
        progress(f"{name}: {old.server.vcpus} -> {new.server.vcpus:g} CPUs, {old.server.ram_mb} -> {memory} MB")
        resized = machine.resize(name, cpus, memory)
        for item in resized.unenforced:
            progress(f"  not enforced here: {item}")
        self._store().update(name, size=spec.size)
        return self.outputs(name)

    def down(self, stack: str, progress: Progress, *, purge_backups: bool = False, unprotect: bool = False) -> None:
        """Stop and delete the machine; its local backups stay unless ``purge_backups``. A local machine
        has no deletion protection: ``unprotect`` changes nothing."""
        from provision.providers.local import machine

        store = self._store()
        if not store.exists(stack) and machine.load(stack) is None:
            raise ProvisionError(f"there is no local stack {stack!r}", hint="see `fedi stacks`")
        machine.destroy(stack, progress, purge_backups=purge_backups)
        (machine.machine_dir(stack) / "id_ed25519").unlink(missing_ok=True)
        store.delete(stack)
        directory = machine.machine_dir(stack)
        if purge_backups or not any(directory.glob("backups/*")):
            shutil.rmtree(directory, ignore_errors=True)
        else:
            progress(f"kept the local backups in {directory / 'backups'} (use --purge-backups to delete them)")

    # -- reading --

    def outputs(self, stack: str) -> StackOutputs:
        from provision.providers.local import machine

        doc = self._doc(stack)
        record = machine.load(stack)
        key = self._client_key_file(stack, doc["secrets"]["ssh_client_key"]) if doc.get("secrets") else None
        address = record.address if record else doc.get("address", "")
        extra: dict[str, Any] = {
            k: doc.get(k) for k in ("software", "size", "domain", "production", "ephemeral", "expires", "created")
        }
        start_app = bool(doc.get("start_app", False))
        extra.update(admins=list(doc.get("admins") or []), kits=list(doc.get("kits") or []))
        extra.update(start_app=start_app, url=f"https://{doc.get('domain', '')}/")
        if not start_app:
            extra["app_note"] = APP_NOTE
        if record is not None:
            ca = record.rootfs / CADDY_ROOT_CA
            extra.update(
                state="running" if machine.running(record) else "stopped",
                rootfs=str(record.rootfs),
                backups=str(record.backups),
                console_log=str(Path(record.directory) / "console.log"),
                cpus=record.cpus,
                memory_mb=record.memory_mb,
                unenforced=list(record.unenforced),
                ca_bundle=str(ca) if ca.exists() else "",
                open_hint=open_hint(doc.get("domain", ""), address, ca),
                trust_hint=trust_hint(stack, ca),
            )
        else:
            extra["state"] = "absent"
        return StackOutputs(
            stack=stack,
            provider=self.name,
            access=HostAccess(
                address=address,
                port=22,
                user="fedi",
                host_key=self._pinned(doc, machine.server_id(stack)) or doc.get("bootstrap_host_key", ""),
                client_key=key,
            ),
            ipv4=address,
            server_id=stack if record else "",
            server_type=f"local {record.cpus:g} CPU / {record.memory_mb} MB" if record else "",
            extra=extra,
        )

    def _client_key_file(self, stack: str, private_key: str) -> Path:
        from provision.providers.local import machine

        path = machine.machine_dir(stack) / "id_ed25519"
        if not path.exists() or path.read_text() != private_key:
            paths.write_private(path, private_key)
        return path

    def stacks(self) -> list[StackSummary]:
        store = self._store()
        found = []
        for name in store.stacks():
            doc = store.load(name)
            found.append(
                StackSummary(
                    stack=name,
                    provider=self.name,
                    software=doc.get("software", ""),
                    size=doc.get("size", ""),
                    domain=doc.get("domain", ""),
                    created=doc.get("created", ""),
                    ephemeral=bool(doc.get("ephemeral")),
                    expires=doc.get("expires", ""),
                    production=bool(doc.get("production")),
                )
            )
        return found

    def adopt_secrets(self, stack: str, old: dict[str, str]) -> None:
        """Keep another stack's app secrets from now on (after its data was restored here)."""
        from provision.render.secrets import carried_over

        store = self._store()
        store.update(stack, secrets=carried_over(old, store.load(stack).get("secrets") or {}))

    def set_admins(self, stack: str, records: list[dict[str, Any]]) -> None:
        """Keep the stack's admins (provision.access.admins records) in its encrypted state."""
        self._doc(stack)  # ProvisionError if there is no such stack
        self._store().update(stack, admins=list(records))

    def set_kits(self, stack: str, records: list[dict[str, Any]]) -> None:
        """Keep the record of the stack's exported recovery kits in its encrypted state."""
        self._doc(stack)
        self._store().update(stack, kits=list(records))

    def pin_host_key(self, stack: str, host_key: str) -> None:
        """Pin the key together with the machine that showed it: a later machine is another server."""
        from provision.providers.local import machine

        if not host_key.strip():
            raise ProvisionError("refusing to pin an empty host key")
        self._store().update(stack, host_key=host_key.strip(), host_key_server=machine.server_id(stack))

    @staticmethod
    def _pinned(doc: dict[str, Any], server: str) -> str:
        """The pinned key if it was pinned for ``server`` (a pin from before identities counts)."""
        key = doc.get("host_key") or ""
        return key if key and doc.get("host_key_server", server) == server else ""

    def kept_backups(self, spec: InstanceSpec) -> KeptBackups | None:
        """The restic repository a `fedi down` of this domain kept in the machine's backups directory."""
        from provision.lifecycle.backup import LOCAL_REPOSITORY
        from provision.providers.local import machine

        repo = machine.machine_dir(spec.stack_name) / "backups" / Path(LOCAL_REPOSITORY).name
        if self._store().exists(spec.stack_name) or not (repo / "config").is_file():
            return None
        return KeptBackups(where=str(repo), repository=LOCAL_REPOSITORY)

    def set_aside_backups(self, spec: InstanceSpec, kept: KeptBackups, progress: Progress) -> KeptBackups:
        """Rename the repository within the backups directory: the new machine still sees it there."""
        repo = Path(kept.where)
        aside = repo.with_name(f"{repo.name}-before-{utc_stamp()}")
        repo.rename(aside)
        moved = KeptBackups(where=str(aside), repository=str(Path(kept.repository).with_name(aside.name)))
        progress(
            f"moved the earlier backups aside to {moved.where} (never deleted; the server sees them at "
            f"{moved.repository})"
        )
        return moved

    def renew_bootstrap_key(self, spec: InstanceSpec, progress: Progress) -> bool:
        """The machine and its disk are gone but the stack is kept: the machine `up` creates is a new
        server. Give it a fresh one-time host key (the lost one's was readable on it) and forget the pin."""
        from provision.providers.local import machine
        from provision.render.keys import ssh_ed25519_keypair

        store = self._store()
        name = spec.stack_name
        if not store.exists(name) or machine.server_id(name):
            return False
        doc = store.load(name)
        if not doc.get("host_key") or not doc.get("secrets"):
            return False  # never configured: its bootstrap key was never used
        private, public = ssh_ed25519_keypair(f"root@{spec.domain}")
        secrets = {**doc["secrets"], "ssh_host_ed25519_key": private, "ssh_host_ed25519_key_pub": public}
        store.update(name, secrets=secrets, bootstrap_host_key=public, host_key="", host_key_server="")
        progress(f"the machine of {name} is gone: the new one gets a fresh one-time host key")
        return True


def provider(**options: Any) -> LocalProvider:
    return LocalProvider(**options)
