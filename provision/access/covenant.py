"""The Mastodon Server Covenant's operational promises, checked per stack (`fedi covenant`, `fedi status`).

Pure: the facts come in (read from the server and the stack's record by the CLI), the judgement goes
out as typed items, each failing one with the exact command that fixes it. What fedi cannot judge
(moderation, the promise of three months' notice before a shutdown) is named as such, never passed.

Thresholds, and why:
- Daily backups: the timer's calendar fires every day of every month (systemd's normalized form
  ``*-*-* ...``; every size's schedule is daily or more often), and the last good backup is younger
  than ``BACKUP_MAX_HOURS`` = 26: a day, plus the timer's randomized delay (5 minutes) and the time a
  run takes before it records its end (minutes to an hour on a large instance), with room to spare.
  A missed day is 48 hours; 26 catches it the same morning.
- A restore verified within ``VERIFY_MAX_DAYS`` = 30 days, with the answer SAME.
- Funding: the co-op's reserve covers its shortfall for ``RUNWAY_MIN_MONTHS`` = 3 months (the
  Covenant's notice period), or the dues cover the costs (no shortfall).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BACKUP_MAX_HOURS = 26
VERIFY_MAX_DAYS = 30
RUNWAY_MIN_MONTHS = 3
EXIT_FAILED = 11  # `fedi covenant`: at least one promise is not met (cron can act on it)

OK, FAIL, UNKNOWN, NOT_CONFIGURED = "ok", "FAIL", "unknown", "not configured"

NOT_JUDGED = (
    "moderation (a code of conduct, moderators who act on reports): fedi cannot judge it",
    "three months' notice before shutting down: a promise the co-op makes; fedi cannot judge it",
)


@dataclass(frozen=True)
class Item:
    key: str  # backups | emergency_access | restore_verified | funding
    state: str  # ok | FAIL | unknown (could not be read) | not configured
    detail: str  # one line: what was found
    fix: str = ""  # the exact command that fixes it ("" when ok)

    @property
    def failed(self) -> bool:
        return self.state in (FAIL, UNKNOWN)

    def line(self) -> str:
        mark = {OK: "ok  ", FAIL: "FAIL", UNKNOWN: "FAIL", NOT_CONFIGURED: "----"}[self.state]
        return f"{mark} {self.key.replace('_', ' ')}: {self.detail}" + (f"\n       fix: {self.fix}" if self.fix else "")


# ---- keys: whose are they ----------------------------------------------------------------------------


def key_fingerprint(line: str) -> str:
    """SHA256 fingerprint of an SSH public key line (as ssh-keygen prints it), or of an age recipient."""
    fields = line.split()
    if fields and fields[0].startswith("age1"):
        return "age:" + base64.b64encode(hashlib.sha256(fields[0].encode()).digest()).decode().rstrip("=")
    blob = base64.b64decode(fields[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def own_keys(home: Path | None = None) -> set[str]:
    """Fingerprints of this user's own public keys (~/.ssh/*.pub): a kit or admin login with one of
    them is the operator's own, not another person's."""
    found = set()
    for pub in sorted((home or Path.home()).joinpath(".ssh").glob("*.pub")):
        try:
            found.add(key_fingerprint(pub.read_text().strip()))
        except (ValueError, IndexError, OSError):
            continue
    return found


def kit_record(recipients: list[str], threshold: int, exported: str, own: set[str]) -> dict[str, Any]:
    """What `fedi kit export` keeps with the stack: when, to which keys, how many open it. No secret."""
    prints = [key_fingerprint(r) for r in recipients]
    trustees = [{"fingerprint": p, "own": p in own} for p in prints]
    return {"exported": exported, "threshold": threshold or 1, "trustees": trustees}


# ---- the items ----------------------------------------------------------------------------------------

_DAILY = re.compile(r"^\*-\*-\* \S+( \S+)?$")  # every day of every month, any time(s), maybe a time zone


def calendars(timers_calendar: str) -> list[str]:
    """OnCalendar expressions from `systemctl show -p TimersCalendar --value`."""
    return [m.strip() for m in re.findall(r"OnCalendar=([^;]+);", timers_calendar)]


def is_daily(calendar: str) -> bool:
    return bool(_DAILY.match(calendar.strip()))


def backups_item(schedule: str | None, status: Any, flags: str, error: str = "") -> Item:
    """``schedule``: TimersCalendar as systemd shows it; ``status``: provision.backup.BackupStatus."""
    if error or status is None or schedule is None:
        return Item("backups", UNKNOWN, f"could not be read: {error or 'no answer'}", f"fedi backup status {flags}")
    cals = calendars(schedule)
    if not any(is_daily(c) for c in cals):
        what = ", ".join(cals) or "no backup timer"
        return Item("backups", FAIL, f"the schedule is not daily ({what})", f"fedi up {flags}")
    when = f"schedule {cals[0]}"
    if status.failed:
        return Item("backups", FAIL, f"{status.reason}; {when}", f"fedi backup now {flags}")
    if status.age_hours is None:
        return Item("backups", FAIL, f"no good backup yet; {when}", f"fedi backup now {flags}")
    if status.age_hours > BACKUP_MAX_HOURS:
        detail = f"the last good backup is {status.age_hours:.1f} h old (more than {BACKUP_MAX_HOURS} h); {when}"
        return Item("backups", FAIL, detail, f"fedi backup now {flags}")
    return Item("backups", OK, f"last good {status.age_hours:.1f} h ago (at most {BACKUP_MAX_HOURS} h); {when}")


def access_item(admins: list[dict[str, Any]], kits: list[dict[str, Any]], own: set[str], flags: str) -> Item:
    """Another person than the operator can reach the instance: an admin login, or a kit they can open."""
    others = [a["name"] for a in admins if a.get("fingerprint") not in own]
    held = []
    for k in kits:
        theirs = [t for t in k.get("trustees", []) if not t.get("own")]
        if len(theirs) >= int(k.get("threshold") or 1):
            held.append(f"kit of {k.get('exported', '?')[:10]} held by {len(theirs)} trustee(s)")
    if others or held:
        parts = ([f"admins with server access: {', '.join(others)}"] if others else []) + held
        return Item("emergency_access", OK, "; ".join(parts))
    detail = "this instance depends on one person: no other admin has server access and no recovery kit is held"
    detail += " by anyone else"
    fix = f"fedi admins add NAME --ssh-key THEIR_KEY.pub {flags}"
    fix += f"  (or: fedi kit export --to THEIR_KEY.pub --out kits/ {flags})"
    return Item("emergency_access", FAIL, detail, fix)


def verify_item(record: dict[str, Any] | None, now: float, flags: str, error: str = "") -> Item:
    """``record``: the server's last-verify (None: never verified there)."""
    from provision.timestamps import epoch

    fix = f"fedi backup verify {flags}"
    if error:
        return Item("restore_verified", UNKNOWN, f"could not be read: {error}", fix)
    if not record:
        return Item("restore_verified", FAIL, "no restore of this server's backups was ever verified", fix)
    at = record.get("verified_at", "")
    days = (now - epoch(at)) / 86400
    snap = str(record.get("snapshot", ""))[:8]
    what = f"snapshot {snap} verified {at} ({days:.0f} days ago): {record.get('result')}"
    if record.get("result") != "SAME":
        return Item("restore_verified", FAIL, what, f"fedi backup now {flags} && fedi backup verify {flags}")
    if days > VERIFY_MAX_DAYS:
        return Item("restore_verified", FAIL, f"{what}; more than {VERIFY_MAX_DAYS} days ago", fix)
    return Item("restore_verified", OK, what)


