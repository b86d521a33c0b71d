"""The apps' real configuration readers, from Debian 13, in a chroot built once and cached.

The machines that run the tests are Debian 12; the readers that matter are Debian 13's (DESIGN.md):
docker compose 2.26 (docker-compose), Ruby dotenv (ruby-dotenv), Symfony Dotenv and Mailer's DSN
parser (php-symfony-dotenv, php-symfony-mailer) and Rust's deser_hjson (librust-deser-hjson-dev,
compiled here with Debian's cargo into a 30-line reader that prints the parsed value as JSON).

Built with debootstrap (the packages without virtual dependencies), then apt-get inside the chroot
(cargo and the Rust crates, whose dependencies debootstrap cannot resolve), the reader compiled, the
Rust toolchain purged. Cached as a directory under ``<FEDI_IMAGE_DIR>/readers-<hash>``; the hash
covers the package lists, the reader's source and FORMAT. First build: about 3.5 minutes, 480 MB on disk;
afterwards nothing (each read is a ``chroot``, about 50 ms).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

FORMAT = 1
PACKAGES = ("docker-compose", "ruby-dotenv", "php-cli", "php-symfony-dotenv", "php-symfony-mailer")
BUILD_PACKAGES = ("libc6-dev", "cargo", "librust-deser-hjson-dev", "librust-serde-json-dev")

CARGO_TOML = """\
[package]
name = "hjson-read"
version = "0.1.0"
edition = "2021"

