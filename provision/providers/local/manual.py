"""``python -m provision.providers.local``: boot, stop and inspect local machines by hand (as root).

Meant for developing the playbook on a real Debian 13 machine; ``fedi up --provider local`` does the
same through the provider. See the docstring of ``provision.providers.local.machine`` for the commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provision import paths
from provision.errors import FediError
from provision.providers.local import bootstrap, machine


def ed25519_pair() -> tuple[str, str]:
    """A new ed25519 key pair: (OpenSSH private key text, one-line public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def dev_bootstrap(directory: Path, user: str = "fedi") -> bootstrap.Bootstrap:
    """A bootstrap with fresh keys, the client key saved to ``directory/client_key`` (0600)."""
    host_private, host_public = ed25519_pair()
    client_private, client_public = ed25519_pair()
    paths.write_private(directory / "client_key", client_private)
    (directory / "host_key.pub").write_text(host_public + "\n")
    return bootstrap.Bootstrap(
        users=(bootstrap.User(user, (client_public,), "ALL=(ALL) NOPASSWD:ALL", ("sudo",)),),
        host_keys=(bootstrap.HostKey("ed25519", host_private, host_public),),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provision.providers.local", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("boot", help="create (first time) and boot a machine; prints how to ssh in")
    boot.add_argument("name")
    boot.add_argument("--bundle", type=Path, help="a rendered bundle dir: boot from its cloud-init.yaml")
    boot.add_argument("--cpus", type=float, default=2)
    boot.add_argument("--memory-mb", type=int, default=4096)
    for command in ("stop", "destroy"):
        sub.add_parser(command).add_argument("name")
    sub.add_parser("list")
    run = sub.add_parser("exec", help="run a command inside the machine (nsenter)")
    run.add_argument("name")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except FediError as err:
        print(f"error: {err.line()}", file=sys.stderr)
        return err.exit_code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "boot":
        directory = machine.machine_dir(args.name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (directory / "bootstrapped").exists():
            if args.bundle:
                boot = bootstrap.parse_cloud_init((args.bundle / "cloud-init.yaml").read_text())
            else:
                boot = dev_bootstrap(directory)
            machine.create(args.name, boot, print)
        m = machine.boot(args.name, print, cpus=args.cpus, memory_mb=args.memory_mb)
        host_pub = directory / "host_key.pub"
        if host_pub.exists():
            known = directory / "known_hosts"
            known.write_text(f"{m.address} {host_pub.read_text().strip()}\n")
            print(f"ssh -i {directory / 'client_key'} -o UserKnownHostsFile={known} fedi@{m.address}")
        print(f"address {m.address}  leader pid {m.leader}  rootfs {m.rootfs}")
    elif args.command == "stop":
        machine.stop(args.name, print)
    elif args.command == "destroy":
        machine.destroy(args.name, print)
    elif args.command == "list":
        for m in machine.list_machines():
            state = "running" if machine.running(m) else "stopped"
            print(f"{m.name}\t{state}\t{m.address}\t{m.cpus:g} cpu\t{m.memory_mb} MB\t{m.directory}")
    elif args.command == "exec":
        m = machine.load(args.name)
        if m is None or not machine.running(m):
            print(f"error: local machine {args.name} is not running", file=sys.stderr)
            return 4
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return machine.subprocess.call(machine.exec_argv(m, cmd or ["bash"]))
    return 0
