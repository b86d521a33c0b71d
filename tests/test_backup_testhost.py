"""Backups through the product on real Debian 13 machines (the local provider): back up one machine with
`fedi backup now`, restore into a second, fresh machine with `fedi backup restore --into`, and find
the app's database and configuration there whole; the second machine then backs itself up and
`fedi backup verify` finds its snapshot identical to its live database. A third machine is rebuilt
from nothing but the saved `fedi backup env` file (`--from-env`, the computer is lost too) and keeps
the restored app secrets through a later `fedi up`.

About 12 minutes (three `fedi up --provider local`). The app's containers cannot start here (no
registry), so the data is seeded straight into the app's database as its own role.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from provision import names
from provision.cli import app as cli
from provision.lifecycle.backup import LOCAL_REPOSITORY, parse_env
from provision.providers.local import machine

pytestmark = pytest.mark.testhost

SOFTWARE = "lemmy"
OLD, NEW, REBUILT = "old-backup.localhost", "new-backup.localhost", "rebuilt-backup.localhost"
SEED = """
CREATE TABLE person (id serial PRIMARY KEY, name text NOT NULL, bio text);
CREATE TABLE post (id bigserial PRIMARY KEY, person_id int REFERENCES person(id), body text,
                   published timestamptz NOT NULL DEFAULT '2026-01-01');
