"""The app role's commands as data: each task's argv rendered by ansible's own templating from the role's
defaults, compared exactly, and the parts that can run here run for real (mbin's PHP one-liner with
the php CLI, the password-hash pattern against what PHP prints and what the defect stored).

The apps themselves do not run here (their images cannot be pulled); what the commands mean is taken
from the apps' sources, named in ansible/roles/app/tasks/start-mbin.yml.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.render_cases import tool

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "ansible" / "roles" / "app"
COMPOSE = ["docker", "compose", "--project-directory", "/opt/fedi/app", "-f", "/opt/fedi/app/compose.yaml"]
PSQL = ["runuser", "-u", "postgres", "--", "psql", "-XtAq", "-v", "ON_ERROR_STOP=1", "-d", "mbin"]


def _trusted(value: Any) -> Any:
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    return value


def _variables(**extra: Any) -> dict[str, Any]:
    defaults = yaml.safe_load((APP / "defaults" / "main.yml").read_text())
    return {**defaults, "fedi_db_name": "mbin", "fedi_admin_username": "admin", **extra}


def render(expr: Any, **extra: Any) -> Any:
    """``expr`` templated the way ansible templates a task's arguments."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    variables = _variables(**extra)
    templar = Templar(loader=DataLoader(), variables=_trusted(variables))
    return templar.template(_trusted(expr))


def _tasks(node: Any):
    for item in node:
        if "block" in item:
            yield item
            yield from _tasks(item["block"])
        else:
            yield item


def mbin_task(name: str) -> dict[str, Any]:
    (task,) = [t for t in _tasks(yaml.safe_load((APP / "tasks" / "start-mbin.yml").read_text())) if t["name"] == name]
    return task


def argv(name: str) -> list[str]:
    task = mbin_task(name)
    return render(task["ansible.builtin.command"]["argv"], **{k: v for k, v in task.get("vars", {}).items()})


def test_the_password_hash_bypasses_the_images_entrypoint() -> None:
    """docker/docker-entrypoint.sh (mbin v1.10.1) runs its setup, printing, for a command starting with
    `php`: the hash command replaces the entrypoint itself, so its output is the hash alone."""
    php = render("{{ app_mbin_hash_php }}")
    assert argv("Hash the admin password (bypassing the image's entrypoint)") == [
        *COMPOSE, "run", "--rm", "--no-deps", "--entrypoint", "php", "-e", "FEDI_ADMIN_PASSWORD", "php", "-r", php,
    ]  # fmt: skip
    task = mbin_task("Hash the admin password (bypassing the image's entrypoint)")
    assert task["environment"] == {"FEDI_ADMIN_PASSWORD": "{{ fedi_admin_password }}"}  # never in the argv
    assert task["no_log"] is True


