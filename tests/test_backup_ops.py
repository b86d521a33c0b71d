"""provision.lifecycle.backup and `fedi backup`: commands as values, and the operations end to end.

The operations run against "a server" that is this machine: the runner strips sudo and maps the
server paths to the test host's, then runs the real rendered scripts (real restic, Postgres, moto).
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_backup_real import FINGERPRINT, seed
from test_backup_support import Host, backup_world, make_host

from provision.cli.app import main
from provision.errors import BackupError, UsageError
from provision.lifecycle import backup
from provision.model import HostAccess, ObjectStorage, StackOutputs
from provision.remote.commands import privileged

ACCESS = HostAccess(address="203.0.113.7", user="fedi")


# ---- commands as values --------------------------------------------------------------------------------


def test_commands_are_data():
    assert privileged(backup.backup_now_argv(), "fedi") == [
        "sudo", "-n", "-H", "--", "systemctl", "start", "fedi-backup.service"
    ]  # fmt: skip
    assert privileged(["true"], user="root") == ["true"]
    assert backup.list_argv() == ["/usr/local/sbin/fedi-backup", "list", "--json"]
    assert backup.verify_argv() == ["/usr/local/sbin/fedi-restore", "verify", "expected"]
    assert backup.verify_argv("latest") == ["/usr/local/sbin/fedi-restore", "verify", "latest"]
    assert backup.mark_manual_argv() == ["install", "-D", "-m", "0600", "/dev/null", "/var/lib/fedi/backup-manual"]
    assert backup.unmark_manual_argv() == ["rm", "-f", "/var/lib/fedi/backup-manual"]
    assert backup.restore_argv("1a2b3c4d") == ["/usr/local/sbin/fedi-restore", "1a2b3c4d", "--yes"]
    assert backup.restore_argv(safety=False, source_env="/etc/fedi/restic-source.env") == [
        "/usr/local/sbin/fedi-restore", "latest", "--yes", "--no-safety-snapshot",
        "--from", "/etc/fedi/restic-source.env",
    ]  # fmt: skip
    assert backup.install_source_env_argv()[-2:] == ["/dev/stdin", "/etc/fedi/restic-source.env"]
    assert backup.journal_argv()[:3] == ["journalctl", "-u", "fedi-backup.service"]
    assert backup.last_verify_argv() == ["cat", "/var/lib/fedi/last-verify"]
    assert backup.schedule_argv() == ["systemctl", "show", "fedi-backup.timer", "-p", "TimersCalendar", "--value"]


def test_status_is_parsed_from_the_server_files():
    now = datetime(2026, 2, 18, 15, 0, tzinfo=UTC)
    service = "Result=success\nNextElapseUSecRealtime=\n"
    show = service + "\nResult=success\nNextElapseUSecRealtime=Thu 2026-02-19 03:30:00 UTC\n"
    st = backup.parse_status("2026-02-18T03:30:00Z\n", show, now)
    assert (st.last_backup, st.age_hours, st.last_result, st.ok) == ("2026-02-18T03:30:00Z", 11.5, "success", True)
    assert st.next_run == "Thu 2026-02-19 03:30:00 UTC"
    failed = backup.parse_status("2026-02-17T03:30:00Z", "Result=exit-code\n", now)
    assert failed.age_hours == 35.5 and not failed.ok
    never = backup.parse_status("", "Result=success\n", now)
    assert never.age_hours is None and not never.ok
    # a fresh stack is not "last run success": it has no backup yet, and says so
    assert never.line() == "FAIL backup: no backup has been taken yet (`fedi backup now` takes one) (last good never)"
    assert st.line() == "ok   backup: last good 11.5h ago, next Thu 2026-02-19 03:30:00 UTC"
    assert failed.reason == "the last backup failed (exit-code)" and failed.line().startswith("FAIL backup: the last")


def test_a_failed_run_names_its_reason():
    journal = """Starting fedi-backup.service - fedi: back up social.example.org to restic...
