"""`fedi covenant` (provision/access/covenant.py, provision/cli/covenant.py): a stack that meets every checked
promise, and one that fails each, one by one, through the CLI with the local provider's real state.

The server's answers (the backup timer's calendar as systemd shows it, the last good backup, the unit's
last result, the last verify's record) come from a table here; the real server writes and answers them
in tests/test_backup_ops.py (the scripts) and tests/test_e2e_local.py (a booted machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from decimal import Decimal

import pytest
from test_cli_backends import backends  # noqa: F401  (the offline Hetzner fixture)

from provision.access import admins, covenant
from provision.billing.cost import monthly_cost
from provision.billing.dues import compute_dues, parse_coop
from provision.cli import app as cli
from provision.lifecycle import backup
from provision.providers.local.provider import LocalProvider
from provision.spec import build_spec
from provision.timestamps import utc_iso

DOMAIN = "covenant.example.org"
HOUR = 3600.0
DAILY = "{ OnCalendar=*-*-* 03:30:00 ; next_elapse=Mon 2026-12-07 03:30:00 UTC }"
COOP_OK = "[coop]\ndues = 5\nperiod = 'month'\nmembers = 10\n"
COOP_SHORT = "[coop]\ndues = 1\nperiod = 'year'\nmembers = 2\nreserve_balance = 2\n"


@pytest.mark.parametrize(
    ("calendar", "daily"),
    [
        ("*-*-* 03:30:00", True),  # tiny, small
        ("*-*-* 00/6:15:00", True),  # medium
        ("*-*-* *:15:00", True),  # large
        ("*-*-* 03:30:00 UTC", True),
        ("Sun *-*-* 05:00:00", False),  # weekly
        ("*-*-01 00:00:00", False),  # monthly
        ("Mon..Fri *-*-* 03:00:00", False),
        ("", False),
    ],
)
def test_a_schedule_is_daily_when_it_fires_every_day(calendar, daily):
    assert covenant.is_daily(calendar) is daily


def test_calendars_are_read_from_systemd_s_answer():
    two = DAILY + " { OnCalendar=Sun *-*-* 05:00:00 ; next_elapse=n/a }"
    assert covenant.calendars(two) == ["*-*-* 03:30:00", "Sun *-*-* 05:00:00"]
    assert covenant.calendars("") == []


def test_funding_against_three_months():
    cost = monthly_cost(("tiny", "mastodon", "fsn1"))  # 12.65 EUR gross a month (the README's bill)
    ok = covenant.funding_item(compute_dues(parse_coop({"dues": 5, "period": "month", "members": 10}), cost), "x")
    assert ok.state == "ok" and "the dues cover the costs" in ok.detail
    # 2 members at 1 EUR a month: a shortfall of about 10.65 a month; 40 EUR covers about 3.8 months, 20 not 2
    short = {"dues": 1, "period": "month", "members": 2}
    enough = covenant.funding_item(compute_dues(parse_coop({**short, "reserve_balance": 40}), cost), "x")
    assert enough.state == "ok" and "(at least 3)" in enough.detail
    scant = covenant.funding_item(compute_dues(parse_coop({**short, "reserve_balance": 20}), cost), "x")
    assert scant.failed and "less than the 3 months' notice" in scant.detail and scant.fix.startswith("fedi coop dues")
    assert compute_dues(parse_coop({**short, "reserve_balance": 20}), cost).runway_months < Decimal(3)
    absent = covenant.funding_item(None, "")
    assert absent.state == "not configured" and not absent.failed and "set [coop] dues" in absent.detail
    unknown = covenant.funding_item(None, "stack x")  # [coop] set, but the stack's cost is not known
    assert unknown.failed and unknown.detail == "the cost of stack x could not be figured"


# ---- through the CLI ------------------------------------------------------------------------------------


class Server:
    """What the stack's server answers to fedi's reads: a table the test sets, every call kept."""

    def __init__(self):
        self.calendar = DAILY
        self.last_backup = utc_iso(time.time() - 3 * HOUR)
        self.result = "success"
        self.verify: dict | None = {
            "verified_at": utc_iso(time.time() - 2 * 86400),
            "snapshot": "ab" * 32,
            "snapshot_time": utc_iso(time.time() - 3 * 86400),
            "compared_with": "newest-backup",
            "result": "SAME",
        }
        self.calls: list[list[str]] = []

    def run(self, access, argv):
        self.calls.append(argv)
        assert argv[:4] == ["sudo", "-n", "-H", "--"], argv
        argv = argv[4:]
        if argv == ["cat", backup.LAST_BACKUP]:
            return (0, self.last_backup + "\n", "") if self.last_backup else (1, "", "No such file")
        if argv == backup.schedule_argv():
            return 0, self.calendar + "\n", ""
        if argv[:2] == ["systemctl", "show"]:
            return 0, f"Result={self.result}\nNextElapseUSecRealtime=\n\nResult=success\n", ""
        if argv[0] == "journalctl":
            return 0, "fedi-backup: the repository does not open\n", ""
        if argv == ["cat", backup.LAST_VERIFY]:
            return (0, json.dumps(self.verify), "") if self.verify else (1, "", "No such file")
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def world(monkeypatch, tmp_path):
    """A local stack as `fedi up` records it, its server's answers, and fedi.toml with [coop]."""
    for env in ("FEDI_STATE_DIR", "FEDI_CACHE_DIR", "FEDI_CONFIG_DIR", "HOME"):
        monkeypatch.setenv(env, str(tmp_path / env.lower()))
    monkeypatch.delenv("FEDI_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fedi.toml").write_text(COOP_OK)
    spec = build_spec({"software": "mastodon", "size": "tiny", "domain": DOMAIN, "provider": "local"})
    prov = LocalProvider()
    secrets = prov.secrets(spec)
    prov._store().update(spec.stack_name, address="10.248.0.2", host_key=secrets["ssh_host_ed25519_key_pub"])
    server = Server()
    monkeypatch.setattr(backup, "default_runner", server.run)
    return spec, prov, server, tmp_path


