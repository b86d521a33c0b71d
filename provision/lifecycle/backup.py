"""Operator-side backups: run the server's fedi-backup / fedi-restore over SSH and read their JSON.

The server does the work (templates/backup/*.sh.j2, installed in /usr/local/sbin by the playbook);
this module builds the commands as data (pure functions, tested as values), runs them through a
``Runner`` (provision.remote.run by default) and turns their output into typed results.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provision.errors import BackupError, UsageError
from provision.model import BUNDLE_DIR, SBIN, HostAccess, ObjectStorage
from provision.remote.commands import privileged
from provision.timestamps import epoch

ENV_FILE = "/etc/fedi/restic.env"  # installed by the playbook from the bundle's backup/restic.env (0600)
SOURCE_ENV_FILE = "/etc/fedi/restic-source.env"  # another stack's repository settings, during --into only
LAST_BACKUP = "/var/lib/fedi/last-backup"  # ISO 8601 UTC time of the last good backup (fedi status)
LAST_SUMMARY = "/var/lib/fedi/last-backup.json"  # restic's summary of that run
LAST_VERIFY = "/var/lib/fedi/last-verify"  # fedi-restore verify's answer: when, which snapshot, SAME/DIFFERENT
MANUAL_MARK = "/var/lib/fedi/backup-manual"  # `fedi backup now` asked: fedi-backup tags the run manual
BUNDLE_SECRETS = f"{BUNDLE_DIR}/secrets.json"  # the bundle's app secrets; a restore brings back the old one
LOCAL_REPOSITORY = "/var/backups/fedi/restic"  # the repository without a backups bucket
REPOSITORY_KEYS = ("RESTIC_REPOSITORY", "RESTIC_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
BACKUP_TIMEOUT = 6 * 3600  # a oneshot unit on a large instance: hours, never unbounded

Runner = Callable[[HostAccess, list[str]], tuple[int, str, str]]
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---- restic.env ---------------------------------------------------------------------------------------


def parse_env(text: str, source: str = "restic.env") -> dict[str, str]:
    """KEY=value lines, read literally like the scripts' load_env (one layer of matching quotes removed).

    Errors name the line, never its value (the file holds the repository password)."""
    values: dict[str, str] = {}
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise BackupError(f"{source}:{n}: not a KEY=value line")
        key, value = line.split("=", 1)
        if not _KEY.match(key):
            raise BackupError(f"{source}:{n}: bad key")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def render_env(values: dict[str, str]) -> str:
    for key, value in values.items():
        if not _KEY.match(key) or "\n" in value or "\r" in value:
            raise BackupError(f"{key}: cannot be written as one KEY=value line")
    from provision.render.quote import Unrepresentable, envfile

    try:
        return "".join(f"{k}={envfile(v)}\n" for k, v in values.items())  # the bundle's restic.env writer
    except Unrepresentable as exc:
        raise BackupError(f"a value cannot be written as one KEY=value line ({exc})") from None


def repository_env(restic_password: str, storage: ObjectStorage | None, repository: str | None = None) -> str:
    """A stack's repository settings (the keys fedi-restore --from reads), from its secrets and storage."""
    if repository is None:
        repository = f"s3:{storage.endpoint.rstrip('/')}/{storage.backups_bucket}" if storage else LOCAL_REPOSITORY
    return render_env(
        {
            "RESTIC_REPOSITORY": repository,
            "RESTIC_PASSWORD": restic_password,
            "AWS_ACCESS_KEY_ID": storage.access_key if storage else "",
            "AWS_SECRET_ACCESS_KEY": storage.secret_key if storage else "",
        }
    )


# ---- commands (data) ------------------------------------------------------------------------------------


def backup_now_argv() -> list[str]:
    # A Type=oneshot unit: `systemctl start` returns when the run has finished, non-zero if it failed.
    return ["systemctl", "start", "fedi-backup.service"]


def mark_manual_argv() -> list[str]:
    """Before backup_now_argv: the run is the admin's, so fedi-backup tags it manual, not auto."""
    return ["install", "-D", "-m", "0600", "/dev/null", MANUAL_MARK]


def unmark_manual_argv() -> list[str]:
    """After it: a run that never started must not leave the mark for the next scheduled one."""
    return ["rm", "-f", MANUAL_MARK]


def journal_argv(unit: str = "fedi-backup.service", lines: int = 15) -> list[str]:
    return ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"]


def last_summary_argv() -> list[str]:
    return ["cat", LAST_BACKUP, LAST_SUMMARY]


