"""Shared pieces of the backup tests: render the scripts, a throwaway Postgres cluster, a local S3 (moto).

No tests here. The cluster and moto are real servers on loopback / a unix socket in a temp dir; the
scripts under test are the rendered templates, run with bash exactly as the systemd units run them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest

from provision import apps
from provision.model import ObjectStorage
from provision.sizing import sizing
from provision.spec import InstanceSpec

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("fedi-backup", "fedi-restore", "fedi-cleanup")
SERVER_PATHS = {
    "bundle_dir": "/opt/fedi/bundle",
    "app_dir": "/opt/fedi/app",
    "data_dir": "/srv/fedi",
    "sbin": "/usr/local/sbin",
}


def render_scripts(out: Path, software: str = "mastodon", size: str = "small", storage: bool = False) -> Path:
    """Render templates/backup/<name>.sh.j2 to out/<name> (0755) the way the bundle does."""
    spec = InstanceSpec(software=software, size=size, domain="social.example.org")
    store = (
        ObjectStorage("https://fsn1.your-objectstorage.com", "fsn1", "media", "backups", "AK", "SK")
        if storage
        else None
    )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,  # as provision/render/bundle.py renders them
        lstrip_blocks=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    for name in SCRIPTS:
        text = env.get_template(f"backup/{name}.sh.j2").render(
            spec=spec,
            sizing=sizing(spec),
            secrets={},
            storage=store,
            paths=SERVER_PATHS,
            catalog=apps.all_apps(),
        )
        path = out / name
        path.write_text(text)
        path.chmod(0o755)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_env(path: Path, values: dict[str, str]) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for key, value in values.items():
            f.write(f"{key}={value}\n")
    return path


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_tools() -> None:
    missing = [t for t in ("restic", "bash", "python3") if not shutil.which(t)]
    if pg_bindir() is None:
        missing.append("postgresql (initdb)")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: run scripts/test, which installs them")


@dataclass
class PgCluster:
    root: Path  # 0755 temp dir the cluster user can enter
    bindir: Path
    port: int
    user: str  # the unix user that runs the cluster (postgres when we are root)

    @property
    def env(self) -> dict[str, str]:
        return {"PGHOST": str(self.root / "sock"), "PGPORT": str(self.port), "FEDI_PG_USER": self.user}

    def as_user(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        if os.geteuid() == 0 and self.user != "root":
            argv = ["runuser", "-u", self.user, "--", *argv]
        env = {**os.environ, **self.env}
        return subprocess.run(argv, env=env, check=True, capture_output=True, text=True, **kw)

    def psql(self, db: str, sql: str) -> str:
        argv = [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", db]
        return self.as_user(argv, input=sql).stdout.strip()


@contextlib.contextmanager
def pg_cluster(base: Path) -> Iterator[PgCluster]:
    bindir = pg_bindir()
    assert bindir is not None
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    root = base / "pg"
    (root / "sock").mkdir(parents=True)
    for p in (base, root, root / "sock"):
        p.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, user)
        shutil.chown(root / "sock", user)
    cluster = PgCluster(root, bindir, free_port(), user)
    data = root / "data"
    cluster.as_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    opts = f"-k {root / 'sock'} -p {cluster.port} -c listen_addresses=''"
    cluster.as_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"])
    try:
        yield cluster
    finally:
        subprocess.run(
            ["runuser", "-u", user, "--"] * (os.geteuid() == 0 and user != "root")
            + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
        )


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A local S3 server (moto) on 127.0.0.1; yields its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    s3.create_bucket(Bucket=name)


@dataclass
class Host:
    """One simulated server: rendered scripts, its restic.env, its directories, its database."""

    root: Path
    bin: Path
    env_file: Path
    pg: PgCluster
    app_dir: Path
    bundle_dir: Path
    data_dir: Path
    staging: Path
    state_dir: Path

    def run(self, script: str, *args: str, check: bool = True, extra_env: dict | None = None):
        env = {**os.environ, **self.pg.env, "FEDI_ENV_FILE": str(self.env_file), **(extra_env or {})}
        proc = subprocess.run(
            ["bash", str(self.bin / script), *args], env=env, capture_output=True, text=True, timeout=600
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc


def make_host(base: Path, pg: PgCluster, repository: str, *, app: str = "mastodon", db: str = "mastodon", **env):
    bin_dir = render_scripts(base / "bin", software={"mbin": "kbin"}.get(app, app))
    host = Host(
        root=base,
        bin=bin_dir,
        env_file=base / "restic.env",
        pg=pg,
        app_dir=base / "opt/app",
        bundle_dir=base / "opt/bundle",
        data_dir=base / "srv",
        staging=base / "staging",
        state_dir=base / "state",
    )
    values = {
        "RESTIC_REPOSITORY": repository,
        # A password with characters a shell would interpret: the file must be read literally.
        "RESTIC_PASSWORD": "pa ss$(touch /nonexistent)'\"#x=y",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "FEDI_APP": app,
        "FEDI_DB_NAME": db,
        "FEDI_DB_NAMES": db,  # the test cluster is shared by the tests: dump only this host's database
        "FEDI_KEEP_HOURLY": "0",
        "FEDI_KEEP_DAILY": "14",
        "FEDI_KEEP_WEEKLY": "4",
        "FEDI_KEEP_MONTHLY": "12",
        "FEDI_MEDIA_DAYS": "14",
        "FEDI_PREVIEW_CARD_DAYS": "30",
        "FEDI_ALERT_WEBHOOK": "",
        # Test-only overrides of the server paths (the scripts default to /opt/fedi, /srv/fedi, ...)
        "FEDI_APP_DIR": str(host.app_dir),
        "FEDI_BUNDLE_DIR": str(host.bundle_dir),
        "FEDI_DATA_DIR": str(host.data_dir),
        "FEDI_STAGING": str(host.staging),
        "FEDI_STATE_DIR": str(host.state_dir),
        "FEDI_SBIN": str(bin_dir),
        "RESTIC_CACHE_DIR": str(base / "cache"),
    }
    values.update(env)
    write_env(host.env_file, values)
    return host


@contextlib.contextmanager
def backup_world() -> Iterator[tuple[Path, PgCluster, str]]:
    """A throwaway Postgres cluster and a local S3 server with a ``backups`` bucket, in a 0755 temp dir
    (not pytest's 0700 tmp dir: the cluster runs as the postgres user)."""
    import tempfile

    require_tools()
    base = Path(tempfile.mkdtemp(prefix="fedi-backup-test-"))
    base.chmod(0o755)
    try:
        with pg_cluster(base) as pg, moto_s3() as endpoint:
            make_bucket(endpoint, "backups")
            yield base, pg, endpoint
    finally:
        shutil.rmtree(base, ignore_errors=True)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
