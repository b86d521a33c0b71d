"""Run the real stack program in-process under Pulumi's mocks, recording every resource it declares.

This is how `fedi plan` works without a token or a Pulumi CLI, and what the test engine uses: the
program is the same code `up` runs; only the cloud's answers (ids, addresses, device paths) are
made up, from documentation ranges (203.0.113.0/24, 2001:db8::/32) so they can never be mistaken
for real ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.timestamps import utc_iso

# Inputs that hold secrets: never recorded, never printed.
REDACTED = {"userData", "user_data", "minioUser", "minioPassword", "minioAccessKey", "minioSecretKey"}


@dataclass(frozen=True)
class Recorded:
    type: str  # e.g. hcloud:index/server:Server
    name: str  # logical name
    id: str
    inputs: dict[str, Any]  # as declared (secrets redacted)


@dataclass
class OfflineRun:
    resources: list[Recorded] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, suffix: str) -> list[Recorded]:
        return [r for r in self.resources if r.type.endswith(suffix)]

    def one(self, suffix: str) -> Recorded:
        found = self.of_type(suffix)
        if len(found) != 1:
            raise LookupError(f"expected one {suffix}, found {len(found)}")
        return found[0]


def _computed(typ: str, rid: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What the cloud would add to a resource's state (documentation-range placeholders)."""
    n = int(rid) % 250 + 1
    if typ == "hcloud:index/primaryIp:PrimaryIp":
        if inputs.get("type") == "ipv6":
            return {"ipAddress": f"2001:db8:{n:x}::/64", "ipNetwork": f"2001:db8:{n:x}::/64"}
        return {"ipAddress": f"203.0.113.{n}"}
    if typ == "hcloud:index/server:Server":
        return {
            "ipv4Address": f"203.0.113.{n}",
            "ipv6Address": f"2001:db8:{n:x}::1",
            "ipv6Network": f"2001:db8:{n:x}::/64",
            "status": "running",
        }
    if typ == "hcloud:index/volume:Volume":
        return {"linuxDevice": f"/dev/disk/by-id/scsi-0HC_Volume_{rid}"}
    return {}


def redact(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: ("[secret]" if k in REDACTED else v) for k, v in inputs.items()}


def mocks_class():
    import pulumi

    class RecordingMocks(pulumi.runtime.Mocks):
        """Pulumi mocks that answer like Hetzner would and remember what was declared."""

        def __init__(self) -> None:
            self.recorded: list[Recorded] = []

        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            # stable per resource (not per registration order), as a cloud id is across updates
            digest = hashlib.sha256(f"{args.typ}::{args.name}".encode()).hexdigest()
            rid = str(1_000_000 + int(digest[:8], 16) % 9_000_000)
            state = dict(args.inputs)
            state.update(_computed(args.typ, rid, args.inputs))
            self.recorded.append(Recorded(args.typ, args.name, rid, redact(dict(args.inputs))))
            return rid, state

        def call(self, args: pulumi.runtime.MockCallArgs):
            return {}, None

    return RecordingMocks


def _close_event_loops() -> None:
    """Close the loops Pulumi's runtime left behind (its worker threads each make one in
    ``_sync_await``). Left to the garbage collector at exit they can print "Exception ignored ...
    Invalid file descriptor" tracebacks. Pulumi makes fresh loops for the next run."""
    import asyncio
    import gc

    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and not obj.is_running() and not obj.is_closed():
            obj.close()
    asyncio.set_event_loop(None)


def run(cfg) -> OfflineRun:
    """Run ``stacks.hetzner.program(cfg)`` under mocks; return the declared resources and exports."""
    import pulumi

    from stacks.hetzner import program

    mocks = mocks_class()()
    pulumi.runtime.set_mocks(mocks, project="fedi", stack=cfg.stack, preview=False)
    result = OfflineRun()

    @pulumi.runtime.test
    def _run():
        exports = program(cfg)
        return pulumi.Output.all(**exports).apply(result.outputs.update)

    try:
        _run()
    finally:
        _close_event_loops()
    result.resources = [r for r in mocks.recorded if not r.type.startswith("pulumi:providers:")] + [
        r for r in mocks.recorded if r.type.startswith("pulumi:providers:")
    ]
    return result