def add_admin(prov, spec, name="bob"):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    admin = admins.make(name, line, "mastodon", [], added=utc_iso())
    prov.set_admins(spec.stack_name, admins.to_records([admin]))
    return line


def covenant_json(capsys, *extra):
    rc = cli.main(["covenant", "--domain", DOMAIN, "--json", *extra])
    out, err = capsys.readouterr()
    data = json.loads(out)
    (stack,) = data["stacks"]
    return rc, {i["key"]: i for i in stack["items"]}, stack, err


def test_a_stack_that_meets_every_item(world, capsys):
    spec, prov, server, _ = world
    add_admin(prov, spec)
    rc, items, stack, err = covenant_json(capsys)
    assert rc == 0, err
    assert stack["ok"] and all(i["state"] == "ok" and not i["fix"] for i in items.values()), items
    assert "last good 3.0 h ago (at most 26 h)" in items["backups"]["detail"]
    assert items["emergency_access"]["detail"] == "admins with server access: bob"
    assert "SAME" in items["restore_verified"]["detail"]
    assert "moderation" in stack["not_judged"][0] and "three months' notice" in stack["not_judged"][1]
    # the reads are the server's own files and systemd's answer, over the pinned channel as root
    assert ["sudo", "-n", "-H", "--", *backup.schedule_argv()] in server.calls


