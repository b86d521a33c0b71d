"""`fedi backup restore`: where the snapshot comes from, and what the stack keeps after it.

From the stack's own repository, from a saved restic.env (``--from-env``), or from another stack's
repository (``--into``: the old stack's backups onto a new one). The restored data needs the secrets it
was made with: the target keeps the old stack's app secrets (never its SSH keys).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from provision.errors import BackupError
from provision.lifecycle import backup


def source_env(name: str, prov: Any, outputs: Any, target: Any) -> tuple[str, str, dict[str, str], str]:
    """The repository settings of stack ``name`` (the old one), a label, its secrets and its domain.

    A stack without a backups bucket (local provider) keeps its repository in its machine's backups
    directory on this computer: it is copied next to the ``target`` machine's backups, where that sees it.
    """
    from provision.lifecycle.stack import spec_of_outputs

    spec = spec_of_outputs(outputs)
    if spec is None:
        raise BackupError(f"stack {name}: its outputs do not say what it runs", hint="use --from-env FILE")
    secrets = prov.stored_secrets(name)  # read only: naming a stack never creates one
    if outputs.storage is not None:
        return backup.repository_env(secrets["restic_password"], outputs.storage), f"stack {name}", secrets, spec.domain
    old_dir = Path(outputs.extra.get("backups") or "") / "restic"
    new_dir = Path(target.extra.get("backups") or "")
    if not old_dir.is_dir() or not new_dir.is_dir():
        raise BackupError(
            f"stack {name} keeps its backups on its own disk and they are not reachable here",
            hint="restore with --from-env from a stack that has a backups bucket",
        )
    copy = new_dir / f"from-{name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(old_dir, copy, symlinks=True)
    env = backup.repository_env(secrets["restic_password"], None, f"/var/backups/fedi/{copy.name}")
    return env, f"stack {name}", secrets, spec.domain


def domain_warning(source: str, source_domain: str, target_name: str, target_domain: str) -> str:
    """'' unless the data moves to another domain, which Fediverse software cannot follow."""
    if not (source_domain and target_domain and source_domain != target_domain):
        return ""
    return (
        f"warning: {source} serves {source_domain}, {target_name} serves {target_domain}. The restored "
        f"accounts and posts keep their {source_domain} addresses: Fediverse software cannot move an "
        "instance to another domain. To move the server, keep the domain and point it at the new one."
    )


def restore(
    target_name: str,
    target_prov: Any,
    target: Any,
    snapshot: str,
    *,
    source: str,
    env: str | None,
    old_secrets: dict[str, str] | None,
    from_env_file: bool,
    safety: bool,
) -> tuple[dict[str, Any], list[str]]:
    """Restore ``snapshot`` onto the target stack; (the result, the notes to show)."""
    notes = []
    access = backup.reachable(target)
    if env is None:
        result = backup.restore(access, snapshot, safety=safety)
    else:
        result = backup.restore_from(access, env, snapshot, safety=safety)
    if from_env_file and result.get("config"):
        # Another repository (this computer may be new): the old secrets come from the restored bundle.
        old_secrets = backup.read_restored_secrets(access)
        if old_secrets is None:
            notes.append(
                f"warning: snapshot {result['snapshot'][:8]} holds no secrets.json: {target_name} keeps its own "
                "app secrets, so a later `fedi up` would replace the restored configuration's"
            )
    if old_secrets is not None:
        # The restored data needs the old secrets: the new stack keeps them, so a later `fedi up` of it
        # renders the same configuration the restore brought back.
        target_prov.adopt_secrets(target_name, old_secrets)
        notes.append(f"{target_name} now keeps the app secrets of {source} (its own SSH keys stay)")
    return result, notes