fedi-backup: the repository at s3:https://x/b does not open with this stack's password (backups kept ...)
fedi-backup: run FAILED (exit 1); nothing local was deleted
fedi-backup.service: Main process exited, code=exited, status=1/FAILURE
fedi-backup.service: Failed with result 'exit-code'.
Failed to start fedi-backup.service - fedi: back up social.example.org to restic.
"""
    assert backup.failure_reason(journal).startswith("the repository at s3:https://x/b does not open")
    restic_only = "Fatal: unable to open repository at s3:https://x/b: Access Denied\n" + journal.splitlines()[-1]
    assert backup.failure_reason(restic_only) == "Fatal: unable to open repository at s3:https://x/b: Access Denied"
    runs = {
        "cat": (0, "2026-02-17T03:30:00Z\n", ""),
        "systemctl": (0, "Result=exit-code\n", ""),
        "journalctl": (0, journal, ""),
    }
    st = backup.status(ACCESS, runner=lambda _a, argv: runs[argv[4]])
    assert not st.ok and st.line().startswith("FAIL backup: the last backup failed: the repository at s3:")


@pytest.mark.parametrize("bad", ["", "--all", "1a2b; rm -rf /", "LATEST", "xyz"])
def test_snapshot_ids_are_validated(bad):
    with pytest.raises(UsageError, match="snapshot:"):
        backup.restore_argv(bad)


def test_repository_env_for_a_bucket_and_for_a_local_path():
    storage = ObjectStorage("https://fsn1.your-objectstorage.com/", "fsn1", "m", "b", "AK", "SK")
    assert backup.parse_env(backup.repository_env("pw", storage)) == {
        "RESTIC_REPOSITORY": "s3:https://fsn1.your-objectstorage.com/b",
        "RESTIC_PASSWORD": "pw",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
    }
    assert backup.parse_env(backup.repository_env("pw", None))["RESTIC_REPOSITORY"] == "/var/backups/fedi/restic"
    with pytest.raises(BackupError):
        backup.render_env({"RESTIC_PASSWORD": "two\nlines"})


def test_parse_snapshots_and_sizes():
    rows = [{"id": "ab" * 32, "short_id": "abababab", "time": "2026-02-18T15:00:00Z", "hostname": "h",
             "tags": ["fedi", "safety"], "size_bytes": 3 * 1024 * 1024, "data_added": None}]  # fmt: skip
    (snap,) = backup.parse_snapshots(json.dumps(rows))
    assert snap.kind == "safety" and snap.size_bytes == 3 * 1024 * 1024
    assert backup.human_size(snap.size_bytes) == "3.0 MiB" and backup.human_size(None) == "?"
    with pytest.raises(BackupError):
        backup.parse_snapshots("restic: not json")


def test_load_env_file_refuses_a_readable_file(tmp_path):
    f = tmp_path / "old.env"
    f.write_text("RESTIC_REPOSITORY=/x\nRESTIC_PASSWORD=p\n")
    f.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        backup.load_env_file(f)
    f.chmod(0o600)
    assert "RESTIC_PASSWORD=p" in backup.load_env_file(f)


# ---- the operations against the real scripts ----------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    with backup_world() as w:
        yield w


@dataclass
class LocalServer:
    """Runs what provision.lifecycle.backup sends to a server on this machine, against one test host."""

    host: Host
    calls: list[list[str]] = field(default_factory=list)
    provider: Any = None

    @property
    def source_env(self) -> Path:
        return self.host.root / "restic-source.env"

    def _map(self, argv: list[str]) -> list[str]:
        mapping = {
            backup.LAST_BACKUP: str(self.host.state_dir / "last-backup"),
            backup.LAST_SUMMARY: str(self.host.state_dir / "last-backup.json"),
            backup.ENV_FILE: str(self.host.env_file),
            backup.SOURCE_ENV_FILE: str(self.source_env),
            backup.BUNDLE_SECRETS: str(self.host.bundle_dir / "secrets.json"),
            backup.MANUAL_MARK: str(self.host.state_dir / "backup-manual"),
            backup.LAST_VERIFY: str(self.host.state_dir / "last-verify"),
        }
        return [mapping.get(a, a) for a in argv]

    def run(self, access: HostAccess, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        assert argv[:4] == ["sudo", "-n", "-H", "--"], argv
        argv = self._map(argv[4:])
        if argv == ["systemctl", "start", "fedi-backup.service"]:
            argv = [f"{backup.SBIN}/fedi-backup"]
        if argv[0].startswith(backup.SBIN + "/"):
            proc = self.host.run(argv[0].rsplit("/", 1)[1], *argv[1:], check=False)
            return proc.returncode, proc.stdout, proc.stderr
        if argv[0] == "journalctl":
            return 0, "fedi-backup: run FAILED (exit 1); nothing local was deleted\n", ""
        if argv[0] in ("cat", "rm", "install"):
            import subprocess

            proc = subprocess.run(argv, capture_output=True, text=True)
            return proc.returncode, proc.stdout, proc.stderr
        raise AssertionError(f"unexpected command {argv}")

    def upload(self, access: HostAccess, argv: list[str], data: bytes) -> tuple[int, str, str]:
        assert self._map(argv[4:])[-1] == str(self.source_env)
        fd = os.open(self.source_env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return 0, "", ""


def test_now_list_verify_restore_through_provision_backup(world):
    base, pg, endpoint = world
    host = make_host(base / "o", pg, f"s3:{endpoint}/backups/o", db="opsdb")
    seed(host, db="opsdb")
    server = LocalServer(host)
    run = backup.backup_now(ACCESS, runner=server.run)
    assert run.last_backup.endswith("Z") and len(run.snapshot_id) >= 8 and run.data_added > 0
    (snap,) = backup.list_snapshots(ACCESS, runner=server.run)
    assert snap.id.startswith(run.snapshot_id) and snap.kind == "manual" and snap.size_bytes > 0
    assert not (host.state_dir / "backup-manual").exists()
    report = backup.verify(ACCESS, runner=server.run)
    assert report["ok"] and report["database"] == "opsdb"
    # the server records the answer where every admin reads it (fedi covenant): when, which, SAME
    rc, text, _ = server.run(ACCESS, privileged(backup.last_verify_argv(), "fedi"))
    record = json.loads(text)
    assert rc == 0 and (record["snapshot"], record["result"], record["compared_with"]) == (
        snap.id,
        "SAME",
        "newest-backup",
    )
    assert (
        record["verified_at"].endswith("Z") and stat.S_IMODE((host.state_dir / "last-verify").stat().st_mode) == 0o644
    )
    assert (report["snapshot"], report["compared_with"]) == (snap.id, "newest-backup")
    before = pg.psql("opsdb", FINGERPRINT)
    pg.psql("opsdb", "DELETE FROM media")
    result = backup.restore(ACCESS, snap.short_id, runner=server.run)
    assert result["snapshot"] == snap.id and pg.psql("opsdb", FINGERPRINT) == before
    kinds = sorted(s.kind for s in backup.list_snapshots(ACCESS, runner=server.run))
    assert kinds == ["manual", "safety"]
    # The safety snapshot (of the rows being replaced) is the newest; verify compares with the restored one.
    report = backup.verify(ACCESS, runner=server.run)
    assert (report["snapshot"], report["compared_with"], report["ok"]) == (snap.id, "restored", True)
    assert report["restored_at"].endswith("Z")
    # A scheduled backup after the restore is what the live data matches from then on.
    host.run("fedi-backup")
    newest = backup.list_snapshots(ACCESS, runner=server.run)[0]
    assert newest.kind == "scheduled"
    report = backup.verify(ACCESS, runner=server.run)
    assert (report["snapshot"], report["compared_with"], report["ok"]) == (newest.id, "newest-backup", True)


def test_failed_backup_is_one_clear_error(world):
    base, pg, _ = world
    host = make_host(base / "f", pg, "s3:http://127.0.0.1:9/backups", db="faildb")
    seed(host, db="faildb")
    with pytest.raises(BackupError, match="the backup failed on 203.0.113.7: fedi-backup: run FAILED"):
        backup.backup_now(ACCESS, runner=LocalServer(host).run)


def test_restore_from_another_repository_removes_the_settings_afterwards(world):
    base, pg, endpoint = world
    old = make_host(base / "x1", pg, f"s3:{endpoint}/backups/x1", db="movedb")
    seed(old, db="movedb")
    backup.backup_now(ACCESS, runner=LocalServer(old).run)
    fingerprint = pg.psql("movedb", FINGERPRINT)
    pg.psql("movedb", "TRUNCATE media")
    new = LocalServer(make_host(base / "x2", pg, f"s3:{endpoint}/backups/x2", db="movedb"))
    source = backup.parse_env(old.env_file.read_text())
    env_text = backup.repository_env(source["RESTIC_PASSWORD"], None, source["RESTIC_REPOSITORY"])
    env_text = env_text.replace('AWS_ACCESS_KEY_ID=""\n', 'AWS_ACCESS_KEY_ID="test"\n').replace(
        'AWS_SECRET_ACCESS_KEY=""\n', 'AWS_SECRET_ACCESS_KEY="test"\n'
    )
    result = backup.restore_from(ACCESS, env_text, runner=new.run, upload=new.upload, safety=False)
    assert result["databases"] == ["movedb"] and pg.psql("movedb", FINGERPRINT) == fingerprint
    assert not new.source_env.exists(), "the other stack's settings are removed after the restore"
    assert ["sudo", "-n", "-H", "--", "rm", "-f", backup.SOURCE_ENV_FILE] in new.calls


# ---- the CLI -------------------------------------------------------------------------------------------


class OneStackProvider:
    name = "local"
    backend = None  # its state stays on this computer

    def __init__(self, outputs: StackOutputs):
        self._outputs = outputs
        self.adopted: list[tuple[str, dict[str, str]]] = []

    def outputs(self, stack: str) -> StackOutputs:
        assert stack == self._outputs.stack
        return self._outputs

    def adopt_secrets(self, stack: str, old: dict[str, str]) -> None:
        self.adopted.append((stack, old))


_COUNTER = itertools.count()


@pytest.fixture
def cli_host(world, monkeypatch, tmp_path):
    base, pg, endpoint = world
    name = f"c{next(_COUNTER)}"
    host = make_host(base / name, pg, f"s3:{endpoint}/backups/{name}", db="clidb")
    seed(host, db="clidb")
    server = LocalServer(host, provider=OneStackProvider(StackOutputs("social-example-org", "local", ACCESS)))
    monkeypatch.setattr("provision.cli.target.make_provider", lambda *a, **k: server.provider)
    monkeypatch.setattr(backup, "default_runner", server.run)
    monkeypatch.setattr(backup, "_upload", server.upload)
    monkeypatch.setenv("FEDI_STATE_DIR", str(tmp_path / "state"))
    return host, server


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["backup", *args, "--stack", "social-example-org", "--provider", "local"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_now_list_verify_env(cli_host, capsys, tmp_path):
    host, _ = cli_host
    rc, out, err = _cli(capsys, "now", "--json")
    assert rc == 0, err
    assert json.loads(out)["data_added"] > 0
    rc, out, _ = _cli(capsys, "list")
    assert rc == 0 and "manual" in out and "scheduled" not in out and "MiB" in out
    rc, out, _ = _cli(capsys, "verify", "--json")
    assert rc == 0 and json.loads(out)["ok"]
    rc, out, _ = _cli(capsys, "verify")
    assert rc == 0 and "the newest regular backup" in out and out.rstrip().endswith("verify: SAME")
    saved = tmp_path / "saved.env"
    rc, _, err = _cli(capsys, "env", "--out", str(saved))
    assert rc == 0 and "0600" in err
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text() == host.env_file.read_text()


def test_cli_restore_asks_and_a_no_changes_nothing(cli_host, capsys, monkeypatch):
    host, server = cli_host
    _cli(capsys, "now")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    rc, _, err = _cli(capsys, "restore")
    assert rc == 9 and "nothing was changed" in err
    assert not any("fedi-restore" in " ".join(c) for c in server.calls)
    rc, out, err = _cli(capsys, "restore", "--yes", "--json")
    assert rc == 0, err
    assert json.loads(out)["databases"] == ["clidb"]


def test_cli_restore_from_saved_settings_adopts_the_restored_app_secrets(cli_host, capsys, tmp_path):
    """`--from-env` (this computer is lost too): the stack keeps the app secrets of the restored bundle."""
    host, server = cli_host
    secrets_file = host.bundle_dir / "secrets.json"
    old = {"db_password": "old-db-password", "mastodon_otp_secret": "old-otp-secret"}
    secrets_file.write_text(json.dumps(old))
    secrets_file.chmod(0o600)
    assert _cli(capsys, "now")[0] == 0
    saved = tmp_path / "saved.env"
    assert _cli(capsys, "env", "--out", str(saved))[0] == 0
    secrets_file.write_text(json.dumps({"db_password": "this-servers-own"}))  # the rebuilt server's bundle
    rc, out, err = _cli(capsys, "restore", "--from-env", str(saved), "--no-safety-snapshot", "--yes", "--json")
    assert rc == 0, err
    assert json.loads(out)["config"] is True
    assert server.provider.adopted == [("social-example-org", old)]
    assert "now keeps the app secrets" in err
    assert "old-db-password" not in out + err and "old-otp-secret" not in out + err


def test_cli_restore_from_a_snapshot_without_secrets_json_warns_and_adopts_nothing(cli_host, capsys, tmp_path):
    host, server = cli_host
    (host.bundle_dir / "secrets.json").unlink(missing_ok=True)
    assert _cli(capsys, "now")[0] == 0
    saved = tmp_path / "saved.env"
    assert _cli(capsys, "env", "--out", str(saved))[0] == 0
    rc, _, err = _cli(capsys, "restore", "--from-env", str(saved), "--no-safety-snapshot", "--yes")
    assert rc == 0, err
    assert "holds no secrets.json" in err and server.provider.adopted == []


def test_restored_secrets_that_are_not_a_json_object_of_strings_are_refused(tmp_path):
    def runner(_access, argv):
        return 0, '{"db_password": 5}', ""

    with pytest.raises(BackupError, match="not a JSON object of strings"):
        backup.read_restored_secrets(ACCESS, runner=runner)
    assert backup.read_restored_secrets(ACCESS, runner=lambda *_: (1, "", "cat: x: No such file or directory")) is None
    with pytest.raises(BackupError, match="could not read"):
        backup.read_restored_secrets(ACCESS, runner=lambda *_: (1, "", "sudo: a password is required"))


def test_the_restored_secrets_file_is_where_the_bundle_puts_it():
    from provision.lifecycle import stack as lifecycle
    from provision.render.bundle import SECRETS_FILE

    assert f"{lifecycle.BUNDLE_DIR}/{SECRETS_FILE}" == backup.BUNDLE_SECRETS