def list_argv() -> list[str]:
    return [f"{SBIN}/fedi-backup", "list", "--json"]


def verify_argv(snapshot: str = "expected") -> list[str]:
    return [f"{SBIN}/fedi-restore", "verify", check_snapshot(snapshot)]


def restore_argv(snapshot: str = "latest", *, safety: bool = True, source_env: str | None = None) -> list[str]:
    argv = [f"{SBIN}/fedi-restore", check_snapshot(snapshot), "--yes"]
    if not safety:
        argv.append("--no-safety-snapshot")
    if source_env:
        argv += ["--from", source_env]
    return argv


def install_source_env_argv() -> list[str]:
    """Write stdin to SOURCE_ENV_FILE, 0600 root (the password never appears in argv)."""
    return ["install", "-D", "-m", "0600", "-o", "root", "-g", "root", "/dev/stdin", SOURCE_ENV_FILE]


def remove_source_env_argv() -> list[str]:
    return ["rm", "-f", SOURCE_ENV_FILE]


def read_env_argv() -> list[str]:
    return ["cat", ENV_FILE]


def status_argvs() -> tuple[list[str], list[str]]:
    """The last good backup's time (a missing file: never), and the unit's last result and next run."""
    show = [
        "systemctl",
        "show",
        "fedi-backup.service",
        "fedi-backup.timer",
        "-p",
        "Result",
        "-p",
        "NextElapseUSecRealtime",
    ]
    return ["cat", LAST_BACKUP], show


def last_verify_argv() -> list[str]:
    """The last verify's record (a missing file: never verified)."""
    return ["cat", LAST_VERIFY]


def schedule_argv() -> list[str]:
    """The backup timer's calendar as systemd runs it (normalized: ``daily`` reads ``*-*-* 00:00:00``)."""
    return ["systemctl", "show", "fedi-backup.timer", "-p", "TimersCalendar", "--value"]


def check_snapshot(snapshot: str) -> str:
    if snapshot not in ("latest", "expected") and not re.fullmatch(r"[0-9a-f]{4,64}", snapshot):
        raise UsageError(f"snapshot: {snapshot!r} is not a snapshot id (hex, from `fedi backup list`) or latest")
    return snapshot


# ---- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    id: str  # full restic snapshot id
    short_id: str
    time: str  # ISO 8601, as restic reports it
    hostname: str
    tags: tuple[str, ...]  # fedi, app:<app>, size:<size>, host:<name>, auto | manual | safety
    size_bytes: int | None  # restore size of the snapshot
    data_added: int | None  # new data this snapshot added to the repository (restic >= 0.17)

    @property
    def kind(self) -> str:
        """safety (before a restore), manual (`fedi backup now`) or scheduled (the timer)."""
        for tag in ("safety", "manual"):
            if tag in self.tags:
                return tag
        return "scheduled"


