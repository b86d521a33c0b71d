"""What `fedi kit export` gathers of a stack and what `fedi kit open` installs on a new computer.

Gathering reads only; installing checks everything before the first file is written. The kit itself
(payload, shares, steps) is :mod:`provision.access.kit`; age runs in :mod:`provision.access.age`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
    held = prov.kit_state(name, backend)
    return kit.build_payload(
        stack=name,
        provider=prov.name,
        identity=outputs.extra,
        passphrase=_passphrase(),
        backend=held["backend"],
        restic_env=backup.repository_env(secrets["restic_password"], outputs.storage),
        host_key=outputs.access.host_key,
        document=held["document"],
        machine=held["machine"],
        backend_env=held["backend_env"],
        created=utc_iso(),
    )


def install(payload: dict[str, Any]) -> dict[str, Path]:
    """Make this computer know the kit's stack. Everything is checked before the first file is written."""
    from provision import paths
    from provision.providers import get_provider
    from provision.state import PASSPHRASE_ENVS, PASSPHRASE_FILE, StateStore

    name, state = payload["stack"], payload["state"]
    set_here = next((os.environ[e] for e in PASSPHRASE_ENVS if os.environ.get(e)), None)
    file = paths.config_dir() / PASSPHRASE_FILE
    if set_here is None and file.exists():
        set_here = file.read_text().strip()
    store = StateStore(passphrase_text=set_here or state["passphrase"])
    prov = get_provider(payload["provider"])
    prov.check_kit(name, state, store, set_here)
    where = paths.state_dir() / KITS_DIR / name
    if set_here is None:
        paths.write_private(file, state["passphrase"] + "\n")
    prov.install_kit(name, state, store)
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
