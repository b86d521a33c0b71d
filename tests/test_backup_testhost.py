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

from provision import cli, names
from provision.backup import LOCAL_REPOSITORY
from provision.local import machine

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

    from provision import lifecycle

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
    from provision.providers.local import LocalProvider

    return LocalProvider()._doc(stack(domain))["secrets"]


def app_secrets(domain: str) -> dict[str, str]:
    from provision.secrets import app_secrets

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
            proc = subprocess.run([sys.executable, "-m", "provision.cli", *argv], env={**os.environ, **dirs})
            assert proc.returncode == 0, f"fedi up {domain} failed"
        yield dirs
    finally:
        from provision.providers.local import LocalProvider

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
    assert subprocess.run([sys.executable, "-m", "provision.cli", *argv], env=os.environ.copy()).returncode == 0
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
    assert f"RESTIC_REPOSITORY={LOCAL_REPOSITORY}\n" in text
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
    assert subprocess.run([sys.executable, "-m", "provision.cli", *argv], env=os.environ.copy()).returncode == 0
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
