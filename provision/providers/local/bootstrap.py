"""What cloud-init would do on first boot, applied by fedi to a local machine's root filesystem.

The local provider boots the same bundle as Hetzner. Rather than emulate a cloud metadata service, it
reads the bundle's ``cloud-init.yaml`` and writes its effects into the root filesystem before boot:
the admin user with sudo and its authorized keys, the pre-generated SSH host keys, ``write_files``,
and a check that the bootstrap packages are already in the image. cloud-init itself stays installed
but disabled on the machine (``/etc/cloud/cloud-init.disabled``), so nothing regenerates the keys.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError

# cloud-init keys the local provider applies (above) or that change nothing it must reproduce.
APPLIED = {"users", "ssh_keys", "packages", "write_files", "hostname", "fqdn"}
NO_EFFECT_HERE = {
    "package_update",  # the image is current as of its build; the machine has no network of its own
    "package_upgrade",
    "package_reboot_if_required",
    "ssh_deletekeys",  # the image has no host keys to delete
    "ssh_genkeytypes",  # no keys are generated: the bundle's keys are written
    "ssh_pwauth",  # sshd's default (and the playbook) already refuse passwords for the admin user
    "disable_root",
    "preserve_hostname",
    "manage_etc_hosts",
    "timezone",
    "locale",
    "growpart",
    "resize_rootfs",
    "chpasswd",
}
KEY_TYPES = ("ed25519", "ecdsa", "rsa")


@dataclass(frozen=True)
class HostKey:
    type: str  # ed25519 | ecdsa | rsa
    private: str  # OpenSSH private key text (secret)
    public: str  # one-line public key

    def __repr__(self) -> str:
        return f"HostKey({self.type!r}, {self.public[:40]!r}...)"


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: bytes
    permissions: int = 0o644

    def __repr__(self) -> str:
        return f"WriteFile({self.path!r}, {len(self.content)} bytes, {oct(self.permissions)})"


@dataclass(frozen=True)
class User:
    name: str
    authorized_keys: tuple[str, ...]
    sudo: str = ""  # the sudoers rule ("ALL=(ALL) NOPASSWD:ALL"); empty = no sudo
    groups: tuple[str, ...] = ()
    shell: str = "/bin/bash"


@dataclass(frozen=True)
class Bootstrap:
    users: tuple[User, ...]
    host_keys: tuple[HostKey, ...]
    packages: tuple[str, ...] = ()
    write_files: tuple[WriteFile, ...] = ()
    hostname: str = ""
    ignored: tuple[str, ...] = ()  # top-level keys this provider does not apply (reported as a warning)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value]


def parse_cloud_init(text: str) -> Bootstrap:
    """The bootstrap a cloud-init user-data document asks for (``#cloud-config`` YAML)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProvisionError(f"the bundle's cloud-init.yaml is not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ProvisionError("the bundle's cloud-init.yaml is not a #cloud-config mapping")
    users: list[User] = []
    for raw in doc.get("users") or []:
        if raw == "default" or not isinstance(raw, dict):
            continue
        sudo = raw.get("sudo") or ""
        if isinstance(sudo, list):
            sudo = sudo[0] if sudo else ""
        users.append(
            User(
                name=str(raw["name"]),
                authorized_keys=tuple(_as_list(raw.get("ssh_authorized_keys"))),
                sudo="" if sudo is False else str(sudo),
                groups=tuple(_as_list(raw.get("groups"))),
                shell=str(raw.get("shell") or "/bin/bash"),
            )
        )
    keys = doc.get("ssh_keys") or {}
    host_keys = tuple(
        HostKey(t, str(keys[f"{t}_private"]), str(keys.get(f"{t}_public", "")).strip())
        for t in KEY_TYPES
        if f"{t}_private" in keys
    )
    files: list[WriteFile] = []
    for raw in doc.get("write_files") or []:
        content = raw.get("content", "")
        encoding = str(raw.get("encoding", "")).lower()
        data = base64.b64decode(content) if encoding in ("b64", "base64") else str(content).encode()
        files.append(WriteFile(str(raw["path"]), data, int(str(raw.get("permissions", "0644")), 8)))
    hostname = str(doc.get("fqdn") or doc.get("hostname") or "")
    ignored = tuple(sorted(set(doc) - APPLIED - NO_EFFECT_HERE))
    return Bootstrap(tuple(users), host_keys, tuple(_as_list(doc.get("packages"))), tuple(files), hostname, ignored)


def _passwd_entry(rootfs: Path, name: str) -> list[str] | None:
    for line in (rootfs / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def _groups(rootfs: Path) -> set[str]:
    return {line.split(":")[0] for line in (rootfs / "etc/group").read_text().splitlines() if line}


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ProvisionError(f"{argv[0]} failed in the machine's root filesystem: {result.stderr.strip()[:200]}")


def useradd_argv(rootfs: Path, user: User) -> list[str]:
    argv = ["useradd", "--root", str(rootfs), "--create-home", "--shell", user.shell]
    if user.groups:
        argv += ["--groups", ",".join(user.groups)]
    return [*argv, user.name]


def _write(path: Path, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        os.write(fd, data)
    finally:
        os.close(fd)


def _inside(rootfs: Path, path: str) -> Path:
    target = (rootfs / path.lstrip("/")).resolve()
    if not target.is_relative_to(rootfs.resolve()):
        raise ProvisionError(f"cloud-init write_files path {path!r} leaves the machine's root filesystem")
    return target


def apply(rootfs: Path, boot: Bootstrap, *, hostname: str, image_packages: tuple[str, ...]) -> None:
    """Write the bootstrap into ``rootfs`` (an unpacked image that has never booted)."""
    missing = sorted(set(boot.packages) - set(image_packages))
    if missing:
        raise ProvisionError(
            f"the bundle's cloud-init installs {', '.join(missing)}, which the local image lacks",
            hint="add them to provision.providers.local.image.PACKAGES",
        )
    (rootfs / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (rootfs / "etc/hostname").write_text(hostname + "\n")
    hosts = rootfs / "etc/hosts"
    hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    for old in (rootfs / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    for key in boot.host_keys:
        private = key.private if key.private.endswith("\n") else key.private + "\n"
        _write(rootfs / f"etc/ssh/ssh_host_{key.type}_key", private.encode(), 0o600)
        _write(rootfs / f"etc/ssh/ssh_host_{key.type}_key.pub", (key.public + "\n").encode(), 0o644)
    existing_groups = _groups(rootfs)
    for user in boot.users:
        for group in user.groups:
            if group not in existing_groups:
                _run(["groupadd", "--root", str(rootfs), group])
                existing_groups.add(group)
        if _passwd_entry(rootfs, user.name) is None:
            _run(useradd_argv(rootfs, user))
        entry = _passwd_entry(rootfs, user.name)
        assert entry is not None
        uid, gid, home = int(entry[2]), int(entry[3]), rootfs / entry[5].lstrip("/")
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, uid, gid)
        _write(ssh_dir / "authorized_keys", "".join(k + "\n" for k in user.authorized_keys).encode(), 0o600, uid, gid)
        if user.sudo:
            rule = f"# written by fedi from the bundle's cloud-init\n{user.name} {user.sudo}\n"
            _write(rootfs / f"etc/sudoers.d/90-fedi-{user.name}", rule.encode(), 0o440)
    for item in boot.write_files:
        _write(_inside(rootfs, item.path), item.content, item.permissions)
    disabled = rootfs / "etc/cloud/cloud-init.disabled"
    disabled.parent.mkdir(parents=True, exist_ok=True)
    disabled.write_text("fedi's local provider applied this machine's cloud-init user-data before boot\n")
