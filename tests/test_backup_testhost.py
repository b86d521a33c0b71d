"""Backups through the product on real Debian 13 machines (the local provider): back up one machine with
`fedi backup now`, restore into a second, fresh machine with `fedi backup restore --into`, and find
the app's database and configuration there whole; the second machine then backs itself up and
`fedi backup verify` finds its snapshot identical to its live database.

About 10 minutes (two `fedi up --provider local`). The app's containers cannot start here (no
registry), so the data is seeded straight into the app's database as its own role.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from provision import cli
from provision.local import machine

pytestmark = pytest.mark.testhost

SOFTWARE = "lemmy"
OLD, NEW = "old-backup.localhost", "new-backup.localhost"
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
    return domain.replace(".", "-")


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
        for domain in (OLD, NEW):
            # Each `fedi up` in its own process, the way an admin runs them.
            argv = ["up", "--provider", "local", "--software", SOFTWARE, "--size", "tiny", "--domain", domain, "--yes"]
            proc = subprocess.run([sys.executable, "-m", "provision.cli", *argv], env={**os.environ, **dirs})
            assert proc.returncode == 0, f"fedi up {domain} failed"
        yield dirs
    finally:
        from provision.providers.local import LocalProvider

        prov = LocalProvider()
        for domain in (OLD, NEW):
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
    result = json.loads(out)
    assert result["snapshot"] == snap["id"] and result["config"] is True
    assert psql(NEW, FINGERPRINT) == seeded
    assert psql(NEW, "SELECT tableowner FROM pg_tables WHERE tablename = 'post'") == role
    assert config_digest(NEW) == old_config
    # The new stack keeps the old app secrets the data needs (not its own SSH keys and backup password)...
    from provision.providers.local import LocalProvider
    from provision.secrets import OWN_SECRETS

    old_secrets, new_secrets = (LocalProvider()._doc(stack(d))["secrets"] for d in (OLD, NEW))
    assert {k: v for k, v in new_secrets.items() if not k.startswith(OWN_SECRETS)} == {
        k: v for k, v in old_secrets.items() if not k.startswith(OWN_SECRETS)
    }
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
