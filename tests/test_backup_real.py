"""The rendered backup scripts against real restic, a real Postgres cluster and a local S3 server (moto).

Seed, back up, destroy, restore: identical tables and rows. Deduplication of a second backup, the
retention policy over simulated dates, an unreachable bucket (fails, alerts, deletes nothing local),
and `verify` (scratch database, exact counts, never touches live data).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from test_backup_support import Host, backup_world, free_port, make_host

SEED = """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE accounts (id bigserial PRIMARY KEY, username text NOT NULL UNIQUE, note text);
CREATE TABLE statuses (id bigserial PRIMARY KEY, account_id bigint REFERENCES accounts(id), text text,
                       created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX statuses_text_trgm ON statuses USING gin (text gin_trgm_ops);
CREATE TABLE media (id bigserial PRIMARY KEY, status_id bigint REFERENCES statuses(id), blob bytea);
CREATE TABLE empty_table (id int);
INSERT INTO accounts (username, note) SELECT 'user' || g, md5(g::text) FROM generate_series(1, 500) g;
INSERT INTO statuses (account_id, text)
  SELECT 1 + g % 500, repeat(md5(g::text), 6) FROM generate_series(1, 40000) g;
INSERT INTO media (status_id, blob) SELECT g, decode(repeat(md5(g::text), 16), 'hex') FROM generate_series(1, 3000) g;
"""

FINGERPRINT = """
SELECT string_agg(t || ':' || n || ':' || h, ' ' ORDER BY t) FROM (
  SELECT 'accounts' t, count(*) n, md5(string_agg(a::text, ',' ORDER BY id)) h FROM accounts a
  UNION ALL SELECT 'statuses', count(*), md5(string_agg(s::text, ',' ORDER BY id)) FROM statuses s
  UNION ALL SELECT 'media', count(*), md5(string_agg(m::text, ',' ORDER BY id)) FROM media m
  UNION ALL SELECT 'empty_table', count(*), '' FROM empty_table
) x
"""


@pytest.fixture(scope="module")
def world():
    with backup_world() as w:
        yield w


def seed(host: Host, db: str = "mastodon", owner: str = "mastodon") -> None:
    pg = host.pg
    if not pg.psql("postgres", f"SELECT 1 FROM pg_roles WHERE rolname = '{owner}'"):
        pg.psql("postgres", f"CREATE ROLE {owner} LOGIN PASSWORD 'old-password'")
    pg.psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    pg.psql("postgres", f"CREATE DATABASE {db} OWNER {owner}")
    pg.psql(db, f"SET ROLE {owner};" + SEED)
    for d in (host.app_dir, host.bundle_dir, host.data_dir / "mastodon/public/system/media_attachments"):
        d.mkdir(parents=True, exist_ok=True)
    (host.app_dir / ".env.production").write_text("SECRET_KEY_BASE=abc\nDB_PASS=new-password\n")
    (host.app_dir / "compose.yaml").write_text("name: fedi\nservices: {}\n")
    (host.bundle_dir / "ansible-vars.yml").write_text("fedi_db_user: mastodon\nfedi_db_password: new-password\n")
    (host.data_dir / "mastodon/public/system/media_attachments/1.png").write_bytes(os.urandom(4096))
    (host.data_dir / "postgresql").mkdir(exist_ok=True)
    (host.data_dir / "postgresql/raw-file").write_text("never copied raw")


def snapshots(host: Host) -> list[dict]:
    return json.loads(host.run("fedi-backup", "list", "--json").stdout)


def test_backup_destroy_restore_is_identical(world):
    base, pg, endpoint = world
    # FEDI_DB_NAMES empty: the script finds the cluster's databases itself (as on a server).
    host = make_host(base / "a", pg, f"s3:{endpoint}/backups/a", FEDI_DB_NAMES="")
    seed(host)
    before = pg.psql("mastodon", FINGERPRINT)
    config_before = (host.app_dir / ".env.production").read_bytes()

    run = host.run("fedi-backup", "run")
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["message_type"] == "summary" and summary["data_added"] > 0
    assert (host.state_dir / "last-backup").read_text().strip().endswith("Z")
    assert not list(host.staging.glob("*.dump")), "dumps are removed once uploaded"
    assert oct(host.staging.stat().st_mode & 0o777) == "0o700"

    listed = snapshots(host)
    assert len(listed) == 1
    assert {"fedi", "app:mastodon", "size:small"} <= set(listed[0]["tags"])
    assert listed[0]["size_bytes"] > 1_000_000

    # Disaster: the database, the configuration and the media are gone.
    pg.psql("postgres", "DROP DATABASE mastodon WITH (FORCE)")
    pg.psql("postgres", "ALTER ROLE mastodon PASSWORD 'something-else'")
    (host.app_dir / ".env.production").unlink()
    media = host.data_dir / "mastodon/public/system/media_attachments/1.png"
    media_bytes = media.read_bytes()
    media.unlink()
    (host.data_dir / "postgresql/raw-file").unlink()

    refused = host.run("fedi-restore", "latest", check=False)
    assert refused.returncode != 0 and "--yes" in refused.stderr

    out = host.run("fedi-restore", "latest", "--yes", "--no-safety-snapshot")
    result = json.loads(out.stdout)
    assert "mastodon" in result["databases"] and result["config"] and result["media"]

    assert pg.psql("mastodon", FINGERPRINT) == before
    assert pg.psql("mastodon", "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'") == "1"
    assert pg.psql("mastodon", "SELECT tableowner FROM pg_tables WHERE tablename = 'statuses'") == "mastodon"
    assert (host.app_dir / ".env.production").read_bytes() == config_before
    assert media.read_bytes() == media_bytes
    # The role's password now matches the restored configuration (fedi_db_password).
    shadow = pg.psql("postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'mastodon'")
    assert shadow.startswith("SCRAM-SHA-256$")
    # The raw Postgres files under the data dir are never in a snapshot (the dump is the copy).
    assert not (host.data_dir / "postgresql/raw-file").exists()

    ls = host.run("fedi-restore", "verify")
    report = json.loads(ls.stdout)
    assert report["ok"] and report["differences"] == [] and report["tables"] == 4
    assert report["rows_live"] == report["rows_restored"] == 500 + 40000 + 3000
    assert not pg.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'fedi_verify_%'")


def test_verify_reports_differences_and_leaves_live_data_alone(world):
    base, pg, endpoint = world
    host = make_host(base / "v", pg, f"s3:{endpoint}/backups/v", db="verifydb")
    seed(host, db="verifydb")
    host.run("fedi-backup", "run")
    pg.psql("verifydb", "INSERT INTO accounts (username) VALUES ('late'); DROP TABLE empty_table")
    live_before = pg.psql(
        "verifydb", FINGERPRINT.replace("UNION ALL SELECT 'empty_table', count(*), '' FROM empty_table", "")
    )
    proc = host.run("fedi-backup", "verify", check=False)
    assert proc.returncode == 2, proc.stderr
    report = json.loads(proc.stdout)
    assert not report["ok"]
    assert {d["table"] for d in report["differences"]} == {"public.accounts", "public.empty_table"}
    accounts = next(d for d in report["differences"] if d["table"] == "public.accounts")
    assert (accounts["live"], accounts["restored"]) == (501, 500)
    record = json.loads((host.state_dir / "last-verify").read_text())  # a DIFFERENT answer is recorded too
    assert (record["snapshot"], record["result"]) == (report["snapshot"], "DIFFERENT")
    after = pg.psql(
        "verifydb", FINGERPRINT.replace("UNION ALL SELECT 'empty_table', count(*), '' FROM empty_table", "")
    )
    assert after == live_before
    assert not pg.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'fedi_verify_%'")


def test_restore_takes_a_safety_snapshot_and_restores_the_requested_one(world):
    base, pg, endpoint = world
    host = make_host(base / "s", pg, f"s3:{endpoint}/backups/s", db="safetydb")
    seed(host, db="safetydb")
    host.run("fedi-backup", "run")
    first = pg.psql("safetydb", FINGERPRINT)
    pg.psql("safetydb", "DELETE FROM media; INSERT INTO accounts (username) VALUES ('after-backup')")
    changed = pg.psql("safetydb", FINGERPRINT)

    host.run("fedi-restore", "latest", "--yes")
    assert pg.psql("safetydb", FINGERPRINT) == first
    listed = snapshots(host)
    assert len(listed) == 2
    assert "safety" in listed[0]["tags"] and "safety" not in listed[1]["tags"]

    # The safety snapshot holds what was live before the restore: restoring it brings that back.
    host.run("fedi-restore", listed[0]["short_id"], "--yes", "--no-safety-snapshot")
    assert pg.psql("safetydb", FINGERPRINT) == changed


def test_second_backup_of_unchanged_data_adds_little(world):
    base, pg, endpoint = world
    host = make_host(base / "d", pg, f"s3:{endpoint}/backups/d", db="dedupdb")
    seed(host, db="dedupdb")
    # About 100 MB of dump. The one chunk that holds pg_dump's header (its timestamp is the only byte that
    # changes) is new in the second run, and restic cuts chunks of up to 8 MiB at boundaries that depend on
    # the repository's random chunker polynomial: the whole must be large enough that even an 8 MiB first
    # chunk stays under 10%, as it does for any real database (40 MB failed about one run in six).
    pg.psql(
        "dedupdb", "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 8) AS x FROM generate_series(1, 330000) g"
    )
    first = json.loads(host.run("fedi-backup", "run").stdout.strip().splitlines()[-1])
    second = json.loads(host.run("fedi-backup", "run").stdout.strip().splitlines()[-1])
    assert first["data_added"] > 95_000_000  # a whole 8 MiB chunk (8.4 MB) is under 10% of it
    assert second["data_added"] < first["data_added"] * 0.10, (first["data_added"], second["data_added"])


def test_retention_keeps_what_the_policy_says(world):
    base, pg, endpoint = world
    host = make_host(
        base / "r",
        pg,
        f"s3:{endpoint}/backups/r",
        db="retentiondb",
        FEDI_KEEP_DAILY="3",
        FEDI_KEEP_WEEKLY="2",
        FEDI_KEEP_MONTHLY="2",
    )
    seed(host, db="retentiondb")
    pg.psql("retentiondb", "TRUNCATE media, statuses CASCADE")  # small dumps: this test is about dates
    # Simulated dates (restic backup --time); 2026-02-15 is a Sunday, 2026-02-16 a Monday (ISO week 8).
    times = [
        "2025-12-20 03:30:00",
        "2026-01-05 03:30:00",
        "2026-01-20 03:30:00",
        "2026-01-31 03:30:00",
        "2026-02-09 03:30:00",
        "2026-02-14 03:30:00",
        "2026-02-15 03:30:00",
        "2026-02-16 03:30:00",
        "2026-02-17 03:30:00",
        "2026-02-17 21:00:00",
        "2026-02-18 03:30:00",
        "2026-02-18 15:00:00",
    ]
    for t in times:
        host.run("fedi-backup", "run", "--time", t)
    kept = sorted(s["time"][:16].replace("T", " ") for s in snapshots(host))
    # keep-daily 3: the newest of each of the last 3 days (Feb 18 15:00, Feb 17 21:00, Feb 16)
    # keep-weekly 2: newest of ISO week 8 (Feb 16-22: Feb 18 15:00) and of week 7 (Feb 9-15: Sun Feb 15)
    # keep-monthly 2: newest of February (Feb 18 15:00) and of January (Jan 31)
    assert kept == ["2026-01-31 03:30", "2026-02-15 03:30", "2026-02-16 03:30", "2026-02-17 21:00", "2026-02-18 15:00"]


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        _Receiver.received.append((self.headers.get("Content-Type"), self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_unreachable_bucket_fails_alerts_and_deletes_nothing(world):
    base, pg, _ = world
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        closed = free_port()  # nothing listens there
        host = make_host(
            base / "u",
            pg,
            f"s3:http://127.0.0.1:{closed}/backups",
            db="unreachdb",
            FEDI_ALERT_WEBHOOK=f"http://127.0.0.1:{server.server_port}/hook?token=t",
        )
        seed(host, db="unreachdb")
        host.staging.mkdir(parents=True)
        (host.staging / "unreachdb.dump").write_text("an older dump that must survive")
        files_before = sorted(p for p in host.root.rglob("*") if p.is_file())
        proc = host.run("fedi-backup", "run", check=False)
        assert proc.returncode != 0
        assert "FAILED" in proc.stderr and "nothing local was deleted" in proc.stderr
        files_after = sorted(p for p in host.root.rglob("*") if p.is_file())
        assert set(files_before) <= set(files_after)
        assert (host.staging / "unreachdb.dump").read_text() == "an older dump that must survive"
        assert not (host.state_dir / "last-backup").exists()
        assert pg.psql("unreachdb", "SELECT count(*) FROM accounts") == "500"
        assert _Receiver.received, "the alert webhook was not called"
        content_type, body = _Receiver.received[-1]
        alert = json.loads(body)
        assert content_type == "application/json"
        assert alert["event"] == "backup.failed" and alert["app"] == "mastodon" and alert["exit_code"] != 0
    finally:
        server.shutdown()
        server.server_close()


def test_local_repository_path(world):
    base, pg, _ = world
    repo = base / "l/repo"
    host = make_host(base / "l", pg, str(repo), db="localdb", AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    seed(host, db="localdb")
    host.run("fedi-backup", "run")
    host.run("fedi-backup", "check")
    assert (repo / "config").is_file()
    assert len(snapshots(host)) == 1


def test_restore_into_another_host_with_from(world):
    """Migration: a second host (its own repository) restores from the first host's repository."""
    base, pg, endpoint = world
    old = make_host(base / "m1", pg, f"s3:{endpoint}/backups/m1", db="migratedb")
    seed(old, db="migratedb")
    old.run("fedi-backup", "run")
    fingerprint = pg.psql("migratedb", FINGERPRINT)
    pg.psql("postgres", "DROP DATABASE migratedb WITH (FORCE)")  # the old server is lost
    (old.app_dir / ".env.production").unlink()
    new = make_host(base / "m2", pg, f"s3:{endpoint}/backups/m2", db="migratedb")
    out = new.run("fedi-restore", "latest", "--yes", "--no-safety-snapshot", "--from", str(old.env_file))
    assert json.loads(out.stdout)["databases"] == ["migratedb"]
    assert pg.psql("migratedb", FINGERPRINT) == fingerprint
    assert Path(old.app_dir / ".env.production").is_file()


def test_lemmy_pictrs_repository_and_files_come_back(world):
    base, pg, endpoint = world
    host = make_host(base / "p", pg, f"s3:{endpoint}/backups/p", app="lemmy", db="lemmydb")
    seed(host, db="lemmydb", owner="lemmy")
    sled = host.data_dir / "pictrs/sled-repo"
    files = host.data_dir / "pictrs/files"
    sled.mkdir(parents=True)
    files.mkdir(parents=True)
    (sled / "db").write_bytes(os.urandom(20000))
    (sled / "conf").write_text("segment_size: 524288\n")
    (files / "abc.webp").write_bytes(os.urandom(5000))
    before = {
        p.relative_to(host.data_dir): p.read_bytes() for p in (host.data_dir / "pictrs").rglob("*") if p.is_file()
    }
    out = host.run("fedi-backup", "run")
    assert "copied the pict-rs repository" in out.stderr
    assert not (host.staging / "pictrs-sled-repo").exists(), "the copy is removed once uploaded"
    shutil.rmtree(host.data_dir / "pictrs")
    host.run("fedi-restore", "latest", "--yes", "--no-safety-snapshot")
    after = {p.relative_to(host.data_dir): p.read_bytes() for p in (host.data_dir / "pictrs").rglob("*") if p.is_file()}
    assert after == before


def test_a_snapshot_of_another_app_is_refused_before_anything_changes(world):
    """Restoring a Mastodon snapshot onto a Lemmy server would replace its database and configuration
    with ones its app cannot read: refused, nothing touched."""
    base, pg, endpoint = world
    old = make_host(base / "a1", pg, f"s3:{endpoint}/backups/a1", db="appdb1")
    seed(old, db="appdb1")
    old.run("fedi-backup", "run")
    new = make_host(base / "a2", pg, f"s3:{endpoint}/backups/a2", app="lemmy", db="appdb2")
    seed(new, db="appdb2", owner="lemmy")
    new.run("fedi-backup", "run")
    before = pg.psql("appdb2", FINGERPRINT), (new.app_dir / ".env.production").read_text()
    proc = new.run("fedi-restore", "latest", "--yes", "--from", str(old.env_file), check=False)
    assert proc.returncode != 0
    assert "is of mastodon, this server runs lemmy: nothing was changed" in proc.stderr
    assert (pg.psql("appdb2", FINGERPRINT), (new.app_dir / ".env.production").read_text()) == before
    assert len(snapshots(new)) == 1, "no safety snapshot was taken either"