def parse_snapshots(stdout: str) -> list[Snapshot]:
    try:
        rows = json.loads(stdout)
    except json.JSONDecodeError:
        raise BackupError("fedi-backup list printed something that is not JSON") from None
    return [
        Snapshot(
            id=r["id"],
            short_id=r.get("short_id") or r["id"][:8],
            time=r["time"],
            hostname=r.get("hostname", ""),
            tags=tuple(r.get("tags") or ()),
            size_bytes=r.get("size_bytes"),
            data_added=r.get("data_added"),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class BackupRun:
    last_backup: str  # ISO time of the last good backup (this run)
    snapshot_id: str
    data_added: int  # bytes this run added to the repository (after deduplication)
    total_bytes: int  # bytes this run read


@dataclass(frozen=True)
class BackupStatus:
    last_backup: str  # ISO 8601 UTC of the last good backup; "" = never
    age_hours: float | None  # hours since then (None = never)
    last_result: str  # systemd Result= of the last run: success, exit-code, ...; "" = never ran
    next_run: str  # when the timer fires next, as systemd prints it
    reason: str = ""  # why it is not ok, one line ("" when ok)

    @property
    def ok(self) -> bool:
        return bool(self.last_backup) and self.last_result in ("success", "")

    @property
    def failed(self) -> bool:
        """The last run failed (whatever an older good backup says)."""
        return self.last_result not in ("success", "")

    def line(self) -> str:
        """For `fedi status`: ``ok   backup: ...`` or ``FAIL backup: <the reason>``."""
        age = f"{self.age_hours:.1f}h ago" if self.age_hours is not None else "never"
        if self.ok:
            return f"ok   backup: last good {age}, next {self.next_run or 'not scheduled'}"
        return f"FAIL backup: {self.reason} (last good {age})"


def parse_status(last: str, show: str, now: datetime) -> BackupStatus:
    last = last.strip()
    age = None
    if last:
        age = round((now.timestamp() - epoch(last)) / 3600, 1)
    fields: dict[str, str] = {}
    for line in show.splitlines():
        key, _, value = line.partition("=")
        if value and key not in fields:  # the service's Result comes first; the timer's is "success" too
            fields[key] = value
    result, next_run = fields.get("Result", ""), fields.get("NextElapseUSecRealtime", "")
    reason = ""
    if result not in ("success", ""):
        reason = f"the last backup failed ({result})"
    elif not last:
        reason = "no backup has been taken yet" + (f"; the first runs {next_run}" if next_run else "")
        reason += " (`fedi backup now` takes one)"
    return BackupStatus(last, age, result, next_run, reason)


def failure_reason(journal: str) -> str:
    """The line of the failed run's journal that says why: fedi-backup's own last message (not its
    closing "FAILED" line), else restic's, never systemd's own lines."""
    lines = [line.strip() for line in journal.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("fedi-backup:") and "FAILED (exit" not in line]
    if ours:
        return ours[-1].removeprefix("fedi-backup:").strip()
    systemd = ("fedi-backup.service", "Failed to start", "Starting ", "Finished ", "Started ")
    other = [line for line in lines if not line.startswith(systemd) and "FAILED (exit" not in line]
    return other[-1] if other else ""


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# ---- operations -------------------------------------------------------------------------------------


def default_runner(access: HostAccess, argv: list[str]) -> tuple[int, str, str]:
    from provision.remote import run

    return run(access, argv, timeout=BACKUP_TIMEOUT)


def _last_line(*texts: str) -> str:
    for text in texts:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "no output"


def backup_now(access: HostAccess, runner: Runner | None = None) -> BackupRun:
    runner = runner or default_runner
    runner(access, privileged(mark_manual_argv(), access.user))
    try:
        rc, out, err = runner(access, privileged(backup_now_argv(), access.user))
    finally:
        runner(access, privileged(unmark_manual_argv(), access.user))
    if rc != 0:
        _, jout, _ = runner(access, privileged(journal_argv(), access.user))
        raise BackupError(
            f"the backup failed on {access.address}: {_last_line(jout, err, out)}",
            hint="see `journalctl -u fedi-backup` on the server",
        )
    rc, out, err = runner(access, privileged(last_summary_argv(), access.user))
    if rc != 0:
        raise BackupError(f"the backup ran but its result could not be read: {_last_line(err)}")
    lines = out.strip().splitlines()
    summary: dict[str, Any] = json.loads(lines[-1]) if len(lines) >= 2 else {}
    return BackupRun(
        last_backup=lines[0].strip() if lines else "",
        snapshot_id=summary.get("snapshot_id", ""),
        data_added=int(summary.get("data_added", 0)),
        total_bytes=int(summary.get("total_bytes_processed", 0)),
    )


def list_snapshots(access: HostAccess, runner: Runner | None = None) -> list[Snapshot]:
    runner = runner or default_runner
    rc, out, err = runner(access, privileged(list_argv(), access.user))
    if rc != 0:
        raise BackupError(f"could not list the backups on {access.address}: {_last_line(err, out)}")
    return parse_snapshots(out)


def reachable(outputs: Any) -> HostAccess:
    """The stack's SSH access; BackupError when it has no running server."""
    if not outputs.access.address:
        raise BackupError(f"stack {outputs.stack} has no running server to reach")
    return outputs.access


def status(access: HostAccess, runner: Runner | None = None) -> BackupStatus:
    """For `fedi status` and `fedi backup status`: the age of the last good backup and the unit's state."""
    runner = runner or default_runner
    cat, show = status_argvs()
    rc, last, _ = runner(access, privileged(cat, access.user))
    _, shown, _ = runner(access, privileged(show, access.user))
    st = parse_status(last if rc == 0 else "", shown, datetime.now(UTC))
    if st.failed:
        _, journal, _ = runner(access, privileged(journal_argv(lines=40), access.user))
        why = failure_reason(journal)
        if why:
            st = replace(st, reason=f"the last backup failed: {why}")
    return st


def status_line(access: HostAccess) -> tuple[dict[str, Any] | None, str]:
    """For `fedi status`: the backup state as data (None when it cannot be read) and as one line."""
    from dataclasses import asdict

    from provision.errors import FediError

    try:
        b = status(access)
    except FediError as err:
        return None, f"backup: unknown ({err.line()})"
    return {**asdict(b), "ok": b.ok}, b.line()


def verify(access: HostAccess, snapshot: str = "expected", runner: Runner | None = None) -> dict[str, Any]:
    """Scratch-restore and compare. Returns the report; its "ok" is False on a difference (exit 2).

    ``expected``: the snapshot the live data should match (the one last restored, unless a regular
    backup came after it; else the newest regular one); the report's "compared_with" says which."""
    runner = runner or default_runner
    rc, out, err = runner(access, privileged(verify_argv(snapshot), access.user))
    if rc not in (0, 2):
        raise BackupError(f"verify could not run on {access.address}: {_last_line(err, out)}")
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise BackupError(f"verify printed no report: {_last_line(err, out)}") from None


def restore(
    access: HostAccess, snapshot: str = "latest", *, safety: bool = True, runner: Runner | None = None
) -> dict[str, Any]:
    runner = runner or default_runner
    rc, out, err = runner(access, privileged(restore_argv(snapshot, safety=safety), access.user))
    if rc != 0:
        raise BackupError(f"the restore failed on {access.address}: {_last_line(err, out)}")
    return json.loads(out.strip().splitlines()[-1])


def restore_from(
    access: HostAccess,
    source_env: str,
    snapshot: str = "latest",
    *,
    safety: bool = False,
    runner: Runner | None = None,
    upload: Callable[[HostAccess, list[str], bytes], tuple[int, str, str]] | None = None,
) -> dict[str, Any]:
    """Restore onto ``access`` from another repository (``source_env``: its RESTIC_* / AWS_* lines).

    The settings go to the server through stdin into a 0600 root file, used, then removed."""
    runner = runner or default_runner
    values = parse_env(source_env, source="source repository settings")
    missing = [k for k in ("RESTIC_REPOSITORY", "RESTIC_PASSWORD") if not values.get(k)]
    if missing:
        raise UsageError(f"source repository settings: {', '.join(missing)} missing")
    text = render_env({k: values.get(k, "") for k in REPOSITORY_KEYS})
    send = upload or _upload
    rc, _, err = send(access, privileged(install_source_env_argv(), access.user), text.encode())
    if rc != 0:
        raise BackupError(f"could not put the source repository settings on {access.address}: {_last_line(err)}")
    try:
        argv = privileged(restore_argv(snapshot, safety=safety, source_env=SOURCE_ENV_FILE), access.user)
        rc, out, err = runner(access, argv)
    finally:
        runner(access, privileged(remove_source_env_argv(), access.user))
    if rc != 0:
        raise BackupError(f"the restore failed on {access.address}: {_last_line(err, out)}")
    return json.loads(out.strip().splitlines()[-1])


def _upload(access: HostAccess, argv: list[str], data: bytes) -> tuple[int, str, str]:
    from provision.remote import connect

    with connect(access) as session:
        return session.run(argv, stdin=data, timeout=60)


def read_server_env(access: HostAccess, runner: Runner | None = None) -> str:
    """The server's restic.env (to keep offline: it is what a new server needs to reach the backups)."""
    runner = runner or default_runner
    rc, out, err = runner(access, privileged(read_env_argv(), access.user))
    if rc != 0:
        raise BackupError(f"could not read {ENV_FILE} on {access.address}: {_last_line(err)}")
    parse_env(out, source=ENV_FILE)
    return out


def read_restored_secrets(access: HostAccess, runner: Runner | None = None) -> dict[str, str] | None:
    """The app secrets in the bundle a restore brought back (None if that snapshot's bundle has none).

    Read over the pinned SSH channel as root; the values go to the provider's encrypted store only."""
    runner = runner or default_runner
    rc, out, err = runner(access, privileged(["cat", BUNDLE_SECRETS], access.user))
    if rc != 0:
        if "No such file" in err:
            return None
        raise BackupError(f"could not read {BUNDLE_SECRETS} on {access.address}: {_last_line(err)}")
    try:
        values = json.loads(out)
    except ValueError:
        values = None
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise BackupError(f"{BUNDLE_SECRETS} on {access.address} is not a JSON object of strings")
    return values


def load_env_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--from-env: cannot read {path}: {exc.strerror}") from None
    if path.stat().st_mode & 0o077:
        raise UsageError(f"--from-env: {path} is readable by others; chmod 600 {shlex.quote(str(path))}")
    parse_env(text, source=str(path))
    return text
