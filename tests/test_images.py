"""`fedi up --images DIR`: the archive check, on small archives in the format `docker save` writes.

Each archive here is built the way Docker 25+ writes one: ``blobs/sha256/<hex>`` for the layer tar, the
image config and the OCI manifest; ``manifest.json`` (a list of ``{"Config", "RepoTags", "Layers"}``);
``index.json`` naming the manifest with the ``io.containerd.image.name`` annotation; ``oci-layout``.
The archives are tiny and are not the apps.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from provision import apps
from provision.errors import MissingPrerequisite, ValidationError
from provision.lifecycle import images
from provision.lifecycle import stack as lifecycle
from provision.spec import build_spec


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, str]:
    digest = hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{digest}", data)
    return f"sha256:{digest}", f"blobs/sha256/{digest}"


def docker_save(path: Path, tags: list[str], *, index: bool = True, full_names: list[str] | None = None) -> str:
    """Write a one-image archive as `docker save` does; the manifest's digest."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as layer:
        _add(layer, "hello.txt", b"not an app\n")
    with tarfile.open(path, "w") as tar:
        layer_digest, layer_path = _blob(tar, layer_buf.getvalue())
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
        config_bytes = json.dumps(config).encode()
        config_digest, config_path = _blob(tar, config_bytes)
        oci_manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer_buf.getvalue()),
                }
            ],
        }
        manifest_bytes = json.dumps(oci_manifest).encode()
        manifest_digest, _ = _blob(tar, manifest_bytes)
        _add(
            tar,
            "manifest.json",
            json.dumps([{"Config": config_path, "RepoTags": tags, "Layers": [layer_path]}]).encode(),
        )
        if index:
            descriptors = [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                    },
                }
                for name in (full_names if full_names is not None else [images.normalize(t) for t in tags])
            ]
            _add(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": descriptors}).encode())
            _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    return manifest_digest


MBIN = dict(apps.get("mbin").images)["mbin"]


@pytest.mark.parametrize(
    ("ref", "full"),
    [
        ("redis:8", "docker.io/library/redis:8"),
        ("dessalines/lemmy:0.19.20", "docker.io/dessalines/lemmy:0.19.20"),
        ("docker.io/dessalines/lemmy:0.19.20", "docker.io/dessalines/lemmy:0.19.20"),
        ("ghcr.io/mbinorg/mbin:v1.10.1", "ghcr.io/mbinorg/mbin:v1.10.1"),
        ("localhost:5000/x:1", "localhost:5000/x:1"),
        ("localhost/x", "localhost/x:latest"),
        ("busybox", "docker.io/library/busybox:latest"),
        ("ghcr.io/a/b:1@sha256:" + "0" * 64, "ghcr.io/a/b:1@sha256:" + "0" * 64),
    ],
)
def test_references_are_compared_in_full_form(ref, full):
    assert images.normalize(ref) == full


def test_an_archive_with_exactly_the_pinned_reference_passes(tmp_path):
    # docker save writes Docker Hub names in their short form in RepoTags, and in full in index.json
    docker_save(tmp_path / "lemmy.tar", ["dessalines/lemmy:" + apps.lemmy.LEMMY])
    archive = images.ImageArchive("lemmy", dict(apps.get("lemmy").images)["lemmy"], tmp_path / "lemmy.tar")
    images.check_archive(archive)
    assert images.read_archive(archive.path).refs == {f"docker.io/dessalines/lemmy:{apps.lemmy.LEMMY}"}


def test_an_archive_without_index_json_is_read_from_manifest_json(tmp_path):
    docker_save(tmp_path / "mbin.tar", [MBIN], index=False)
    images.check_archive(images.ImageArchive("mbin", MBIN, tmp_path / "mbin.tar"))


@pytest.mark.parametrize(
    ("tags", "full_names", "held"),
    [
        (["ghcr.io/mbinorg/mbin:v1.10.0"], None, "ghcr.io/mbinorg/mbin:v1.10.0"),  # another tag
        (["mbinorg/mbin:v1.10.1"], None, "docker.io/mbinorg/mbin:v1.10.1"),  # another registry
        ([], [], "no tagged image"),  # saved by image ID: no reference at all
        ([MBIN, "ghcr.io/mbinorg/mbin:latest"], None, "ghcr.io/mbinorg/mbin:latest"),  # more than the pin
        ([MBIN], ["ghcr.io/mbinorg/mbin:v1.9.0"], "ghcr.io/mbinorg/mbin:v1.9.0"),  # index.json disagrees
    ],
)
def test_an_archive_holding_anything_but_exactly_the_pin_is_refused(tmp_path, tags, full_names, held):
    docker_save(tmp_path / "mbin.tar", tags, full_names=full_names)
    with pytest.raises(ValidationError) as err:
        images.check_archive(images.ImageArchive("mbin", MBIN, tmp_path / "mbin.tar"))
    line = err.value.line()
    assert line.startswith("images/mbin.tar: holds ") and held in line and f"not exactly {MBIN}" in line
    assert "docker save -o" in line


def test_a_file_that_is_not_a_docker_save_archive_is_refused(tmp_path):
    (tmp_path / "mbin.tar").write_bytes(b"\x00" * 10)
    with pytest.raises(ValidationError, match=r"^images/mbin.tar: cannot be read as a docker save archive"):
        images.check_archive(images.ImageArchive("mbin", MBIN, tmp_path / "mbin.tar"))
    with tarfile.open(tmp_path / "mbin.tar", "w") as tar:  # a tar, but not from docker save
        _add(tar, "etc/hostname", b"x\n")
    with pytest.raises(ValidationError, match=r"has no manifest.json"):
        images.check_archive(images.ImageArchive("mbin", MBIN, tmp_path / "mbin.tar"))


def test_a_pinned_digest_must_be_the_archives_manifest(tmp_path):
    digest = docker_save(tmp_path / "mbin.tar", [MBIN])
    images.check_archive(images.ImageArchive("mbin", f"{MBIN}@{digest}", tmp_path / "mbin.tar"))
    other = "sha256:" + hashlib.sha256(b"another manifest").hexdigest()
    with pytest.raises(ValidationError, match=rf"does not hold {MBIN}@{other}'s digest"):
        images.check_archive(images.ImageArchive("mbin", f"{MBIN}@{other}", tmp_path / "mbin.tar"))


def test_a_digest_is_checked_against_the_blobs_content(tmp_path):
    """index.json naming the pinned digest is not enough: the blob must hash to it."""
    docker_save(tmp_path / "real.tar", [MBIN])
    claimed = "sha256:" + hashlib.sha256(b"the registry's manifest").hexdigest()
    with tarfile.open(tmp_path / "real.tar") as src, tarfile.open(tmp_path / "mbin.tar", "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "index.json":
                doc = json.loads(data)
                doc["manifests"][0]["digest"] = claimed
                data = json.dumps(doc).encode()
            _add(dst, member.name, data)
        _add(dst, f"blobs/sha256/{claimed.split(':')[1]}", b"something else")
    with pytest.raises(ValidationError, match="digest"):
        images.check_archive(images.ImageArchive("mbin", f"{MBIN}@{claimed}", tmp_path / "mbin.tar"))


def test_every_pinned_image_of_the_app_needs_its_archive(tmp_path):
    pins = dict(apps.get("mastodon").images)
    docker_save(tmp_path / "mastodon.tar", [pins["mastodon"]])
    with pytest.raises(MissingPrerequisite) as err:
        images.archives("mastodon", tmp_path)
    assert err.value.line() == (
        f"images: {tmp_path / 'streaming.tar'} is missing (the archive of {pins['streaming']}) (make it where "
        f"the registry is reachable: docker save -o streaming.tar {pins['streaming']})"
    )
    docker_save(tmp_path / "streaming.tar", [pins["streaming"]])
    found = images.archives("mastodon", tmp_path)
    assert [(a.role, a.ref, a.path) for a in found] == [
        ("mastodon", pins["mastodon"], tmp_path / "mastodon.tar"),
        ("streaming", pins["streaming"], tmp_path / "streaming.tar"),
    ]


def test_a_missing_directory_is_one_line(tmp_path):
    with pytest.raises(MissingPrerequisite, match=r"^images: .*/nowhere is not a directory$"):
        images.archives("mbin", tmp_path / "nowhere")


def test_images_in_fedi_toml_is_validated_like_the_other_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"software": "kbin", "size": "tiny", "domain": "x.example.org"}
    assert build_spec(base).images == ""
    assert build_spec(base, {"images": "archives"}).images == str(tmp_path / "archives")
    assert build_spec({**base, "images": "/srv/img"}, {"images": "archives"}).images == "/srv/img"  # the flag wins
    with pytest.raises(ValidationError, match=r"^images: 3 must be a directory"):
        build_spec(base, {"images": 3})


@pytest.fixture
def hetzner(monkeypatch, tmp_path):
    from provision.providers.hetzner.offline import OfflineEngine
    from provision.providers.hetzner.provider import HetznerProvider
    from tests.support.stack_fixtures import isolate

    isolate(monkeypatch, tmp_path)
    return HetznerProvider(engine=OfflineEngine())


def _lemmy_archives(directory: Path, **override: list[str]) -> None:
    directory.mkdir()
    for role, ref in dict(apps.get("lemmy").images).items():
        docker_save(directory / f"{role}.tar", override.get(role.replace("-", "_"), [ref]))


def test_up_refuses_a_wrong_archive_before_anything_is_created(hetzner, tmp_path):
    from tests.support.stack_fixtures import spec_of

    _lemmy_archives(tmp_path / "img", lemmy_ui=["docker.io/dessalines/lemmy-ui:0.19.19"])
    calls: list[str] = []
    steps = replace(lifecycle.Steps(), configure=lambda *a, **k: calls.append("configure"))
    with pytest.raises(ValidationError, match=r"^images/lemmy-ui.tar: holds docker.io/dessalines/lemmy-ui:0.19.19, "):
        lifecycle.up(replace(spec_of(), images=str(tmp_path / "img")), hetzner, lambda _l: None, steps=steps)
    assert calls == [] and hetzner.stacks() == [] and hetzner.engine.stack_names() == []
    assert not lifecycle.bundle_dir("social-example-org").exists()


def test_up_hands_the_checked_archives_to_configure(hetzner, tmp_path):
    from tests.support.stack_fixtures import spec_of

    _lemmy_archives(tmp_path / "img")
    seen: dict = {}

    def configure(access, bundle, runtime, progress, **kwargs):
        seen.update(runtime=runtime, **kwargs)
        return type("Configured", (), {"host_key": "ssh-ed25519 AAAArotated fedi", "changed": 1, "failed": 0})()

    steps = replace(lifecycle.Steps(), configure=configure, health=lambda *a: "healthy", event=lambda *a: None)
    lines: list[str] = []
    lifecycle.up(replace(spec_of(), images=str(tmp_path / "img")), hetzner, lines.append, steps=steps)
    assert [(a.role, a.ref) for a in seen["images"]] == sorted(dict(apps.get("lemmy").images).items())
    assert seen["runtime"]["fedi_start_app"] is True
    assert "the app's images come from " + str(tmp_path / "img") + ": lemmy.tar, lemmy-ui.tar, pictrs.tar" in lines


def test_without_images_configure_gets_no_archives(hetzner):
    from tests.support.stack_fixtures import spec_of

    seen: list = []

    def configure(access, bundle, runtime, progress, **kwargs):
        seen.append(kwargs)
        return type("Configured", (), {"host_key": "ssh-ed25519 AAAArotated fedi", "changed": 1, "failed": 0})()

    steps = replace(lifecycle.Steps(), configure=configure, health=lambda *a: "healthy", event=lambda *a: None)
    lifecycle.up(spec_of(), hetzner, lambda _l: None, steps=steps)
    assert seen == [{}]