def failing(server, prov, spec, root, what):
    """Break exactly one promise of a stack that meets them all."""
    add_admin(prov, spec)
    if what == "weekly schedule":
        server.calendar = "{ OnCalendar=Sun *-*-* 03:30:00 ; next_elapse=Sun 2026-12-13 03:30:00 UTC }"
    elif what == "no backup timer":
        server.calendar = ""
    elif what == "old backup":
        server.last_backup = utc_iso(time.time() - 27 * HOUR)
    elif what == "failed backup":
        server.result = "exit-code"
    elif what == "no backup":
        server.last_backup = ""
    elif what == "one person":
        prov.set_admins(spec.stack_name, [])
    elif what == "never verified":
        server.verify = None
    elif what == "verified too long ago":
        server.verify["verified_at"] = utc_iso(time.time() - 31 * 86400)
    elif what == "verified DIFFERENT":
        server.verify["result"] = "DIFFERENT"


CASES = [
    ("weekly schedule", "backups", "the schedule is not daily (Sun *-*-* 03:30:00)", "fedi up --domain"),
    ("no backup timer", "backups", "the schedule is not daily (no backup timer)", "fedi up --domain"),
    ("old backup", "backups", "27.0 h old (more than 26 h)", "fedi backup now --domain"),
    ("failed backup", "backups", "the last backup failed: the repository does not open", "fedi backup now --domain"),
    ("no backup", "backups", "no good backup yet", "fedi backup now --domain"),
    ("one person", "emergency_access", "this instance depends on one person", "fedi admins add NAME --ssh-key"),
    ("never verified", "restore_verified", "was ever verified", "fedi backup verify --domain"),
    ("verified too long ago", "restore_verified", "more than 30 days ago", "fedi backup verify --domain"),
    ("verified DIFFERENT", "restore_verified", ": DIFFERENT", "fedi backup now --domain"),
]


@pytest.mark.parametrize(("what", "key", "detail", "fix"), CASES, ids=[c[0] for c in CASES])
def test_a_stack_that_fails_one_item(world, capsys, what, key, detail, fix):
    spec, prov, server, root = world
    failing(server, prov, spec, root, what)
    rc, items, stack, _ = covenant_json(capsys)
    assert rc == covenant.EXIT_FAILED == 11 and not stack["ok"]
    assert [k for k, i in items.items() if i["failed"]] == [key], items
    assert detail in items[key]["detail"] and items[key]["fix"].startswith(fix)
    assert DOMAIN in items[key]["fix"] or key == "funding"


