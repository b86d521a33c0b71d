"""Per-machine cgroups: each nspawn launcher starts in its own cgroup, limits come from the size.

Works on hybrid hosts (cgroup v1 controllers + a nearly empty cgroup2, like the CI machines) and on
pure cgroup2 hosts. Under ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`` nspawn creates its ``payload`` and
``supervisor`` cgroups below the launcher's cgroup2 group, so one ``fedi-<short>`` group per machine
keeps parallel machines apart and lets ``remove`` clean up everything nspawn created.

Limits: cgroup2 ``memory.max``/``cpu.max`` where those controllers are available, else the v1
``memory.limit_in_bytes`` and ``cpu.cfs_quota_us``. What cannot be enforced is reported, never hidden.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Groups:
    """The cgroup directories of one machine (absent controllers are None)."""

    unified: Path  # cgroup2 group the launcher joins (nspawn nests payload/supervisor below it)
    memory_v1: Path | None = None
    cpu_v1: Path | None = None
    systemd_v1: Path | None = None  # the name=systemd hierarchy of hybrid hosts: nspawn mirrors its groups there

    def all(self) -> list[Path]:
        return [p for p in (self.unified, self.memory_v1, self.cpu_v1, self.systemd_v1) if p is not None]


def _own_paths(text: str) -> dict[str, str]:
    """controller -> cgroup path of this process, from /proc/self/cgroup ('' key = cgroup2)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def _is_v2(path: Path) -> bool:
    return (path / "cgroup.controllers").exists()


def plan(short: str, root: Path = ROOT, own: str | None = None) -> Groups:
    mine = _own_paths(own if own is not None else Path("/proc/self/cgroup").read_text())
    name = f"fedi-{short}"
    unified_root = root if _is_v2(root) else root / "unified"
    unified = unified_root / mine.get("", "/").lstrip("/") / name
    if _is_v2(root):
        return Groups(unified)
    memory, cpu, named = root / "memory", root / "cpu", root / "systemd"
    return Groups(
        unified,
        memory / mine.get("memory", "/").lstrip("/") / name if memory.is_dir() else None,
        cpu / mine.get("cpu", "/").lstrip("/") / name if cpu.is_dir() else None,
        named / mine.get("name=systemd", "/").lstrip("/") / name if named.is_dir() else None,
    )


def limit_writes(groups: Groups, cpus: float, memory_mb: int) -> tuple[list[tuple[Path, str]], list[str]]:
    """The (file, value) writes that apply the limits, and what cannot be enforced here."""
    writes: list[tuple[Path, str]] = []
    missing: list[str] = []
    memory_bytes = str(memory_mb * 1024 * 1024)
    quota = int(cpus * CPU_PERIOD_US)
    enabled = set()
    with contextlib.suppress(OSError):
        enabled = set((groups.unified.parent / "cgroup.subtree_control").read_text().split())
    if "memory" in enabled:
        writes.append((groups.unified / "memory.max", memory_bytes))
    elif groups.memory_v1 is not None:
        writes.append((groups.memory_v1 / "memory.limit_in_bytes", memory_bytes))
    else:
        missing.append(f"memory limit ({memory_mb} MB): no memory controller")
    if "cpu" in enabled:
        writes.append((groups.unified / "cpu.max", f"{quota} {CPU_PERIOD_US}"))
    elif groups.cpu_v1 is not None:
        writes.append((groups.cpu_v1 / "cpu.cfs_period_us", str(CPU_PERIOD_US)))
        writes.append((groups.cpu_v1 / "cpu.cfs_quota_us", str(quota)))
    else:
        missing.append(f"CPU limit ({cpus:g} cores): no cpu controller")
    return writes, missing


def create(groups: Groups) -> None:
    for path in groups.all():
        path.mkdir(exist_ok=True)


def apply_limits(groups: Groups, cpus: float, memory_mb: int) -> list[str]:
    """Set the limits; returns what could not be enforced (one phrase each)."""
    writes, missing = limit_writes(groups, cpus, memory_mb)
    for path, value in writes:
        try:
            path.write_text(value)
        except OSError as exc:
            missing.append(f"{path.name}={value}: {exc.strerror}")
    return missing


def join(groups: Groups, pid: int | None = None) -> None:
    """Move ``pid`` (default: this process) into every group; used in the launcher before exec."""
    pid = pid or os.getpid()
    for path in groups.all():
        (path / "cgroup.procs").write_text(str(pid))


def pids(groups: Groups) -> set[int]:
    """Every process in the machine's groups, nested groups included."""
    found: set[int] = set()
    for top in groups.all():
        if not top.is_dir():
            continue
        for directory, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    found.update(int(p) for p in (Path(directory) / "cgroup.procs").read_text().split())
    return found


def kill_all(groups: Groups, timeout: float = 20.0) -> set[int]:
    """SIGKILL every process left in the groups until none is left; returns the survivors (if any)."""
    deadline = time.monotonic() + timeout
    left = pids(groups)
    while left and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        left = pids(groups)
    return left


def remove(groups: Groups) -> list[Path]:
    """rmdir every group, nested first (what nspawn and the machine's systemd created too)."""
    left: list[Path] = []
    for top in groups.all():
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
            try:
                os.rmdir(directory)
            except OSError:
                left.append(Path(directory))
    return left