COOP_HINT = "set [coop] dues, members and reserve_balance in fedi.toml (see the README's dues section)"


def funding_item(report: Any, basis: str) -> Item:
    """``report``: provision.dues.DuesReport of the co-op, or None without a [coop] table (fedi.toml's
    [coop] is checked when the file is read: a bad one never gets here)."""
    if report is None and basis:
        return Item("funding", UNKNOWN, f"the cost of {basis} could not be figured", "fedi coop dues")
    if report is None:
        return Item("funding", NOT_CONFIGURED, f"no [coop] in fedi.toml: {COOP_HINT}")
    d = report.as_dict()
    if report.runway_months is None:
        return Item("funding", OK, f"the dues cover the costs of {basis} (funded {d['funding_percent']:g}%)")
    months = d["runway_months"]
    detail = (
        f"a shortfall of {-d['surplus_month']:.2f} {report.currency} a month on {basis}; the reserve of "
        f"{d['reserve_balance']:.2f} covers {months:g} months"
    )
    if months < RUNWAY_MIN_MONTHS:
        detail += f" (less than the {RUNWAY_MIN_MONTHS} months' notice the Covenant promises)"
        fix = "fedi coop dues  (the paying members that cover the cost; then raise [coop] members or reserve_balance)"
        return Item("funding", FAIL, detail, fix)
    return Item("funding", OK, detail + f" (at least {RUNWAY_MIN_MONTHS})")


@dataclass(frozen=True)
class Report:
    stack: str
    domain: str
    items: tuple[Item, ...]

    @property
    def ok(self) -> bool:
        return not any(i.failed for i in self.items)

    def item(self, key: str) -> Item:
        return next(i for i in self.items if i.key == key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "domain": self.domain,
            "ok": self.ok,
            "items": [{**asdict(i), "failed": i.failed} for i in self.items],
            "not_judged": list(NOT_JUDGED),
        }

    def text(self) -> str:
        lines = [f"{self.stack} ({self.domain}): " + ("meets the Covenant's checked promises" if self.ok else "FAILS")]
        lines += ["  " + i.line() for i in self.items]
        lines += [f"  not judged: {n}" for n in NOT_JUDGED]
        return "\n".join(lines)


def one_person(report: Report) -> str:
    """For `fedi status`: the plain sentence when nobody else could take the instance over, else ""."""
    item = report.item("emergency_access")
    if item.state != FAIL:
        return ""
    return f"WARNING: {item.detail}. Run: {item.fix}"
