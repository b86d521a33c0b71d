"""The Debian 13 (trixie) root filesystem that local machines boot: built once with debootstrap, cached.

The image holds every package the playbook installs (``PACKAGES``), so the playbook's apt tasks find
them present and a local machine needs no network of its own. It is cached as
``<cache_dir>/images/debian13-<hash>.tar.zst``; the hash covers the package list, the suite and the
image format, so changing ``PACKAGES`` builds a new image and never reuses a stale one.

Build commands are data (pure functions returning argv lists); ``ensure_image`` runs them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from provision import paths
from provision.errors import MissingPrerequisite, ProvisionError
from provision.model import Progress

SUITE = "trixie"
VARIANT = "minbase"
IMAGE_FORMAT = 1  # bump when the build or cleaning steps change: forces a rebuild of cached images

# Every package the playbook installs (ansible/vars/packages.yml), plus what boots the machine and
# runs ansible. debootstrap does not resolve virtual packages or Recommends, hence the
# explicit python3-cffi-backend (for ansible-core) and docker-cli (docker.io only recommends it).
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "python3",
    "ansible-core",
    "python3-cffi-backend",
    "docker.io",
    "docker-cli",
    "docker-compose",
    "containerd",
    "caddy",
    "postgresql-17",
    "postgresql-client-17",
    "valkey-server",
    "restic",
    "rabbitmq-server",
    "fail2ban",
    "unattended-upgrades",
    "nftables",
    "systemd-timesyncd",
    "debsums",
    "apt-show-versions",
    "iproute2",
    "curl",
    "cloud-init",
    "python3-psycopg2",
    "zstd",
    # Not used by the playbook: the auditor tests/test_security_testhost.py runs inside the test host.
    "lynis",
)

DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Removed before packing: every machine gets its own keys, machine-id and hostname.
CLEAN_GLOBS: tuple[str, ...] = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial/*",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*_*",
    "var/log/journal/*",
    "var/log/*.log",
    "var/log/apt/*",
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "tmp/*",
    "root/.bash_history",
)


def image_hash(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> str:
    """A short, stable hash of what goes into the image (order of the list does not matter)."""
    text = "\n".join([f"format={IMAGE_FORMAT}", f"suite={suite}", f"variant={VARIANT}", *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def image_dir() -> Path:
    """Where images are cached: ``FEDI_IMAGE_DIR``, else ``<cache_dir>/images``. The test suite points
    FEDI_IMAGE_DIR at the user's real cache, so tests and ``fedi up`` share one build across runs."""
    override = os.environ.get("FEDI_IMAGE_DIR")
    return Path(override) if override else paths.cache_dir() / "images"


def image_path(directory: Path | None = None, packages: tuple[str, ...] = PACKAGES) -> Path:
    return (directory or image_dir()) / f"debian13-{image_hash(packages)}.tar.zst"


def host_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian mirror the host's apt uses (one-line and deb822 formats); deb.debian.org otherwise."""
    texts: list[str] = []
    for source in sources:
        files = sorted(source.glob("*.list")) + sorted(source.glob("*.sources")) if source.is_dir() else [source]
        for file in files:
            with contextlib.suppress(OSError):
                texts.append(file.read_text())
    return mirror_from_sources("\n".join(texts)) or DEFAULT_MIRROR


def mirror_from_sources(text: str) -> str | None:
    """The first Debian (not -security, not third-party) mirror URI in apt sources text."""
    candidates: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        one_line = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", line)
        if one_line:
            candidates.append(one_line.group(1))
        elif line.lower().startswith("uris:"):
            candidates.extend(line.split(":", 1)[1].split())
    for uri in candidates:
        if re.search(r"/debian/?$", uri) and "security" not in uri:
            return uri.rstrip("/")
    return None