def test_every_stack_without_a_name(world, capsys):
    spec, prov, _, _ = world
    add_admin(prov, spec)
    rc = cli.main(["covenant", "--provider", "local", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["ok"] and [s["stack"] for s in data["stacks"]] == [spec.stack_name]


def test_funding_not_configured_says_what_to_set_and_does_not_fail(world, capsys):
    spec, prov, _, root = world
    add_admin(prov, spec)
    (root / "fedi.toml").write_text("")
    rc, items, _, _ = covenant_json(capsys)
    assert rc == 0 and items["funding"]["state"] == "not configured"
    assert "set [coop] dues, members and reserve_balance in fedi.toml" in items["funding"]["detail"]


def test_a_bad_coop_table_is_one_line(world, capsys):
    _, _, _, root = world
    (root / "fedi.toml").write_text("[coop]\nmembers = 3\n")
    rc = cli.main(["covenant", "--domain", DOMAIN])
    out, err = capsys.readouterr()
    assert rc == 2 and not out and err.strip().splitlines() == [err.strip()] and "coop/dues: is required" in err


def test_an_unreachable_server_is_a_failure_not_a_pass(world, capsys, monkeypatch):
    spec, prov, server, _ = world
    add_admin(prov, spec)

    def down(access, argv):
        from provision.errors import RemoteError

        raise RemoteError(f"cannot reach {access.address}:22")

    monkeypatch.setattr(backup, "default_runner", down)
    rc, items, _, _ = covenant_json(capsys)
    assert rc == 11 and items["backups"]["state"] == items["restore_verified"]["state"] == "unknown"
    assert "cannot reach 10.248.0.2:22" in items["backups"]["detail"]


@pytest.mark.skipif(shutil.which("age") is None, reason="age is not installed (scripts/test installs it)")
def test_a_kit_held_by_another_person_is_emergency_access_one_to_oneself_is_not(world, capsys, tmp_path):
    spec, prov, _, _ = world
    home_ssh = tmp_path / "home" / ".ssh"
    home_ssh.mkdir(parents=True)
    own = home_ssh / "id_ed25519"
    carol = tmp_path / "carol"
    for path in (own, carol):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    assert cli.main(["kit", "export", "--domain", DOMAIN, "--to", f"{own}.pub", "--out", str(tmp_path / "k1")]) == 0
    kits = prov.outputs(spec.stack_name).extra["kits"]
    assert [[t["own"] for t in k["trustees"]] for k in kits] == [[True]] and kits[0]["threshold"] == 1
    capsys.readouterr()
    rc, items, _, _ = covenant_json(capsys)
    assert rc == 11 and items["emergency_access"]["failed"], "a kit to one's own key is no other person"
    assert cli.main(["kit", "export", "--domain", DOMAIN, "--to", f"{carol}.pub", "--out", str(tmp_path / "k2")]) == 0
    capsys.readouterr()
    rc, items, _, _ = covenant_json(capsys)
    assert rc == 0 and "held by 1 trustee(s)" in items["emergency_access"]["detail"]
    record = prov.outputs(spec.stack_name).extra["kits"][-1]
    assert record["trustees"] == [{"fingerprint": covenant.key_fingerprint((tmp_path / "carol.pub").read_text()),
                                   "own": False}]  # fmt: skip
    assert "PRIVATE" not in json.dumps(record) and record["exported"].endswith("Z")


def test_status_says_plainly_that_the_instance_depends_on_one_person(world, capsys):
    spec, prov, _, _ = world
    rc = cli.main(["status", "--domain", DOMAIN, "--no-health"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "WARNING: this instance depends on one person" in out
    assert f"Run: fedi admins add NAME --ssh-key THEIR_KEY.pub --domain {DOMAIN}" in out
    assert f"fedi kit export --to THEIR_KEY.pub --out kits/ --domain {DOMAIN}" in out
    add_admin(prov, spec)
    rc = cli.main(["status", "--domain", DOMAIN, "--no-health", "--json"])
    data = json.loads(capsys.readouterr()[0])
    assert rc == 0 and data["depends_on_one_person"] is False


def test_a_hetzner_stack_in_a_coops_backend_fails_on_funding_only(backends, monkeypatch, capsys, tmp_path):  # noqa: F811
    """The offline Hetzner provider (the real stack program under Pulumi's mocks) in a co-op's backend: the
    admins and the kit record live in the stack's config; funding weighs the co-op's whole bill."""
    from test_cli_backends import COOP
    from test_cli_backends import DOMAIN as HDOMAIN

    server = Server()
    monkeypatch.setattr(backup, "default_runner", server.run)
    prov = cli_stack_make("hetzner", COOP)
    name = "social-example-org"
    prov.set_kits(name, [covenant.kit_record([f"age1{'q' * 58}"], 0, utc_iso(), set())])
    (tmp_path / "fedi.toml").write_text(COOP_SHORT)
    rc = cli.main(["covenant", "--domain", HDOMAIN, "--backend", COOP, "--json"])
    (stack,) = json.loads(capsys.readouterr().out)["stacks"]
    items = {i["key"]: i for i in stack["items"]}
    assert rc == 11 and [k for k, i in items.items() if i["failed"]] == ["funding"], items
    assert (
        "the co-op's 1 stack(s)" in items["funding"]["detail"]
        and "less than the 3 months" in items["funding"]["detail"]
    )
    assert "held by 1 trustee(s)" in items["emergency_access"]["detail"]
    assert f"--backend {COOP}" in json.dumps(items) or all(not i["fix"] for k, i in items.items() if k != "funding")


def cli_stack_make(name, backend):
    from provision.cli import target

    return target.make_provider(name, backend)
