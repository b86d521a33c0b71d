"""Local machines: a Debian 13 root filesystem booted with systemd as PID 1 under systemd-nspawn.

One machine per stack, in ``<state_dir>/local/<name>/``: ``rootfs/`` (the unpacked image, kept
between boots), ``backups/`` (bind-mounted at /var/backups/fedi: local backups live off the machine),
``console.log`` and ``machine.json`` (the non-secret record: pid, address, cgroups). Each machine has
its own network namespace joined to the host by a veth (``net.py``) and its own cgroups (``cgroups.py``).

For working on the playbook by hand (as root)::

    python -m provision.providers.local boot NAME [--bundle DIR]   # boot; prints the ssh command
    python -m provision.providers.local exec NAME -- systemctl is-system-running
    python -m provision.providers.local list
    python -m provision.providers.local stop NAME                  # stop; keeps rootfs for the next boot
    python -m provision.providers.local destroy NAME               # stop and delete everything

Without ``--bundle`` a fresh host key and client key are generated into the machine's directory;
with it, the bundle's cloud-init.yaml drives the bootstrap exactly as ``fedi up --provider local``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provision import paths
from provision.errors import MissingPrerequisite, ProvisionError
from provision.model import Progress
from provision.providers.local import bootstrap, cgroups, image, net
from provision.timestamps import utc_iso

BACKUPS_TARGET = "/var/backups/fedi"
SSH_PORT = 22
# In the image so the playbook finds them installed, but off until the playbook enables them for an
# app that uses them: a Hetzner server of another app does not run them either.
OFF_UNTIL_CONFIGURED = ("valkey-server.service", "rabbitmq-server.service")
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # machines launched by this process (to reap them)


@dataclass(frozen=True)
class Machine:
    """The record of one machine (``machine.json``); holds no secret."""

    name: str
    directory: str  # <state_dir>/local/<name>
    address: str  # the machine's veth address (reach SSH here)
    host_address: str  # the host's end of the veth
    netns: str  # /run/netns/<netns>
    net_index: int  # which /30 of net.SUBNET
    pid: int = 0  # the systemd-nspawn process (0 = not running)
    leader: int = 0  # the machine's PID 1 as seen from the host (for nsenter)
    cpus: float = 0.0
    memory_mb: int = 0
    groups: tuple[str, ...] = ()  # cgroup directories created for it
    unenforced: tuple[str, ...] = ()  # limits this host could not enforce
    started: str = ""  # ISO 8601 UTC
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def rootfs(self) -> Path:
        return Path(self.directory) / "rootfs"

    @property
    def backups(self) -> Path:
        return Path(self.directory) / "backups"

    @property
    def net(self) -> net.Net:
        return net.from_short(Path(self.netns).name.removeprefix("fedi-"), self.net_index)

    @property
    def cgroups(self) -> cgroups.Groups:
        unified, *rest = [Path(g) for g in self.groups] or [Path("/nonexistent")]
        memory = next((p for p in rest if "/memory/" in str(p)), None)
        cpu = next((p for p in rest if "/cpu/" in str(p)), None)
        named = next((p for p in rest if "/systemd/" in str(p)), None)
        return cgroups.Groups(unified, memory, cpu, named)


def machine_dir(name: str, state: Path | None = None) -> Path:
    return (state or paths.state_dir()) / "local" / name


def nspawn_argv(name: str, rootfs: Path, netns_path: Path, backups: Path) -> list[str]:
    """The systemd-nspawn command that boots a machine (every flag is needed here)."""
    return [
        "systemd-nspawn",
        "--directory",
        str(rootfs),
        "--boot",
        f"--network-namespace-path={netns_path}",
        "--private-network",
        "--machine",
        name,
        "--register=no",  # the host's PID 1 is not systemd: no machined to register with
        "--keep-unit",  # ...and no unit to create: stay in the launcher's own cgroup
        "--system-call-filter=@keyring bpf",  # docker inside needs keyrings and BPF (device cgroup)
        "--capability=CAP_BPF,CAP_NET_ADMIN",  # NET_ADMIN: docker's and the firewall's nftables rules
        f"--bind={backups}:{BACKUPS_TARGET}",
        "--console=read-only",
    ]


def nspawn_env() -> dict[str, str]:
    """A minimal environment: no secret of the caller's reaches the launcher."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",  # cgroup2 inside: docker runs (hybrid host)
    }


def disable_argv(rootfs: Path) -> list[str]:
    return ["systemctl", f"--root={rootfs}", "disable", *OFF_UNTIL_CONFIGURED]


def exec_argv(machine: Machine, argv: list[str]) -> list[str]:
    """Run a command inside the machine's namespaces (machinectl/systemd-run -M do not work here)."""
    return ["nsenter", "--target", str(machine.leader), "--all", "--", *argv]