def debootstrap_argv(rootfs: Path, mirror: str, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    return [
        "debootstrap",
        f"--variant={VARIANT}",
        f"--include={','.join(packages)}",
        SUITE,
        str(rootfs),
        mirror,
    ]


# Ownership by number, xattrs and ACLs kept, so the image boots the same everywhere.
TAR_FLAGS = ["--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]


def pack_argv(rootfs: Path, out: Path) -> list[str]:
    return ["tar", *TAR_FLAGS, "-cpf", str(out), "-C", str(rootfs), "."]


def unpack_argv(image: Path, rootfs: Path) -> list[str]:
    return ["tar", *TAR_FLAGS, "-xpf", str(image), "-C", str(rootfs)]


def clean_rootfs(rootfs: Path) -> None:
    """Remove caches, logs and per-host identity, so every copy of the image starts fresh."""
    for pattern in CLEAN_GLOBS:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    # An empty machine-id: systemd generates one at first boot (the documented state for images).
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "etc/hostname").write_text("localhost\n")


def _stage_reporter(progress: Progress) -> Callable[[str], None]:
    """debootstrap prints one line per package; report one line per stage, with counts."""
    counts: dict[str, int] = {}

    def flush() -> None:
        if counts:
            progress("  debootstrap: " + ", ".join(f"{verb.lower()} {n}" for verb, n in counts.items()) + " package(s)")
            counts.clear()

    def feed(line: str) -> None:
        match = re.match(r"^I: (\w+) (\S+)", line)
        if not match:
            if line.startswith(("E:", "W:")):
                flush()
                progress(f"  debootstrap: {line}")
            elif line == "":
                flush()
            return
        verb = match.group(1)
        if (
            verb in ("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring")
            and match.group(2)[0].islower()
        ):
            counts[verb] = counts.get(verb, 0) + 1
            return
        flush()
        progress(f"  debootstrap: {line[3:]}")

    return feed


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One build at a time per cache (parallel test runs and the CLI share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_tools() -> None:
    for tool, package in (("debootstrap", "debootstrap"), ("zstd", "zstd"), ("tar", "tar")):
        if shutil.which(tool) is None:
            raise MissingPrerequisite(f"{tool} is not installed", hint=f"apt-get install {package}")


def build(out: Path, progress: Progress, *, mirror: str | None = None, packages: tuple[str, ...] = PACKAGES) -> Path:
    """Build the image into ``out`` (atomically: a partial file is never left under the final name)."""
    check_tools()
    mirror = mirror or host_mirror()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=out.parent))
    rootfs = work / "rootfs"
    log = out.parent / f"{out.name}.build.log"
    try:
        progress(f"Building the Debian 13 image with debootstrap from {mirror} (once; a few minutes)")
        feed = _stage_reporter(progress)
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                debootstrap_argv(rootfs, mirror, packages),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log_file.write(line)
                feed(line.rstrip("\n"))
            feed("")
            rc = proc.wait()
        if rc != 0:
            tail = [line for line in log.read_text().splitlines() if line.startswith(("E:", "W:"))][-1:]
            raise ProvisionError(
                f"debootstrap failed (exit {rc}): {tail[0] if tail else 'see the log'}", hint=f"log: {log}"
            )
        progress("  cleaning the image (apt caches, logs, host keys, machine-id)")
        clean_rootfs(rootfs)
        progress(f"  packing {out.name}")
        partial = out.with_name(out.name + ".partial")
        subprocess.run(pack_argv(rootfs, partial), check=True)
        os.replace(partial, out)
        progress(f"Image ready: {out} ({out.stat().st_size // (1 << 20)} MiB)")
        return out
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def ensure_image(progress: Progress, *, directory: Path | None = None, packages: tuple[str, ...] = PACKAGES) -> Path:
    """The cached image for ``packages``; built on first use (concurrent callers wait for one build)."""
    out = image_path(directory, packages)
    if out.exists():
        return out
    with _lock(out.with_name(out.name + ".lock")):
        if out.exists():
            return out
        return build(out, progress, packages=packages)


def unpack(image: Path, rootfs: Path) -> None:
    rootfs.mkdir(parents=True, exist_ok=True, mode=0o755)
    result = subprocess.run(unpack_argv(image, rootfs), capture_output=True, text=True)
    if result.returncode != 0:
        raise ProvisionError(f"could not unpack {image.name}: {result.stderr.strip()[:200]}")


if __name__ == "__main__":  # python -m provision.providers.local.image: build (or show) the cached image
    print(ensure_image(print))