[dependencies]
deser-hjson = "2"
serde_json = "1"
"""
# Debian's crates are a cargo directory source: the build needs no crates.io.
CARGO_CONFIG = """\
[source.crates-io]
replace-with = "debian"
[source.debian]
directory = "/usr/share/cargo/registry"
[net]
offline = true
"""
MAIN_RS = """\
// Reads hjson on stdin with deser_hjson (the crate Lemmy reads lemmy.hjson with); prints it as JSON.
use std::io::Read;
fn main() {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).expect("stdin");
    match deser_hjson::from_str::<serde_json::Value>(&text) {
        Ok(value) => println!("{}", serde_json::to_string(&value).expect("json")),
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(1)
        }
    }
}
"""

BUILD_SCRIPT = f"""\
set -e
export DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
apt-get update -qq
apt-get install -y -qq --no-install-recommends {" ".join(BUILD_PACKAGES)} >/dev/null
cd /opt/hjson-read
cargo build --release -q
install -m 0755 target/release/hjson-read /usr/local/bin/hjson-read
cd /
rm -rf /opt/hjson-read /root/.cargo
apt-get purge -y -qq --auto-remove {" ".join(BUILD_PACKAGES)} rustc >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
"""


def readers_hash() -> str:
    text = "\n".join([f"format={FORMAT}", *PACKAGES, *BUILD_PACKAGES, CARGO_TOML, CARGO_CONFIG, MAIN_RS, BUILD_SCRIPT])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build(out: Path, progress: Callable[[str], None]) -> Path:
    from provision.providers.local import image

    image.check_tools()
    mirror = image.host_mirror()
    work = Path(tempfile.mkdtemp(prefix="readers-build-", dir=out.parent))
    root = work / "root"
    log = out.parent / f"{out.name}.build.log"
    try:
        progress(f"Building the Debian 13 readers chroot from {mirror} (once; about 3 minutes)")
        with open(log, "w") as log_file:
            subprocess.run(
                image.debootstrap_argv(root, mirror, PACKAGES), stdout=log_file, stderr=subprocess.STDOUT, check=True
            )
            project = root / "opt/hjson-read"
            (project / "src").mkdir(parents=True)
            (project / ".cargo").mkdir()
            (project / "Cargo.toml").write_text(CARGO_TOML)
            (project / ".cargo/config.toml").write_text(CARGO_CONFIG)
            (project / "src/main.rs").write_text(MAIN_RS)
            shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")  # apt inside reaches the mirror
            progress("  readers: cargo + deser_hjson inside the chroot, compiling the hjson reader")
            script = (
                f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
                f"chroot {root} /bin/sh -c {_sh_quote(BUILD_SCRIPT)}"
            )
            # a private mount namespace: the mounts vanish with it, nothing is left mounted
            subprocess.run(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                check=True,
            )
        image.clean_rootfs(root)
        os.replace(root, out)
        progress(f"Readers ready: {out}")
        return out
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"building the readers chroot failed ({exc}); log: {log}") from None
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def ensure(directory: Path, progress: Callable[[str], None]) -> Path:
    from provision.providers.local.image import _lock

    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"readers-{readers_hash()}"
    if out.is_dir():
        return out
    with _lock(out.with_name(out.name + ".lock")):
        if out.is_dir():
            return out
        return build(out, progress)


def debian_readers() -> Readers:
    """Debian 13's readers in the cached chroot, built on first use (needs root and debootstrap).
    Call it from a test fixture: it skips (fails under CI=true) where the chroot cannot be built."""
    from conftest import IMAGE_DIR

    from tests.support.render_cases import tool

    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("the readers chroot needs root (scripts/test runs as root or with sudo)")
        pytest.skip("the readers chroot needs root")
    tool("debootstrap")  # skips on a developer machine without it, fails under CI
    return _readers(IMAGE_DIR)


@cache
def _readers(directory: Path) -> Readers:
    return Readers(ensure(directory, lambda line: print(line, flush=True)))


class Readers:
    """Runs each reader in the chroot on files copied into it."""

    def __init__(self, root: Path):
        self.root = root

    def _run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        return subprocess.run(
            [shutil.which("chroot") or "/usr/sbin/chroot", str(self.root), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    def _scratch(self) -> tempfile.TemporaryDirectory:
        return tempfile.TemporaryDirectory(prefix="fedi-read-", dir=self.root / "tmp")

    def _json(self, argv: list[str], stdin: str | None = None):
        result = self._run(argv, stdin)
        if result.returncode != 0:
            raise ReaderError(f"{argv[0]} exited {result.returncode}: {result.stderr.strip()[-500:]}")
        return json.loads(result.stdout)

    def compose(self, app_dir: Path) -> dict:
        """`docker compose config` of a directory holding compose.yaml and its env files: services."""
        with self._scratch() as tmp:
            inner = Path(tmp)
            for item in app_dir.iterdir():
                if item.is_file():
                    shutil.copy(item, inner / item.name)
            where = "/" + str(inner.relative_to(self.root))
            argv = ["docker-compose", "--project-directory", where, "-f", f"{where}/compose.yaml", "config"]
            conf = self._json([*argv, "--format", "json"])
        # `config` prints a literal $ as $$ (so its output stays valid compose): undo exactly that
        return json.loads(json.dumps(conf["services"]).replace("$$", "$"))

    def _with_file(self, text: str, argv_of: Callable[[str], list[str]]):
        with self._scratch() as tmp:
            path = Path(tmp) / "file"
            path.write_text(text, encoding="utf-8")
            return self._json(argv_of("/" + str(path.relative_to(self.root))))

    def ruby_dotenv(self, text: str) -> dict:
        code = 'require "dotenv"; require "json"; puts JSON.generate(Dotenv::Parser.call(File.read(ARGV[0])))'
        return self._with_file(text, lambda p: ["ruby", "-e", code, p])

    def symfony_dotenv(self, text: str) -> dict:
        code = (
            'require "/usr/share/php/Symfony/Component/Dotenv/autoload.php";'
            "echo json_encode((new Symfony\\Component\\Dotenv\\Dotenv())->parse(file_get_contents($argv[1])));"
        )
        return self._with_file(text, lambda p: ["php", "-r", code, p])

    def symfony_mailer_dsn(self, dsn: str) -> dict:
        code = (
            'require "/usr/share/php/Symfony/Component/Mailer/autoload.php";'
            "$d = Symfony\\Component\\Mailer\\Transport\\Dsn::fromString(file_get_contents($argv[1]));"
            'echo json_encode(["scheme" => $d->getScheme(), "host" => $d->getHost(), "user" => $d->getUser(),'
            '"password" => $d->getPassword(), "port" => $d->getPort()]);'
        )
        return self._with_file(dsn, lambda p: ["php", "-r", code, p])

    def hjson(self, text: str):
        return self._json(["hjson-read"], stdin=text)


class ReaderError(Exception):
    """A reader refused the file (its message is in the exception)."""
