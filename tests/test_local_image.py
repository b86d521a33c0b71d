"""The local image: build commands as values, mirror detection, the cache key, cleaning."""

from __future__ import annotations

from pathlib import Path

from provision.providers.local import image

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
"""


def test_mirror_from_deb822_skips_security_and_third_party():
    text = "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n" + DEB822
    assert image.mirror_from_sources(text) == "http://deb.debian.org/debian"


def test_mirror_from_one_line_format_with_options():
    text = "# deb http://old/debian x main\ndeb [arch=amd64] http://ftp.de.debian.org/debian/ bookworm main\n"
    assert image.mirror_from_sources(text) == "http://ftp.de.debian.org/debian"


def test_no_debian_mirror_gives_none():
    assert image.mirror_from_sources("deb https://deb.nodesource.com/node_20.x nodistro main\n") is None


def test_debootstrap_argv_is_exact():
    argv = image.debootstrap_argv(Path("/x/rootfs"), "http://m/debian", ("a", "b"))
    assert argv == ["debootstrap", "--variant=minbase", "--include=a,b", "trixie", "/x/rootfs", "http://m/debian"]


def test_pack_and_unpack_keep_owners_xattrs_acls():
    pack = image.pack_argv(Path("/r"), Path("/o.tar.zst"))
    unpack = image.unpack_argv(Path("/o.tar.zst"), Path("/r"))
    for argv in (pack, unpack):
        assert {"--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"} <= set(argv)
    assert pack[-3:] == ["-C", "/r", "."] and "-cpf" in pack
    assert unpack[-2:] == ["-C", "/r"] and "-xpf" in unpack


def test_hash_changes_with_the_package_list_not_its_order():
    assert image.image_hash(("a", "b")) == image.image_hash(("b", "a"))
    assert image.image_hash(("a", "b")) != image.image_hash(("a", "b", "c"))
    assert image.image_path(Path("/c")).name == f"debian13-{image.image_hash()}.tar.zst"


def test_image_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDI_IMAGE_DIR", str(tmp_path / "imgs"))
    assert image.image_path().parent == tmp_path / "imgs"


def test_package_list_has_what_debootstrap_cannot_resolve():
    # debootstrap ignores virtual packages and Recommends: these must be named explicitly.
    assert {"ansible-core", "python3-cffi-backend", "docker.io", "docker-cli", "docker-compose"} <= set(image.PACKAGES)
    assert len(set(image.PACKAGES)) == len(image.PACKAGES)


def test_clean_removes_identity_and_caches(tmp_path):
    root = tmp_path
    for rel in (
        "etc/ssh/ssh_host_ed25519_key",
        "etc/ssh/ssh_host_rsa_key.pub",
        "var/cache/apt/archives/x.deb",
        "var/cache/apt/pkgcache.bin",
        "var/lib/apt/lists/deb.debian.org_debian_dists_trixie_InRelease",
        "var/log/journal/abc/system.journal",
        "var/lib/dbus/machine-id",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "var/lib/apt/lists/lock").write_text("")
    (root / "etc/ssh/sshd_config").write_text("keep")
    (root / "etc/machine-id").write_text("0123")
    image.clean_rootfs(root)
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir()] == ["lock"]
    assert not list((root / "var/log/journal").iterdir())
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").exists()


def test_progress_is_one_line_per_stage():
    lines: list[str] = []
    feed = image._stage_reporter(lines.append)
    for line in [
        "I: Retrieving InRelease",
        "I: Retrieving libc6 2.41",
        "I: Validating libc6 2.41",
        "I: Retrieving bash 5.2",
        "I: Validating bash 5.2",
        "I: Installing core packages...",
        "W: something odd",
        "",
    ]:
        feed(line)
    assert lines == [
        "  debootstrap: Retrieving InRelease",
        "  debootstrap: retrieving 2, validating 2 package(s)",
        "  debootstrap: Installing core packages...",
        "  debootstrap: W: something odd",
    ]