def _php(code: str, password: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FEDI_ADMIN_PASSWORD"}
    if password is not None:
        env["FEDI_ADMIN_PASSWORD"] = password
    return subprocess.run([tool("php"), "-r", code], capture_output=True, text=True, env=env, timeout=60)


def _verifies(password: str, stored: str) -> bool:
    code = 'exit(password_verify(getenv("P"), getenv("H")) ? 0 : 1);'
    env = {**os.environ, "P": password, "H": stored}
    return subprocess.run([tool("php"), "-r", code], env=env, timeout=60).returncode == 0


def test_the_php_one_liner_prints_a_bcrypt_hash_of_the_environments_password() -> None:
    code = render("{{ app_mbin_hash_php }}")
    pattern = render("{{ app_password_hash_pattern }}")
    done = _php(code, "s3cret-Passw0rd-of-32-characters")
    assert done.returncode == 0, done.stderr
    assert re.match(pattern, done.stdout), done.stdout
    assert done.stdout.startswith("$2y$13$") and len(done.stdout) == 60
    assert _verifies("s3cret-Passw0rd-of-32-characters", done.stdout)
    assert not _verifies("another password", done.stdout)
    for missing in (None, ""):  # never the hash of an empty password
        empty = _php(code, missing)
        assert empty.returncode == 1 and empty.stdout == "" and "FEDI_ADMIN_PASSWORD is empty" in empty.stderr


def test_the_hash_pattern_accepts_hashes_only() -> None:
    pattern = render("{{ app_password_hash_pattern }}")
    bcrypt = "$2y$13$" + "a" * 22 + "B" * 31
    argon = "$argon2id$v=19$m=65536,t=4,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
    assert re.match(pattern, bcrypt) and re.match(pattern, argon)
    # what the first deploy stored: the entrypoint's output, then the hash (docker-entrypoint.sh's messages)
    stored_by_the_defect = (
        "Symfony 7.4.8 (env: prod, debug: false)\n\n // Clearing the cache for the prod environment with debug false\n"
        "Waiting for database to be ready...\nThe database is now ready and reachable\n"
        "[notice] Migrating up to DoctrineMigrations\\Version20260101\nPHP app ready!\n" + bcrypt
    )
    for bad in (stored_by_the_defect, bcrypt + "\n", bcrypt[:-1], "", "plaintext-password", "$2y$13$short"):
        assert not re.match(pattern, bad), bad


def test_a_rerun_repairs_a_password_that_is_not_a_hash() -> None:
    """The block runs when the account was just created, when fedi never set it, or when the stored value
    is not a hash (what the defect left); it is skipped once fedi set a real hash."""
    when = mbin_task("Set the admin password")["when"]
    bcrypt = "$2y$13$" + "a" * 22 + "B" * 31

    def runs(stored: str, marker: bool) -> bool:
        expr = "{{ " + when + " }}"
        result = render(expr, app_admin={"stdout": stored}, app_admin_marker={"stat": {"exists": marker}})
        assert isinstance(result, bool), result
        return result

    assert runs("", False)  # just created: it holds the throwaway password
    assert runs("Symfony 7.4.8 (env: prod...)\nPHP app ready!\n" + bcrypt, True)  # the defect's leftovers
    assert runs(bcrypt, False)  # an earlier run stopped before the password was set
    assert not runs(bcrypt, True)  # set by fedi (or changed by the admin since): left alone


def test_the_first_run_commands_are_mbins_own() -> None:
    run = [*COMPOSE, "run", "--rm", "--no-deps", "php", "bin/console"]
    assert argv("Create the key pair with mbin:ap:keys:update") == [*run, "mbin:ap:keys:update"]
    assert argv("Clear mbin's app cache") == [*run, "cache:pool:clear", "cache.app"]
    assert argv("Create the push notification keys") == [*run, "mbin:push:keys:update"]
    assert argv("Create the random magazine") == [*run, "mbin:magazine:create", "random"]
    # the key pair is replaced on every run of mbin:ap:keys:update: only while it is missing
    assert (
        mbin_task("Create the instance's ActivityPub key pair")["when"] == "app_site_keys.stdout.split(',')[0] == '0'"
    )
    assert mbin_task("Create the push notification keys")["when"] == "app_site_keys.stdout.split(',')[1] == '0'"
    assert argv("Read whether the instance has its key pairs")[: len(PSQL)] == PSQL


@pytest.mark.parametrize(
    "name",
    [
        "Read the admin account's password hash",
        "Read the stored password hash back",
        "Read whether the instance has its key pairs",
        "Check whether the random magazine exists",
    ],
)
def test_reads_are_psql_queries_that_change_nothing(name: str) -> None:
    task = mbin_task(name)
    assert task["changed_when"] is False
    command = argv(name)
    assert command[: len(PSQL)] == PSQL and command[len(PSQL)] == "-c"
    assert command[-1].lstrip().upper().startswith("SELECT ")


# The columns these tasks read, as mbin v1.10.1's migrations create them (migrations/Version20210527210529.php:
# "user", magazine, site; Version20220723095813.php: ap_id; Version20230429143017.php: site keys;
# Version20240718232800.php: push keys). Only these columns: the queries must need no others.
MBIN_SCHEMA = """
CREATE TABLE "user" (id INT NOT NULL PRIMARY KEY, username VARCHAR(35) NOT NULL, password VARCHAR(255) NOT NULL,
                     ap_id VARCHAR(255) DEFAULT NULL);
CREATE TABLE magazine (id INT NOT NULL PRIMARY KEY, name VARCHAR(25) NOT NULL, ap_id VARCHAR(255) DEFAULT NULL);
CREATE TABLE site (id INT NOT NULL PRIMARY KEY, private_key TEXT DEFAULT NULL, public_key TEXT DEFAULT NULL,
                   push_private_key TEXT DEFAULT NULL, push_public_key TEXT DEFAULT NULL);
"""


def test_the_mbin_queries_read_real_state_in_postgres() -> None:
    """Each read and the UPDATE run with the task's exact psql flags against a real Postgres."""
    from test_backup_support import pg_bindir

    if pg_bindir() is None or os.geteuid() != 0:
        pytest.skip("needs root and postgresql (scripts/test installs it)")
    base = Path(tempfile.mkdtemp(prefix="fedi-app-tasks-"))  # not pytest's 0700 tmp: postgres must enter it
    base.chmod(0o755)
    try:
        _queries_against(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _queries_against(base: Path) -> None:
    from test_backup_support import pg_cluster

    with pg_cluster(base) as pg:
        pg.psql("postgres", "CREATE DATABASE mbin")
        pg.psql("mbin", MBIN_SCHEMA)

        def run(name: str, **extra: Any) -> str:
            task = mbin_task(name)
            command = render(task["ansible.builtin.command"]["argv"], **{**task.get("vars", {}), **extra})
            assert command[: len(PSQL)] == PSQL
            psql = [str(pg.bindir / "psql"), *command[PSQL.index("psql") + 1 :]]  # the same flags, this cluster
            stdin = render(task["ansible.builtin.command"].get("stdin", ""), **extra) or None
            env = {**os.environ, **pg.env}
            done = subprocess.run(["runuser", "-u", pg.user, "--", *psql], input=stdin, env=env, **_CAPTURE)
            assert done.returncode == 0, done.stderr
            return done.stdout.rstrip("\n")  # as ansible's command module returns stdout

        pattern = render("{{ app_password_hash_pattern }}")
        assert run("Read the admin account's password hash") == ""
        assert run("Read whether the instance has its key pairs") == "0,0"
        assert run("Check whether the random magazine exists") == ""

        leftovers = "Symfony 7.4.8 (env: prod, debug: false)\nPHP app ready!\n$2y$13$" + "x" * 53
        pg.psql("mbin", f"INSERT INTO \"user\" VALUES (1, 'admin', '{leftovers}', NULL)")
        pg.psql("mbin", "INSERT INTO \"user\" VALUES (2, 'admin', 'remote', 'https://elsewhere.example/u/admin')")
        stored = run("Read the admin account's password hash")
        assert stored == leftovers and not re.match(pattern, stored)  # the defect's state is seen as such

        bcrypt = "$2y$13$" + "a" * 22 + "B" * 31
        run("Store the admin password hash", app_admin_hash={"stdout": bcrypt})
        assert run("Read the stored password hash back") == bcrypt
        assert pg.psql("mbin", 'SELECT password FROM "user" WHERE id = 2') == "remote"  # remote users untouched

        pg.psql("mbin", "INSERT INTO site (id, private_key, public_key) VALUES (1, 'k', 'K')")
        assert run("Read whether the instance has its key pairs") == "1,0"
        pg.psql("mbin", "UPDATE site SET push_private_key = 'p', push_public_key = 'P'")
        assert run("Read whether the instance has its key pairs") == "1,1"

        pg.psql("mbin", "INSERT INTO magazine VALUES (1, 'random', 'https://elsewhere.example/m/random')")
        assert run("Check whether the random magazine exists") == ""  # a remote one does not count
        pg.psql("mbin", "INSERT INTO magazine VALUES (2, 'random', NULL)")
        assert run("Check whether the random magazine exists") == "1"


_CAPTURE: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 60}
