"""`fedi kit export | open`: the recovery kit (provision/access/kit.py) encrypted to trustees with Debian's age.

age does the encryption (SSH ed25519 and age recipients and identities; provision/access/age.py runs it);
what a kit carries and installs is provision/access/handover.py. Every file written is 0600.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provision.cli.options import Backend, Domain, Json, Provider, StackOpt
from provision.cli.output import emit, note
from provision.errors import UsageError

HELP = """A recovery kit: everything needed to take the instance over (state backend and passphrase, backup
repository with its password and keys, the pinned host key, the stack's identity, a page of steps),
encrypted to each trustee's SSH ed25519 or age public key. Needs age (apt-get install age).

\b
  fedi kit export --domain social.example.org --to alice.pub --to bob.pub --out kits/
  fedi kit export --domain social.example.org --to a.pub --to b.pub --to c.pub --threshold 2 --out kits/
  fedi kit open kits/STACK.kit-1-alice.age --identity ~/.ssh/id_ed25519
  fedi kit open FILE-1 --identity KEY-1 FILE-2 --identity KEY-2     (a threshold kit: N trustees together)"""

kit_app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, rich_markup_mode=None)


@kit_app.command("export")
def export_cmd(
    to: Annotated[list[str], typer.Option("--to", help="a trustee's public key (file or text): ssh-ed25519 or age1")],
    out: Annotated[Path, typer.Option("--out", help="directory for the trustees' files (0600 each)")],
    threshold: Annotated[
        int, typer.Option("--threshold", help="any N trustees together open the kit, never fewer (0: each alone)")
    ] = 0,
    domain: Domain = None,
    stack: StackOpt = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """Write one file per trustee, each encrypted to that trustee's key, holding the recovery kit."""
    from provision.access import age, handover, kit
    from provision.cli.target import hold_stack, resolve
    from provision.paths import write_private

    age.require_age()
    recipients = [kit.recipient_of(value) for value in to]
    if len(set(recipients)) != len(recipients):
        raise UsageError("--to: the same key twice")
    if threshold and not 2 <= threshold <= len(recipients):
        raise UsageError(f"--threshold {threshold}: needs 2 to {len(recipients)} (the number of --to keys)")
    name, prov = resolve(stack, domain, provider, backend)
    hold_stack(name, "kit export", prov)  # its record is written with the stack, as `fedi admins` writes theirs
    payload = handover.gather(name, prov, backend)
    plains = kit.share_files(payload, len(recipients), threshold) if threshold else [kit.single_file(payload)]
    plains = plains if threshold else plains * len(recipients)
    files = {
        out / kit.kit_filename(name, r, i): age.encrypt(p, r)
        for i, (r, p) in enumerate(zip(recipients, plains, strict=True), start=1)
    }
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, data in files.items():  # every file encrypted before the first is written
        write_private(path, data)
    handover.record_kit(prov, name, recipients, threshold, payload["created"])
    rows = [{"file": str(p), "to": r} for p, r in zip(files, recipients, strict=True)]
    how = f"any {threshold} of the {len(recipients)} open it together" if threshold else "each opens it alone"
    human = "\n".join([f"wrote {r['file']} for {r['to'][:60]}" for r in rows] + [f"{name}: {how}"])
    emit({"stack": name, "threshold": threshold or 1, "files": rows}, as_json, human)


@kit_app.command("open")
def open_cmd(
    files: Annotated[list[Path], typer.Argument(help="the kit file (with a threshold: N trustees' files)")],
    identity: Annotated[
        list[Path], typer.Option("--identity", "-i", help="the private key each file is encrypted to, in order")
    ],
    as_json: Json = False,
) -> None:
    """Open a kit on this computer: fedi then knows the stack, its state passphrase and backup settings,
    so `fedi status`, `fedi backup list` and `fedi backup restore` work with nothing else."""
    from provision.access import age, handover, kit

    if len(identity) != len(files):
        raise UsageError(f"{len(files)} kit files but {len(identity)} --identity keys: give one key per file")
    age.require_age()
    opened = []
    for path, key in zip(files, identity, strict=True):
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        opened.append(kit.read_file(age.decrypt(path.read_bytes(), key.expanduser(), str(path)), str(path)))
    payload = kit.combine(opened)
    saved = handover.install(payload)
    note(f"fedi now knows stack {payload['stack']} ({payload['provider']})")
    emit(
        {"stack": payload["stack"], "provider": payload["provider"], **{k: str(v) for k, v in saved.items()}},
        as_json,
        payload["steps"] + f"\nopened: stack {payload['stack']}; saved " + ", ".join(str(p) for p in saved.values()),
    )


def register(app: typer.Typer) -> None:
    app.add_typer(kit_app, name="kit")
