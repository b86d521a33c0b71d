"""The app's images from `docker save` archives (`fedi up --images DIR`) instead of a registry.

Each pinned image of the app (its catalog entry, provision.apps) has one archive in DIR, named after its compose
service role: ``DIR/<role>.tar`` (mastodon.tar and streaming.tar; lemmy.tar, lemmy-ui.tar and
pictrs.tar; mbin.tar). Before anything is created every archive is read here, on the operator's side,
with nothing but ``tarfile``: its ``manifest.json`` (what `docker save` writes: a list of
``{"Config", "RepoTags", "Layers"}``) and, when present, its OCI ``index.json`` (Docker 25 and later
write both). The archive must hold exactly the pinned reference, and when the pin carries a digest
(``name:tag@sha256:...``) the archive must hold that manifest blob, whose content is hashed and
compared. The server then `docker load`s the archives before the app role starts (ansible role
load_images).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision import apps
from provision.errors import MissingPrerequisite, ValidationError

SUFFIX = ".tar"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageArchive:
    role: str  # the compose service role the image serves (a key of the app's catalog images)
    ref: str  # the pinned reference it holds, as the app's catalog module writes it
    path: Path  # the `docker save` archive on the operator's machine

    @property
    def file_name(self) -> str:
        return f"{self.role}{SUFFIX}"


def normalize(ref: str) -> str:
    """A reference in full form, the way Docker reads it: ``redis:8`` -> ``docker.io/library/redis:8``.

    The first path component is a registry when it has a dot or a colon or is ``localhost``; else the
    image is on Docker Hub, whose one-component names live under ``library/``."""
    name, at, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        registry, path = "docker.io", name
    else:
        registry, path = first, rest
    if registry == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if ":" not in path.rsplit("/", 1)[-1] and not at:
        path += ":latest"
    return f"{registry}/{path}{at}{digest}"


def split_digest(ref: str) -> tuple[str, str]:
    """``name:tag@sha256:hex`` -> (``name:tag``, ``sha256:hex``); no digest -> (ref, '')."""
    name, _, digest = ref.partition("@")
    return name, digest


@dataclass(frozen=True)
class ArchiveContents:
    refs: frozenset[str]  # every tagged reference the archive names, in full form
    blobs: frozenset[str]  # digests (sha256:hex) of the manifests and indexes index.json lists


def _member_json(tar: tarfile.TarFile, name: str) -> Any:
    try:
        member = tar.getmember(name)
    except KeyError:
        return None
    handle = tar.extractfile(member)
    if handle is None:
        return None
    return json.loads(handle.read().decode("utf-8"))


def read_archive(path: Path) -> ArchiveContents:
    """The references and manifest digests a `docker save` archive holds. ValueError if it is not one."""
    try:
        with tarfile.open(path, "r:*") as tar:
            manifest = _member_json(tar, "manifest.json")
            index = _member_json(tar, "index.json")
    except (tarfile.TarError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot be read as a docker save archive ({exc})") from None
    if not isinstance(manifest, list) or not all(isinstance(m, dict) for m in manifest):
        raise ValueError("has no manifest.json: not an archive written by `docker save`")
    refs = {normalize(t) for m in manifest for t in (m.get("RepoTags") or []) if isinstance(t, str)}
    blobs: set[str] = set()
    for descriptor in (index or {}).get("manifests", []) if isinstance(index, dict) else []:
        annotations = descriptor.get("annotations") or {}
        name = annotations.get("io.containerd.image.name")
        if isinstance(name, str):
            refs.add(normalize(name))
        if isinstance(descriptor.get("digest"), str):
            blobs.add(descriptor["digest"])
    return ArchiveContents(frozenset(refs), frozenset(blobs))


def _blob_matches(path: Path, digest: str) -> bool:
    """The archive's blob for ``digest`` exists and its content hashes to it."""
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or not hexdigest:
        return False
    with tarfile.open(path, "r:*") as tar:
        try:
            handle = tar.extractfile(f"blobs/sha256/{hexdigest}")
        except KeyError:
            return False
        if handle is None:
            return False
        sha = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest() == hexdigest


def check_archive(archive: ImageArchive) -> None:
    """The archive holds exactly the pinned reference (and its digest when pinned). One clear line if not."""
    where = f"images/{archive.file_name}"
    try:
        contents = read_archive(archive.path)
    except ValueError as exc:
        raise ValidationError(where, str(exc)) from None
    name, digest = split_digest(archive.ref)
    want = normalize(name)
    if contents.refs != {want}:
        held = ", ".join(sorted(contents.refs)) or "no tagged image"
        raise ValidationError(
            where, f"holds {held}, not exactly {archive.ref}", hint=f"docker save -o {archive.path} {name}"
        )
    if digest and (digest not in contents.blobs or not _blob_matches(archive.path, digest)):
        raise ValidationError(where, f"does not hold {archive.ref}'s digest {digest}")


def archives(app: str, directory: str | Path) -> tuple[ImageArchive, ...]:
    """The app's archives in ``directory``, each checked; the first missing or wrong one is the error."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise MissingPrerequisite(f"images: {root} is not a directory")
    found = tuple(
        ImageArchive(role, ref, (root / f"{role}{SUFFIX}").absolute())
        for role, ref in sorted(apps.get(app).images.items())
    )
    for archive in found:
        if not archive.path.is_file():
            name, _ = split_digest(archive.ref)
            raise MissingPrerequisite(
                f"images: {archive.path} is missing (the archive of {archive.ref})",
                hint=f"make it where the registry is reachable: docker save -o {archive.file_name} {name}",
            )
        check_archive(archive)
    return found
