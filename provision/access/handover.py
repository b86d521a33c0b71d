"""What `fedi kit export` gathers of a stack and what `fedi kit open` installs on a new computer.

Gathering reads only; installing checks everything before the first file is written. The kit itself
(payload, shares, steps) is :mod:`provision.access.kit`; age runs in :mod:`provision.access.age`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from provision.errors import UsageError

KITS_DIR = "kits"  # <state_dir>/kits/<stack>/: what `fedi kit open` saved (restic.env, STEPS.txt)


def _passphrase() -> str:
    """The passphrase that opens the state: Pulumi's if set, else fedi's (provision.state)."""
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE"):
        return os.environ["PULUMI_CONFIG_PASSPHRASE"]
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        return Path(os.environ["PULUMI_CONFIG_PASSPHRASE_FILE"]).read_text().strip()
    from provision.state import passphrase

    return passphrase()


def gather(name: str, prov: Any, backend: str | None) -> dict[str, Any]:
    """The payload of the stack ``name``, read from its provider (nothing is changed)."""
    from provision.access import kit
    from provision.lifecycle import backup
    from provision.timestamps import utc_iso

    outputs = prov.outputs(name)
    secrets = prov.stored_secrets(name)
    document = machine_data = None
    backend_env: dict[str, str] = {}
    if prov.name == "local":
        from dataclasses import asdict

        from provision.providers.local import machine

        document = prov.state_document(name)
        record = machine.load(name)
        machine_data = {"record": asdict(record) if record else None, "server_id": machine.server_id(name)}
        backend = None
    else:
        from provision.config import load_config, state_backend
        from provision.providers.hetzner.engine import default_backend

        backend = backend or state_backend(load_config()) or default_backend()
        if backend.startswith("s3://"):
            backend_env = {k: os.environ[k] for k in kit.BACKEND_ENV if os.environ.get(k)}
    return kit.build_payload(
        stack=name,
        provider=prov.name,
        identity=outputs.extra,
        passphrase=_passphrase(),
        backend=backend,
        restic_env=backup.repository_env(secrets["restic_password"], outputs.storage),
        host_key=outputs.access.host_key,
        document=document,
        machine=machine_data,
        backend_env=backend_env,
        created=utc_iso(),
    )


def install(payload: dict[str, Any]) -> dict[str, Path]:
    """Make this computer know the kit's stack. Everything is checked before the first file is written."""
    from provision import paths
    from provision.state import PASSPHRASE_ENVS, PASSPHRASE_FILE, StateStore

    name, state = payload["stack"], payload["state"]
    set_here = next((os.environ[e] for e in PASSPHRASE_ENVS if os.environ.get(e)), None)
    file = paths.config_dir() / PASSPHRASE_FILE
    if set_here is None and file.exists():
        set_here = file.read_text().strip()
    store = StateStore(passphrase_text=set_here or state["passphrase"])
    if payload["provider"] == "local":
        if store.exists(name):
            raise UsageError(f"this computer already has a local stack {name}", hint="open the kit in a fresh HOME")
    elif set_here is not None and set_here != state["passphrase"]:
        raise UsageError(
            f"this computer's state passphrase is not the one of stack {name}'s backend",
            hint="open the kit as another user, or with FEDI_CONFIG_DIR pointing at an empty directory",
        )
    where = paths.state_dir() / KITS_DIR / name
    if set_here is None:
        paths.write_private(file, state["passphrase"] + "\n")
    if payload["provider"] == "local":
        from provision.providers.local import machine

        store.save(name, state["document"])  # sealed with this computer's passphrase
        found = state.get("machine") or {}
        directory = machine.machine_dir(name)
        if found.get("record"):
            paths.write_atomic(directory / "machine.json", json.dumps(found["record"], indent=1) + "\n", mode=0o644)
        if found.get("server_id"):
            paths.write_private(directory / "bootstrapped", found["server_id"] + "\n")
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.write_private(where / "restic.env", payload["backup"]["restic_env"])
    paths.write_private(where / "STEPS.txt", payload["steps"])
    saved = {"restic_env": where / "restic.env", "steps": where / "STEPS.txt"}
    if state.get("backend_env"):
        from provision.lifecycle.backup import render_env

        saved["backend_env"] = where / "backend.env"
        paths.write_private(saved["backend_env"], render_env(state["backend_env"]))
    return saved


def record_kit(prov: Any, name: str, recipients: list[str], threshold: int, exported: str) -> None:
    """Keep with the stack that a kit went out (when, to which keys, threshold), as its admins are kept:
    `fedi covenant` counts a kit held by someone other than the operator as emergency access."""
    from provision.access.covenant import kit_record, own_keys

    kept = list(prov.outputs(name).extra.get("kits") or [])
    prov.set_kits(name, [*kept, kit_record(recipients, threshold, exported, own_keys())])
