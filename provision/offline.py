"""Run the real stack program in-process under Pulumi's mocks, recording every resource it declares.

This is how `fedi plan` works without a token or a Pulumi CLI, and what the test engine uses: the
program is the same code `up` runs; only the cloud's answers (ids, addresses, device paths) are
made up, from documentation ranges (203.0.113.0/24, 2001:db8::/32) so they can never be mistaken
for real ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

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
            self._ids = itertools.count(1001)

        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            rid = str(next(self._ids))
            state = dict(args.inputs)
            state.update(_computed(args.typ, rid, args.inputs))
            self.recorded.append(Recorded(args.typ, args.name, rid, redact(dict(args.inputs))))
            return rid, state

        def call(self, args: pulumi.runtime.MockCallArgs):
            return {}, None

    return RecordingMocks


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

    _run()
    result.resources = [r for r in mocks.recorded if not r.type.startswith("pulumi:providers:")] + [
        r for r in mocks.recorded if r.type.startswith("pulumi:providers:")
    ]
    return result