def load(name: str, state: Path | None = None) -> Machine | None:
    record = machine_dir(name, state) / "machine.json"
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    data["groups"] = tuple(data.get("groups", ()))
    data["unenforced"] = tuple(data.get("unenforced", ()))
    return Machine(**data)


def _save(machine: Machine) -> None:
    record = Path(machine.directory) / "machine.json"
    paths.write_atomic(record, json.dumps(asdict(machine), indent=1) + "\n", mode=0o644)


def alive(pid: int) -> bool:
    """Is ``pid`` a running systemd-nspawn (not a zombie, not a reused pid)?"""
    if pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and comm == "systemd-nspawn"


def running(machine: Machine) -> bool:
    return alive(machine.pid)


def _find_leader(pid: int) -> int:
    """The machine's PID 1: the child of nspawn whose pid in its own namespace is 1."""
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == "1" and len(line.split()) > 2:
                    return int(child)
    return 0


def _console_tail(directory: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        text = (directory / "console.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(line.strip() for line in text[-lines:])
    return ""


def wait_for_ssh(address: str, pid: int, timeout: float, directory: Path) -> None:
    """Bounded wait for sshd's banner on address:22; fails early if the machine stopped."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive(pid):
            raise ProvisionError(
                f"the local machine stopped while booting: {_console_tail(directory)}",
                hint=f"see {directory / 'console.log'}",
            )
        with contextlib.suppress(OSError), socket.create_connection((address, SSH_PORT), timeout=2) as sock:
            sock.settimeout(3)
            if sock.recv(64).startswith(b"SSH-"):
                return
        if time.monotonic() > deadline:
            raise ProvisionError(
                f"sshd on the local machine did not answer at {address}:{SSH_PORT} within {timeout:.0f}s",
                hint=f"see {directory / 'console.log'}",
            )
        time.sleep(1)


def check_host() -> None:
    """The host pieces a machine needs (one line each)."""
    if os.geteuid() != 0:
        raise MissingPrerequisite("the local provider needs root (systemd-nspawn, network namespaces)")
    for tool, package in (("systemd-nspawn", "systemd-container"), ("ip", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            raise MissingPrerequisite(f"{tool} is not installed", hint=f"apt-get install {package}")


def create(name: str, boot: bootstrap.Bootstrap, progress: Progress, *, state: Path | None = None) -> Path:
    """Unpack the image into a new machine directory and write the bootstrap into it (first boot only)."""
    directory = machine_dir(name, state)
    rootfs = directory / "rootfs"
    if (rootfs / "etc/machine-id").exists() and (directory / "bootstrapped").exists():
        return directory
    if rootfs.exists():  # a half-created machine: start over
        subprocess.run(["rm", "-rf", "--one-file-system", str(rootfs)], check=True)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = image.ensure_image(progress)
    progress(f"Unpacking the Debian 13 image for {name}")
    image.unpack(path, rootfs)
    bootstrap.apply(rootfs, boot, hostname=boot.hostname or name, image_packages=image.PACKAGES)
    disable = subprocess.run(disable_argv(rootfs), capture_output=True, text=True)
    if disable.returncode != 0:
        raise ProvisionError(f"could not disable {', '.join(OFF_UNTIL_CONFIGURED)}: {disable.stderr.strip()[:200]}")
    if boot.ignored:
        progress(f"  note: cloud-init keys not applied by the local provider: {', '.join(boot.ignored)}")
    (directory / "backups").mkdir(exist_ok=True, mode=0o700)
    # The machine's identity: a new one for every machine created, so a host key pinned for a lost
    # machine is never taken for this one's (providers.local pins the key together with it).
    (directory / "bootstrapped").write_text(uuid.uuid4().hex + "\n")
    return directory


def server_id(name: str, state: Path | None = None) -> str:
    """The identity of the machine created for ``name`` ('' if there is none)."""
    try:
        return (machine_dir(name, state) / "bootstrapped").read_text().strip() or "unnamed"  # made before ids
    except FileNotFoundError:
        return ""


def _launch(
    name: str,
    directory: Path,
    network: net.Net,
    groups: cgroups.Groups,
    cpus: float,
    memory_mb: int,
    internet: bool,
    progress: Progress,
) -> tuple[subprocess.Popen[bytes], list[str]]:
    if internet:
        net.enable_nat(network)
    cgroups.create(groups)
    unenforced = cgroups.apply_limits(groups, cpus, memory_mb)
    for item in unenforced:
        progress(f"  note: not enforced on this host: {item}")
    (directory / "backups").mkdir(exist_ok=True, mode=0o700)
    argv = nspawn_argv(name, directory / "rootfs", network.netns_path, directory / "backups")
    progress(f"Booting local machine {name} at {network.address}")
    with open(directory / "console.log", "ab") as console:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            env=nspawn_env(),
            start_new_session=True,  # outlives this process: `fedi up` returns, the machine stays
            preexec_fn=lambda: cgroups.join(groups),
        )
    return proc, unenforced


def boot(
    name: str,
    progress: Progress,
    *,
    cpus: float,
    memory_mb: int,
    state: Path | None = None,
    timeout: float = 180,
    internet: bool = False,
) -> Machine:
    """Boot the (created) machine, or return it if it is already running; waits for sshd.
    ``internet``: forward and masquerade the machine's traffic through the host (net.enable_nat)."""
    check_host()
    directory = machine_dir(name, state)
    if not (directory / "bootstrapped").exists():
        raise ProvisionError(f"there is no local machine {name!r} to boot")
    previous = load(name, state)
    if previous and running(previous):
        return previous
    # Names derive from the machine's directory, not its name: two state dirs may hold the same stack.
    network = net.setup(str(directory), previous.net_index if previous else None)
    groups = cgroups.plan(network.short)
    try:
        proc, unenforced = _launch(name, directory, network, groups, cpus, memory_mb, internet, progress)
    except BaseException:  # nothing runs yet: remove what was set up, so a failed boot leaves nothing
        net.teardown(network)
        cgroups.remove(groups)
        raise
    _CHILDREN[proc.pid] = proc
    machine = Machine(
        name=name,
        directory=str(directory),
        address=network.address,
        host_address=network.host_address,
        netns=str(network.netns_path),
        net_index=network.index,
        pid=proc.pid,
        cpus=cpus,
        memory_mb=memory_mb,
        groups=tuple(str(g) for g in groups.all()),
        unenforced=tuple(unenforced),
        started=utc_iso(),
        extra={"internet": "yes" if internet else "no"},
    )
    _save(machine)
    try:
        wait_for_ssh(network.address, proc.pid, timeout, directory)
    except ProvisionError:
        stop(name, lambda _: None, state=state)
        raise
    machine = Machine(**{**asdict(machine), "leader": _find_leader(proc.pid)})
    _save(machine)
    progress(f"  {name} is up: ssh on {network.address}:{SSH_PORT}")
    return machine


def resize(name: str, cpus: float, memory_mb: int, *, state: Path | None = None) -> Machine:
    """Change a machine's CPU and memory limits (live when running; kept for the next boot)."""
    machine = load(name, state)
    if machine is None:
        raise ProvisionError(f"there is no local machine {name!r}")
    unenforced = cgroups.apply_limits(machine.cgroups, cpus, memory_mb) if running(machine) else []
    machine = Machine(**{**asdict(machine), "cpus": cpus, "memory_mb": memory_mb, "unenforced": tuple(unenforced)})
    _save(machine)
    return machine


def _our_mounts(directory: Path) -> list[str]:
    prefix = str(directory.resolve())
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def stop(name: str, progress: Progress, *, state: Path | None = None, timeout: float = 60) -> None:
    """Power the machine off (bounded), then remove its processes, cgroups, veth and namespace."""
    machine = load(name, state)
    if machine is None:
        return
    if running(machine):
        progress(f"Stopping local machine {name}")
        os.kill(machine.pid, signal.SIGTERM)  # nspawn asks the machine's systemd to power off
        deadline = time.monotonic() + timeout
        while running(machine) and time.monotonic() < deadline:
            time.sleep(0.3)
        if running(machine):
            progress(f"  {name} did not power off within {timeout:.0f}s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(machine.pid, signal.SIGKILL)
    groups = machine.cgroups
    survivors = cgroups.kill_all(groups)
    _reap(machine.pid)
    left = cgroups.remove(groups) if machine.groups else []
    for point in sorted(_our_mounts(Path(machine.directory)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    net.teardown(machine.net)
    _save(Machine(**{**asdict(machine), "pid": 0, "leader": 0}))
    if survivors or left:
        raise ProvisionError(f"local machine {name}: could not remove processes {sorted(survivors)} or cgroups {left}")


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=10)


def destroy(name: str, progress: Progress, *, state: Path | None = None, purge_backups: bool = False) -> None:
    """Stop the machine and delete its root filesystem (and its local backups if asked)."""
    stop(name, progress, state=state)
    directory = machine_dir(name, state)
    if not directory.exists():
        return
    progress(f"Deleting local machine {name}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(directory / "rootfs")], check=True)
    for leftover in ("machine.json", "console.log", "bootstrapped"):
        (directory / leftover).unlink(missing_ok=True)
    if purge_backups:
        subprocess.run(["rm", "-rf", "--one-file-system", str(directory / "backups")], check=True)


def list_machines(state: Path | None = None) -> list[Machine]:
    root = (state or paths.state_dir()) / "local"
    machines = [load(p.parent.name, state) for p in sorted(root.glob("*/machine.json"))] if root.is_dir() else []
    return [m for m in machines if m is not None]


def run_in(machine: Machine, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(exec_argv(machine, argv), capture_output=True, text=True, timeout=timeout)