INSERT INTO person (name, bio) SELECT 'user' || g, md5(g::text) FROM generate_series(1, 200) g;
INSERT INTO post (person_id, body) SELECT 1 + g % 200, repeat(md5(g::text), 4) FROM generate_series(1, 5000) g;
"""
FINGERPRINT = (
    "SELECT (SELECT count(*) FROM person) || ':' || (SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM person p)"
    " || ':' || (SELECT count(*) FROM post) || ':' || (SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM post p)"
)


def stack(domain: str) -> str:
    return names.stack_name(domain)


def inside(domain: str, argv: list[str], stdin: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    record = machine.load(stack(domain))
    assert record is not None and machine.running(record), f"machine {stack(domain)} is not running"
    return subprocess.run(
        machine.exec_argv(record, argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )


def db_vars(domain: str) -> dict:
    import yaml

    from provision.lifecycle import stack as lifecycle

    return yaml.safe_load((lifecycle.bundle_dir(stack(domain)) / "ansible-vars.yml").read_text())


def psql(domain: str, sql: str) -> str:
    v = db_vars(domain)
    proc = inside(domain, ["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                           "-d", v["fedi_db_name"]], stdin=sql)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def config_digest(domain: str) -> dict[str, str]:
    listing = inside(domain, ["find", "/opt/fedi/app", "-type", "f", "-print0"]).stdout
    digests = {}
    for path in sorted(p for p in listing.split("\0") if p):
        digests[path] = hashlib.sha256(inside(domain, ["cat", path]).stdout.encode()).hexdigest()
    return digests


def stored_secrets(domain: str) -> dict[str, str]:
    from provision.providers.local.provider import LocalProvider

    return LocalProvider()._doc(stack(domain))["secrets"]


def app_secrets(domain: str) -> dict[str, str]:
    from provision.render.secrets import app_secrets

    return app_secrets(stored_secrets(domain))


def fedi(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def machines(local_image, tmp_path_factory):
    root = tmp_path_factory.mktemp("backup-e2e")
    dirs = {f"FEDI_{k}_DIR": str(root / k.lower()) for k in ("STATE", "CACHE", "CONFIG")}
    dirs["FEDI_IMAGE_DIR"] = str(local_image.parent)
    mp = pytest.MonkeyPatch()
    for key, value in dirs.items():
        mp.setenv(key, value)
    try:
        for domain in (OLD, NEW, REBUILT):
            # Each `fedi up` in its own process, the way an admin runs them.
            argv = ["up", "--provider", "local", "--software", SOFTWARE, "--size", "tiny", "--domain", domain, "--yes"]
            proc = subprocess.run([sys.executable, "-m", "provision", *argv], env={**os.environ, **dirs})
            assert proc.returncode == 0, f"fedi up {domain} failed"
        yield dirs
    finally:
        from provision.providers.local.provider import LocalProvider

        prov = LocalProvider()
        for domain in (OLD, NEW, REBUILT):
            if prov._store().exists(stack(domain)):
                prov.down(stack(domain), lambda _: None, purge_backups=True)
        mp.undo()


def test_backup_one_machine_and_restore_into_a_fresh_one(machines, monkeypatch, capsys):
    for key, value in machines.items():
        monkeypatch.setenv(key, value)
    role = db_vars(OLD)["fedi_db_user"]
    psql(OLD, f"SET ROLE {role};" + SEED)
    seeded = psql(OLD, FINGERPRINT)
    old_config = config_digest(OLD)
    assert old_config and config_digest(NEW) != old_config  # two instances, two configurations

    rc, out, err = fedi(capsys, "backup", "now", "--domain", OLD, "--provider", "local", "--json")
    assert rc == 0, err
    assert json.loads(out)["data_added"] > 0
    rc, out, err = fedi(capsys, "backup", "status", "--domain", OLD, "--provider", "local", "--json")
    assert rc == 0, err
    status = json.loads(out)
    assert status["ok"] and status["last_result"] == "success" and 0 <= status["age_hours"] < 1
    assert status["next_run"]  # the timer is scheduled
    rc, out, err = fedi(capsys, "backup", "list", "--domain", OLD, "--provider", "local", "--json")
    assert rc == 0, err
    (snap,) = json.loads(out)
    assert f"app:{'lemmy'}" in snap["tags"] and snap["size_bytes"] > 0

    # The new machine has its own empty app database; the old one's backups arrive whole.
    assert psql(NEW, "SELECT to_regclass('public.person') IS NULL") == "t"
    rc, out, err = fedi(
        capsys, "backup", "restore", "--domain", OLD, "--into", stack(NEW), "--provider", "local", "--yes", "--json"
    )
    assert rc == 0, err
    assert f"keep their {OLD} addresses" in err  # another domain: said plainly
    result = json.loads(out)
    assert result["snapshot"] == snap["id"] and result["config"] is True
    assert psql(NEW, FINGERPRINT) == seeded
    assert psql(NEW, "SELECT tableowner FROM pg_tables WHERE tablename = 'post'") == role
    assert config_digest(NEW) == old_config
    # The new stack keeps the old app secrets the data needs (not its own SSH keys and backup password)...
    old_secrets, new_secrets = stored_secrets(OLD), stored_secrets(NEW)
    assert app_secrets(NEW) == app_secrets(OLD)
    assert new_secrets["ssh_client_key"] != old_secrets["ssh_client_key"]
    assert new_secrets["restic_password"] != old_secrets["restic_password"]
    # ...so converging it with `fedi up` re-renders the same secrets and leaves the restored data whole.
    argv = ["up", "--provider", "local", "--software", SOFTWARE, "--size", "tiny", "--domain", NEW, "--yes"]
    assert subprocess.run([sys.executable, "-m", "provision", *argv], env=os.environ.copy()).returncode == 0
    assert psql(NEW, FINGERPRINT) == seeded

    # The restored machine backs itself up, and verify finds that snapshot identical to its database.
    rc, _, err = fedi(capsys, "backup", "now", "--domain", NEW, "--provider", "local")
    assert rc == 0, err
    rc, out, err = fedi(capsys, "backup", "verify", "--domain", NEW, "--provider", "local", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["ok"] and report["rows_restored"] >= 5200


def test_rebuild_from_the_saved_settings_alone_keeps_the_old_app_secrets(machines, monkeypatch, capsys, tmp_path):
    """README recovery step 3: the server and this computer are lost; a new `fedi up` (fresh secrets) and
    `fedi backup restore --from-env` bring the instance back, and the stack adopts the restored secrets."""
    for key, value in machines.items():
        monkeypatch.setenv(key, value)
    role = db_vars(OLD)["fedi_db_user"]
    if psql(OLD, "SELECT to_regclass('public.person') IS NULL") == "t":
        psql(OLD, f"SET ROLE {role};" + SEED)
    seeded = psql(OLD, FINGERPRINT)
    assert fedi(capsys, "backup", "now", "--domain", OLD, "--provider", "local")[0] == 0
    saved = tmp_path / "social-restic.env"
    rc, _, err = fedi(capsys, "backup", "env", "--domain", OLD, "--provider", "local", "--out", str(saved))
    assert rc == 0, err
    # A local stack has no bucket: its repository is a directory on this computer. Put a copy where the
    # rebuilt machine sees it, as a bucket would be reachable from a new server.
    old_repo, rebuilt = machine.load(stack(OLD)).backups / "restic", machine.load(stack(REBUILT)).backups
    shutil.copytree(old_repo, rebuilt / "saved", symlinks=True)
    text = saved.read_text()
    assert parse_env(text)["RESTIC_REPOSITORY"] == LOCAL_REPOSITORY  # (quoted or not: the file's reader decides)
    saved.write_text(text.replace(LOCAL_REPOSITORY, "/var/backups/fedi/saved"))

    assert app_secrets(REBUILT) != app_secrets(OLD)  # a fresh stack: its own secrets
    own_ssh = stored_secrets(REBUILT)["ssh_client_key"]
    rc, out, err = fedi(
        capsys, "backup", "restore", "--domain", REBUILT, "--from-env", str(saved), "--no-safety-snapshot",
        "--provider", "local", "--yes", "--json",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["config"] is True and "now keeps the app secrets" in err
    assert psql(REBUILT, FINGERPRINT) == seeded
    assert app_secrets(REBUILT) == app_secrets(OLD)
    assert stored_secrets(REBUILT)["ssh_client_key"] == own_ssh  # its own SSH keys stay

    # A later `fedi up` renders the old secrets: the configuration on the server still holds them.
    argv = ["up", "--provider", "local", "--software", SOFTWARE, "--size", "tiny", "--domain", REBUILT, "--yes"]
    assert subprocess.run([sys.executable, "-m", "provision", *argv], env=os.environ.copy()).returncode == 0
    hjson = inside(REBUILT, ["cat", "/opt/fedi/app/lemmy.hjson"]).stdout
    assert app_secrets(OLD)["pictrs_api_key"] in hjson and app_secrets(OLD)["db_password"] in hjson
    assert psql(REBUILT, FINGERPRINT) == seeded


def test_an_unreachable_repository_fails_the_unit_visibly(machines, monkeypatch, capsys):
    for key, value in machines.items():
        monkeypatch.setenv(key, value)
    env = "/etc/fedi/restic.env"
    assert inside(NEW, ["cp", "-p", env, "/root/restic.env.good"]).returncode == 0
    try:
        # Nothing listens on port 9 inside the machine: the repository is unreachable.
        sed = ["sed", "-i", "s|^RESTIC_REPOSITORY=.*|RESTIC_REPOSITORY=s3:http://127.0.0.1:9/backups|", env]
        assert inside(NEW, sed).returncode == 0
        before = inside(NEW, ["find", "/opt/fedi", "/var/backups/fedi", "-type", "f"]).stdout
        rows = psql(NEW, "SELECT count(*) FROM post")
        rc, _, err = fedi(capsys, "backup", "now", "--domain", NEW, "--provider", "local")
        assert rc == 7 and "the backup failed" in err, err
        rc, out, _ = fedi(capsys, "backup", "status", "--domain", NEW, "--provider", "local", "--json")
        assert rc == 1 and json.loads(out)["last_result"] == "exit-code"
        result = inside(NEW, ["systemctl", "show", "-P", "Result", "fedi-backup.service"]).stdout.strip()
        assert result == "exit-code"
        after = inside(NEW, ["find", "/opt/fedi", "/var/backups/fedi", "-type", "f"]).stdout
        assert set(before.split()) <= set(after.split()), "a failed backup deleted local files"
        assert psql(NEW, "SELECT count(*) FROM post") == rows
    finally:
        inside(NEW, ["cp", "-p", "/root/restic.env.good", env])


def fedi_up(domain: str, *extra: str) -> subprocess.CompletedProcess:
    """`fedi up` in its own process, the way an admin runs it; its output is kept for the assertions."""
    argv = ["up", "--provider", "local", "--software", SOFTWARE, "--size", "tiny", "--domain", domain, "--yes"]
    proc = subprocess.run(
        [sys.executable, "-m", "provision", *argv, *extra], env=os.environ.copy(), capture_output=True, text=True
    )
    sys.stderr.write(proc.stderr[-3000:])
    return proc


def test_verify_after_an_in_place_restore_compares_with_the_restored_snapshot(machines, monkeypatch, capsys):
    """Seed, back up, change, restore in place (a safety snapshot is taken first), verify: the restored
    snapshot, SAME. `fedi backup now` is listed as manual, the safety snapshot as safety."""
    for key, value in machines.items():
        monkeypatch.setenv(key, value)
    role = db_vars(NEW)["fedi_db_user"]
    if psql(NEW, "SELECT to_regclass('public.person') IS NULL") == "t":
        psql(NEW, f"SET ROLE {role};" + SEED)
    seeded = psql(NEW, FINGERPRINT)
    rc, out, err = fedi(capsys, "backup", "now", "--domain", NEW, "--provider", "local", "--json")
    assert rc == 0, err
    taken = json.loads(out)["snapshot_id"]
    psql(NEW, f"SET ROLE {role}; DELETE FROM post WHERE id > 4000; UPDATE person SET bio = 'changed'")
    assert psql(NEW, FINGERPRINT) != seeded
    rc, out, err = fedi(
        capsys, "backup", "restore", taken[:8], "--domain", NEW, "--provider", "local", "--yes", "--json"
    )
    assert rc == 0, err
    restored = json.loads(out)["snapshot"]
    assert restored.startswith(taken) and psql(NEW, FINGERPRINT) == seeded
    rc, out, err = fedi(capsys, "backup", "list", "--domain", NEW, "--provider", "local", "--json")
    kinds = {s["id"]: s["kind"] for s in json.loads(out)}
    assert kinds[restored] == "manual" and list(kinds.values())[0] == "safety"  # the newest is the safety one
    rc, out, err = fedi(capsys, "backup", "verify", "--domain", NEW, "--provider", "local")
    assert rc == 0, out + err
    assert f"snapshot {restored[:8]}" in out and "the one restored at" in out and out.rstrip().endswith("SAME")
    rc, out, err = fedi(capsys, "backup", "verify", "--domain", NEW, "--provider", "local", "--json")
    report = json.loads(out)
    assert (report["snapshot"], report["compared_with"], report["ok"]) == (restored, "restored", True)


def test_recovery_after_losing_the_server_as_the_readme_says(machines, monkeypatch, capsys):
    """README, "Restore onto a new server after losing the old one", step 2 then step 4: the machine and
    its disk are lost, this computer keeps the stack; `fedi up` again creates a new machine (a fresh
    one-time host key, pinned for it), `fedi backup restore --no-safety-snapshot` brings the rows back,
    `fedi backup verify` says SAME, and the next `fedi up` changes nothing."""
    from provision.providers.local.provider import LocalProvider

    for key, value in machines.items():
        monkeypatch.setenv(key, value)
    role = db_vars(OLD)["fedi_db_user"]
    if psql(OLD, "SELECT to_regclass('public.person') IS NULL") == "t":
        psql(OLD, f"SET ROLE {role};" + SEED)
    seeded = psql(OLD, FINGERPRINT)
    assert fedi(capsys, "backup", "now", "--domain", OLD, "--provider", "local")[0] == 0
    before = LocalProvider()._doc(stack(OLD))
    lost = machine.load(stack(OLD))

    machine.destroy(stack(OLD), lambda _: None)  # the server and its disk are gone; the backups are not
    assert not lost.rootfs.exists() and (lost.backups / "restic" / "config").is_file()

    proc = fedi_up(OLD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gets a fresh one-time host key" in proc.stderr
    after = LocalProvider()._doc(stack(OLD))
    assert after["bootstrap_host_key"] != before["bootstrap_host_key"]  # the lost one's was readable on it
    assert after["host_key"] not in (before["host_key"], after["bootstrap_host_key"])  # rotated on the new one
    assert psql(OLD, "SELECT to_regclass('public.person') IS NULL") == "t"  # a new, empty server

    rc, out, err = fedi(capsys, "backup", "restore", "--domain", OLD, "--no-safety-snapshot", "--provider", "local",
                        "--yes", "--json")  # fmt: skip
    assert rc == 0, err
    restored = json.loads(out)["snapshot"]
    assert psql(OLD, FINGERPRINT) == seeded
    rc, out, err = fedi(capsys, "backup", "verify", "--domain", OLD, "--provider", "local", "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert (report["snapshot"], report["compared_with"], report["ok"]) == (restored, "restored", True)

    proc = fedi_up(OLD, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["configure"] == {"changed": 0, "failed": 0}
    assert psql(OLD, FINGERPRINT) == seeded


def test_up_again_after_down_finds_the_kept_backups(machines, monkeypatch, capsys, tmp_path):
    """Up, down (the backups are kept), up again on the same domain: refused with the choices before
    anything is created; --new-backups moves the old repository aside, and its snapshots still restore."""
    from provision.providers.local.provider import LocalProvider

    for key, value in machines.items():
        monkeypatch.setenv(key, value)
    role = db_vars(REBUILT)["fedi_db_user"]
    if psql(REBUILT, "SELECT to_regclass('public.person') IS NULL") == "t":
        psql(REBUILT, f"SET ROLE {role};" + SEED)
    seeded = psql(REBUILT, FINGERPRINT)
    saved = tmp_path / "rebuilt-restic.env"
    assert fedi(capsys, "backup", "env", "--domain", REBUILT, "--provider", "local", "--out", str(saved))[0] == 0
    backups = machine.load(stack(REBUILT)).backups
    rc, _, err = fedi(capsys, "down", "--domain", REBUILT, "--provider", "local", "--yes")
    assert rc == 0, err  # the final backup ran: the repository holds the seeded rows
    snapshots = sorted(p.name for p in (backups / "restic" / "snapshots").iterdir())
    assert snapshots

    proc = fedi_up(REBUILT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "has backups kept from an earlier stack" in proc.stderr and "--new-backups" in proc.stderr
    assert not LocalProvider()._store().exists(stack(REBUILT)) and machine.load(stack(REBUILT)) is None

    proc = fedi_up(REBUILT, "--new-backups")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (aside,) = backups.glob("restic-before-*")
    assert sorted(p.name for p in (aside / "snapshots").iterdir()) == snapshots  # never deleted
    assert f"/var/backups/fedi/{aside.name}" in proc.stderr
    assert fedi(capsys, "backup", "now", "--domain", REBUILT, "--provider", "local")[0] == 0  # a fresh repository
    assert psql(REBUILT, "SELECT to_regclass('public.person') IS NULL") == "t"

    # The old snapshots still restore, from the saved settings pointed at where they were moved.
    text = saved.read_text()
    assert parse_env(text)["RESTIC_REPOSITORY"] == LOCAL_REPOSITORY
    text = text.replace(LOCAL_REPOSITORY, f"/var/backups/fedi/{aside.name}")
    assert parse_env(text)["RESTIC_REPOSITORY"] == f"/var/backups/fedi/{aside.name}"
    saved.write_text(text)
    rc, _, err = fedi(capsys, "backup", "restore", "--domain", REBUILT, "--from-env", str(saved),
                      "--no-safety-snapshot", "--provider", "local", "--yes")  # fmt: skip
    assert rc == 0, err
    assert psql(REBUILT, FINGERPRINT) == seeded


def test_a_recovery_kit_opened_in_a_fresh_home_runs_status_list_and_restore(machines, monkeypatch, capsys, tmp_path):
    """Issue 20: kits of OLD and REBUILT exported to a trustee's SSH key, opened on "another computer" (a
    fresh HOME, state, cache and config) with nothing else: `fedi status` reaches the server through the
    pinned host key, `fedi backup list` lists OLD's snapshots, and OLD's backups restore into REBUILT."""
    for key, value in machines.items():
        monkeypatch.setenv(key, value)
    role = db_vars(OLD)["fedi_db_user"]
    if psql(OLD, "SELECT to_regclass('public.person') IS NULL") == "t":  # this test alone: seed and back up
        psql(OLD, f"SET ROLE {role};" + SEED)
        assert fedi(capsys, "backup", "now", "--domain", OLD, "--provider", "local")[0] == 0
    seeded = psql(OLD, FINGERPRINT)
    rc, out, err = fedi(capsys, "backup", "list", "--domain", OLD, "--provider", "local", "--json")
    assert rc == 0, err
    snapshots = [s["id"] for s in json.loads(out)]
    shown = fedi(capsys, "status", "--domain", OLD, "--provider", "local", "--no-health", "--json")[1]
    host_key = json.loads(shown)["outputs"]["host_key"]
    key = tmp_path / "trustee"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "trustee@test", "-f", str(key)], check=True)
    kits = {}
    for domain in (OLD, REBUILT):
        rc, out, err = fedi(capsys, "kit", "export", "--domain", domain, "--provider", "local",
                            "--to", f"{key}.pub", "--out", str(tmp_path / "kits"), "--json")  # fmt: skip
        assert rc == 0, err
        (kits[domain],) = (row["file"] for row in json.loads(out)["files"])

    new = tmp_path / "new-computer"
    for env in ("FEDI_STATE_DIR", "FEDI_CACHE_DIR", "FEDI_CONFIG_DIR", "HOME"):
        monkeypatch.setenv(env, str(new / env.lower()))
    for domain in (OLD, REBUILT):
        rc, out, err = fedi(capsys, "kit", "open", kits[domain], "--identity", str(key))
        assert rc == 0, err
    rc, out, err = fedi(capsys, "status", "--domain", OLD, "--provider", "local", "--json")
    assert rc == 0, err
    status = json.loads(out)
    assert status["outputs"]["state"] == "running" and status["outputs"]["host_key"] == host_key
    assert "backup" in status  # read from the server over SSH, the pinned host key checked
    rc, out, err = fedi(capsys, "backup", "list", "--domain", OLD, "--provider", "local", "--json")
    assert rc == 0, err
    assert [s["id"] for s in json.loads(out)] == snapshots
    rc, out, err = fedi(capsys, "backup", "restore", "--domain", OLD, "--into", stack(REBUILT), "--no-safety-snapshot",
                        "--provider", "local", "--yes", "--json")  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["snapshot"] == snapshots[0]

    for key_, value in machines.items():  # back on the admin's computer: the rows arrived
        monkeypatch.setenv(key_, value)
    assert psql(REBUILT, FINGERPRINT) == seeded