def _short(key: str) -> str:
    """'hcloud:index/server:Server::server' -> 'Server server'."""
    typ, name = key.split("::", 1)
    return f"{typ.split(':')[-1]} {name}"


class OfflineEngine:
    """The engine interface of ``providers.hetzner.engine.PulumiEngine``, answered by the real program under mocks.

    ``fedi plan`` uses it when there is no token or no Pulumi CLI (and says so); the tests use it as
    the test engine for up/status/resize/down. It keeps what a backend would keep (stack config and
    outputs) as 0600 JSON files under ``<state>/offline/``: nothing here ever touches a cloud.
    """

    offline = True

    def __init__(self, root: Path | None = None):
        from provision import paths

        self.root = root or paths.state_dir() / "offline"
        self.last_run: OfflineRun | None = None

    def _file(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def _load(self, name: str) -> dict[str, Any]:
        path = self._file(name)
        return json.loads(path.read_text()) if path.exists() else {"config": {}, "outputs": None, "updated": ""}

    def _save(self, name: str, data: dict[str, Any]) -> None:
        from provision.paths import write_atomic

        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._file(name), json.dumps(data, sort_keys=True))

    def preflight(self, *, need_token: bool = True) -> None:
        return None

    def read_config(self, name: str, key: str) -> str | None:
        return self._load(name)["config"].get(key)

    def write_config(self, name: str, key: str, value: str, *, secret: bool) -> None:
        data = self._load(name)
        data["config"][key] = value
        self._save(name, data)

    def preview(self, cfg, progress) -> list:
        from provision.providers import PlannedResource

        existing = self._load(cfg.stack).get("resources") or {}
        self.last_run = run(cfg)
        planned = []
        for r in self.last_run.resources:
            before = existing.get(f"{r.type}::{r.name}")
            action = "create" if before is None else ("same" if before == r.inputs else "update")
            planned.append(PlannedResource(r.type, r.name, action, r.inputs))
        return planned

    def up(self, cfg, progress, *, refresh: bool = False) -> dict[str, Any]:
        """``refresh``: the server was found gone, so a new one (a new id) is created."""
        data = self._load(cfg.stack)
        before = data.get("resources") or {}
        self.last_run = run(cfg)
        after = {f"{r.type}::{r.name}": r.inputs for r in self.last_run.resources}
        for key, inputs in after.items():
            if before.get(key) != inputs:
                verb = "updated" if key in before else "created"
                progress(f"+ {_short(key)} {verb} (offline)")
        outputs = dict(self.last_run.outputs)
        if data.get("outputs"):  # a real backend keeps the cloud's ids and addresses across updates
            for key in ("ipv4", "ipv6", "server_id", "volume_id", "volume_device"):
                if not (refresh and key == "server_id"):
                    outputs[key] = data["outputs"].get(key, outputs.get(key))
        data.update(resources=after, outputs=outputs, updated=utc_iso())
        self._save(cfg.stack, data)
        return outputs

    def outputs(self, name: str) -> dict[str, Any]:
        from provision.errors import ProvisionError

        outputs = self._load(name).get("outputs")
        if not outputs:
            raise ProvisionError(f"stack {name!r} does not exist in the state backend", hint="see `fedi stacks`")
        return outputs

    def destroy(self, name: str, progress) -> None:
        data = self._load(name)
        for key in reversed(list(data.get("resources") or {})):
            progress(f"- {_short(key)} deleted (offline)")
        self._file(name).unlink(missing_ok=True)

    def stack_names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.is_dir() else []

    def resources(self, name: str) -> dict[str, Any]:
        return self._load(name).get("resources") or {}
