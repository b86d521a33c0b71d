"""`fedi kit export | open`: the recovery kit (provision/kit.py) encrypted to trustees with Debian's age.

age does the encryption (SSH ed25519 and age recipients and identities); the plaintext goes in on
stdin and comes out on stdout, so no secret is ever in argv, and every file written here is 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli import Domain, Json, Provider, emit, note
from provision.cli_stack import Backend
from provision.errors import MissingPrerequisite, UsageError

HELP = """A recovery kit: everything needed to take the instance over (state backend and passphrase, backup
repository with its password and keys, the pinned host key, the stack's identity, a page of steps),
encrypted to each trustee's SSH ed25519 or age public key. Needs age (apt-get install age).

\b
  fedi kit export --domain social.example.org --to alice.pub --to bob.pub --out kits/
  fedi kit export --domain social.example.org --to a.pub --to b.pub --to c.pub --threshold 2 --out kits/
  fedi kit open kits/STACK.kit-1-alice.age --identity ~/.ssh/id_ed25519
  fedi kit open FILE-1 --identity KEY-1 FILE-2 --identity KEY-2     (a threshold kit: N trustees together)"""

kit_app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, rich_markup_mode=None)

Runner = Callable[..., subprocess.CompletedProcess]
KITS_DIR = "kits"  # <state_dir>/kits/<stack>/: what `fedi kit open` saved (restic.env, STEPS.txt)


def _run(argv: list[str], data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=data, capture_output=True, timeout=120, env=_age_env())


RUN: Runner = _run  # tests wrap it to see every age argv


def _age_env() -> dict[str, str]:
    """age needs nothing of the caller's environment: no secret of it reaches the child."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def require_age() -> None:
    from provision.kit import AGE_INSTALL

    if shutil.which("age") is None:
        raise MissingPrerequisite("age is not installed (it encrypts the kit)", hint=f"run `{AGE_INSTALL}`")


def encrypt(plain: bytes, recipient: str) -> bytes:
    from provision.kit import encrypt_argv
    from provision.paths import write_private

    with tempfile.TemporaryDirectory(prefix="fedi-kit-") as tmp:
        recipients = Path(tmp) / "recipients"
        write_private(recipients, recipient + "\n")
        proc = RUN(encrypt_argv(recipients), plain)
    if proc.returncode != 0:
        raise UsageError(f"age could not encrypt to {recipient[:40]}...: {_last(proc.stderr)}")
    return proc.stdout


def decrypt(cipher: bytes, identity: Path, source: str) -> bytes:
    from provision.kit import decrypt_argv

    if not identity.is_file():
        raise UsageError(f"--identity {identity}: no such file")
    proc = RUN(decrypt_argv(identity), cipher)
    if proc.returncode != 0:
        why = _last(proc.stderr)
        if "no identity matched" in why:
            raise UsageError(
                f"{source} is not encrypted to the key {identity}", hint="use the key the kit was made for"
            )
        raise UsageError(f"{source}: age could not open it ({why})")
    return proc.stdout


def _last(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("age: report unexpected")]
    return (lines or ["no output"])[-1].removeprefix("age: error: ")


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
    from provision import backup, kit
    from provision.timestamps import utc_iso

    outputs = prov.outputs(name)
    secrets = prov.stored_secrets(name)
    document = machine_data = None
    backend_env: dict[str, str] = {}
    if prov.name == "local":
        from dataclasses import asdict

        from provision.local import machine

        document = prov._doc(name)
        record = machine.load(name)
        machine_data = {"record": asdict(record) if record else None, "server_id": machine.server_id(name)}
        backend = None
    else:
        from provision.engine import default_backend
        from provision.spec import load_config, state_backend

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


@kit_app.command("export")
def export_cmd(
    to: Annotated[list[str], typer.Option("--to", help="a trustee's public key (file or text): ssh-ed25519 or age1")],
    out: Annotated[Path, typer.Option("--out", help="directory for the trustees' files (0600 each)")],
    threshold: Annotated[
        int, typer.Option("--threshold", help="any N trustees together open the kit, never fewer (0: each alone)")
    ] = 0,
    domain: Domain = None,
    stack: Annotated[str | None, typer.Option("--stack", help="stack name (default: from --domain)")] = None,
    provider: Provider = None,
    backend: Backend = None,
    as_json: Json = False,
) -> None:
    """Write one file per trustee, each encrypted to that trustee's key, holding the recovery kit."""
    from provision import kit
    from provision.cli_stack import hold_stack, resolve
    from provision.paths import write_private

    require_age()
    recipients = [kit.recipient_of(value) for value in to]
    if len(set(recipients)) != len(recipients):
        raise UsageError("--to: the same key twice")
    if threshold and not 2 <= threshold <= len(recipients):
        raise UsageError(f"--threshold {threshold}: needs 2 to {len(recipients)} (the number of --to keys)")
    name, prov = resolve(stack, domain, provider, backend)
    hold_stack(name, "kit export", prov)  # its record is written with the stack, as `fedi admins` writes theirs
    payload = gather(name, prov, backend)
    plains = kit.share_files(payload, len(recipients), threshold) if threshold else [kit.single_file(payload)]
    plains = plains if threshold else plains * len(recipients)
    files = {
        out / kit.kit_filename(name, r, i): encrypt(p, r)
        for i, (r, p) in enumerate(zip(recipients, plains, strict=True), start=1)
    }
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, data in files.items():  # every file encrypted before the first is written
        write_private(path, data)
    _record(prov, name, recipients, threshold, payload["created"])
    rows = [{"file": str(p), "to": r} for p, r in zip(files, recipients, strict=True)]
    how = f"any {threshold} of the {len(recipients)} open it together" if threshold else "each opens it alone"
    human = "\n".join([f"wrote {r['file']} for {r['to'][:60]}" for r in rows] + [f"{name}: {how}"])
    emit({"stack": name, "threshold": threshold or 1, "files": rows}, as_json, human)


def _record(prov: Any, name: str, recipients: list[str], threshold: int, exported: str) -> None:
    """Keep with the stack that a kit went out (when, to which keys, threshold), as its admins are kept:
    `fedi covenant` counts a kit held by someone other than the operator as emergency access."""
    from provision.covenant import kit_record, own_keys

    kept = list(prov.outputs(name).extra.get("kits") or [])
    prov.set_kits(name, [*kept, kit_record(recipients, threshold, exported, own_keys())])


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
    from provision import kit

    if len(identity) != len(files):
        raise UsageError(f"{len(files)} kit files but {len(identity)} --identity keys: give one key per file")
    require_age()
    opened = []
    for path, key in zip(files, identity, strict=True):
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        opened.append(kit.read_file(decrypt(path.read_bytes(), key.expanduser(), str(path)), str(path)))
    payload = kit.combine(opened)
    saved = install(payload)
    emit(
        {"stack": payload["stack"], "provider": payload["provider"], **{k: str(v) for k, v in saved.items()}},
        as_json,
        payload["steps"] + f"\nopened: stack {payload['stack']}; saved " + ", ".join(str(p) for p in saved.values()),
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
        from provision.local import machine

        store.save(name, state["document"])  # sealed with this computer's passphrase
        found = state.get("machine") or {}
        directory = machine.machine_dir(name)
        if found.get("record"):
            paths.write_private(directory / "machine.json", json.dumps(found["record"], indent=1) + "\n")
        if found.get("server_id"):
            paths.write_private(directory / "bootstrapped", found["server_id"] + "\n")
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.write_private(where / "restic.env", payload["backup"]["restic_env"])
    paths.write_private(where / "STEPS.txt", payload["steps"])
    saved = {"restic_env": where / "restic.env", "steps": where / "STEPS.txt"}
    if state.get("backend_env"):
        from provision.backup import render_env

        saved["backend_env"] = where / "backend.env"
        paths.write_private(saved["backend_env"], render_env(state["backend_env"]))
    note(f"fedi now knows stack {name} ({payload['provider']})")
    return saved


def register(app: typer.Typer) -> None:
    app.add_typer(kit_app, name="kit")
