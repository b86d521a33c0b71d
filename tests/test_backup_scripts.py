"""Offline checks of the backup scripts: shellcheck on every rendering, the restic.env reader, the
cleanup commands per app (docker replaced by a recorder on PATH: the commands are compared as values).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_backup_support import SCRIPTS, render_scripts, write_env

from provision.errors import BackupError
from provision.lifecycle.backup import parse_env

RENDERINGS = [(sw, st) for sw in ("mastodon", "lemmy", "kbin") for st in (False, True)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    base = tmp_path_factory.mktemp("scripts")
    return {(sw, st): render_scripts(base / f"{sw}-{st}", software=sw, storage=st) for sw, st in RENDERINGS}


@pytest.mark.parametrize(("software", "storage"), RENDERINGS)
def test_rendered_scripts_are_shellcheck_clean(rendered, software, storage):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed: run scripts/test, which installs it")
    paths = [str(rendered[(software, storage)] / name) for name in SCRIPTS]
    proc = subprocess.run(["shellcheck", "--severity=style", *paths], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_rendering_fills_the_server_defaults(rendered):
    text = (rendered[("mastodon", True)] / "fedi-backup").read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "DEFAULT_APP='mastodon'" in text and "DEFAULT_MEDIA_IN_BUCKET='1'" in text
    assert "DEFAULT_APP_DIR='/opt/fedi/app'" in text and "DEFAULT_DATA_DIR='/srv/fedi'" in text
    assert "{{" not in text and "{%" not in text
    assert "DEFAULT_MEDIA_IN_BUCKET='0'" in (rendered[("mastodon", False)] / "fedi-backup").read_text()
    assert "DEFAULT_APP='mbin'" in (rendered[("kbin", False)] / "fedi-cleanup").read_text()


def test_help_needs_no_settings(rendered):
    for name in SCRIPTS:
        proc = subprocess.run(
            ["bash", str(rendered[("mastodon", False)] / name), "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0 and name in proc.stdout


def test_bundle_renders_the_scripts_and_an_env_they_read(tmp_path):
    """The bundle's own rendering (templates/backup -> bin/) and its restic.env, read by both readers."""
    bundle_mod = pytest.importorskip("provision.render.bundle")
    from provision.render.secrets import generate_secrets
    from provision.sizing import sizing
    from provision.spec import InstanceSpec

    spec = InstanceSpec(software="mastodon", size="tiny", domain="social.example.org")
    bundle = bundle_mod.render_bundle(spec, sizing(spec), generate_secrets(spec), storage=None, out=tmp_path / "b")
    for role in ("backup-script", "restore-script", "cleanup-script"):
        path = bundle.path(role)
        assert path.stat().st_mode & 0o777 == 0o755
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    env_path = bundle.path("backup-env")
    assert env_path.stat().st_mode & 0o777 == 0o600
    values = parse_env(env_path.read_text())
    for key in ("RESTIC_REPOSITORY", "RESTIC_PASSWORD", "FEDI_APP", "FEDI_DB_NAME", "FEDI_KEEP_DAILY"):
        assert values.get(key), key
    assert values["RESTIC_REPOSITORY"] == "/var/backups/fedi/restic"
    assert bash_read_env(bundle.path("backup-script"), env_path) == values


ODD_VALUES = {
    "RESTIC_PASSWORD": "a b$(touch /tmp/fedi-pwned)`id`;'\"#=x",
    "RESTIC_REPOSITORY": "s3:https://fsn1.your-objectstorage.com/backups",
    "QUOTED": '"double quoted"',
    "SINGLE": "'single quoted'",
    "EMPTY": "",
    "TRAILING": "spaces  ",
}


def bash_read_env(script: Path, env_file: Path) -> dict[str, str]:
    """Run the script's own load_env on env_file and return what it exported."""
    func = subprocess.run(
        ["sed", "-n", "/^log()/,/^}/p;/^die()/,/^}/p;/^load_env()/,/^}/p", str(script)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    code = f'set -euo pipefail\nPROG=t\n{func}\nload_env "$1"\nenv -0'
    proc = subprocess.run(["bash", "-c", code, "t", str(env_file)], capture_output=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = dict(item.split(b"=", 1) for item in proc.stdout.split(b"\0") if b"=" in item)
    keys = {line.split("=", 1)[0] for line in env_file.read_text().splitlines() if "=" in line}
    return {k.decode(): v.decode() for k, v in out.items() if k.decode() in keys}


def test_env_file_is_read_literally_by_bash_and_python(rendered, tmp_path):
    env_file = write_env(tmp_path / "restic.env", ODD_VALUES)
    with env_file.open("a") as f:
        f.write("# a comment\n\nCRLF=value\r\n")
    expected = {**ODD_VALUES, "QUOTED": "double quoted", "SINGLE": "single quoted", "CRLF": "value"}
    assert parse_env(env_file.read_text()) == expected
    for name in ("fedi-backup", "fedi-restore"):
        assert bash_read_env(rendered[("mastodon", False)] / name, env_file) == expected
    # fedi-cleanup takes only its own settings: the repository password never enters its environment.
    assert bash_read_env(rendered[("mastodon", False)] / "fedi-cleanup", env_file) == {}
    assert not Path("/tmp/fedi-pwned").exists()


@pytest.mark.parametrize("bad", ["no equals sign", "1KEY=x", "KEY WITH SPACE=x"])
def test_bad_env_lines_are_refused_without_echoing_values(rendered, tmp_path, bad):
    env_file = tmp_path / "restic.env"
    env_file.write_text(f"RESTIC_PASSWORD=s3cret\n{bad}\n")
    with pytest.raises(BackupError) as err:
        parse_env(env_file.read_text(), source=str(env_file))
    assert ":2:" in str(err.value) and "s3cret" not in str(err.value)
    script = rendered[("mastodon", False)] / "fedi-backup"
    proc = subprocess.run(
        ["bash", str(script), "list"],
        env={**os.environ, "FEDI_ENV_FILE": str(env_file)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and f"{env_file}:2:" in proc.stderr and "s3cret" not in proc.stderr


# ---- fedi-cleanup: the commands it runs, per app ---------------------------------------------------

RECORDER = """#!/bin/sh
# Stands in for the docker CLI: records argv, reports the running services given in $RUNNING.
printf '%s\\n' "$*" >> "$DOCKER_LOG"
case "$*" in
  "compose ps --services --status running") printf '%s\\n' $RUNNING ;;
esac
exit 0
"""


def run_cleanup(tmp_path: Path, software: str, running: str, weekday: str = "3", docker: bool = True, **env):
    scripts = render_scripts(tmp_path / "bin", software=software)
    app_dir = tmp_path / "app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "compose.yaml").write_text("name: fedi\n")
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir(exist_ok=True)
    log = tmp_path / "docker.log"
    log.write_text("")
    if docker:
        (fake_bin / "docker").write_text(RECORDER)
        (fake_bin / "docker").chmod(0o755)
    values = {"FEDI_APP_DIR": str(app_dir), "FEDI_MEDIA_DAYS": "7", "FEDI_PREVIEW_CARD_DAYS": "30", **env}
    env_file = write_env(tmp_path / "restic.env", values)
    proc = subprocess.run(
        ["bash", str(scripts / "fedi-cleanup")],
        env={
            "PATH": f"{fake_bin}:/usr/bin:/bin",
            "FEDI_ENV_FILE": str(env_file),
            "DOCKER_LOG": str(log),
            "RUNNING": running,
            "FEDI_WEEKDAY": weekday,
        },
        capture_output=True,
        text=True,
    )
    return proc, [line for line in log.read_text().splitlines() if not line.startswith("compose ps")]


def test_cleanup_mastodon_commands(tmp_path):
    proc, calls = run_cleanup(tmp_path, "mastodon", "web sidekiq streaming")
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        "compose exec -T web tootctl media remove --days 7",
        "compose exec -T web tootctl preview_cards remove --days 30",
    ]


def test_cleanup_mastodon_removes_orphans_on_sundays_and_never_below_14_preview_days(tmp_path):
    proc, calls = run_cleanup(tmp_path, "mastodon", "sidekiq", weekday="7", FEDI_PREVIEW_CARD_DAYS="3")
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        "compose exec -T sidekiq tootctl media remove --days 7",
        "compose exec -T sidekiq tootctl preview_cards remove --days 14",
        "compose exec -T sidekiq tootctl media remove-orphans",
    ]


def test_cleanup_mbin_command(tmp_path):
    proc, calls = run_cleanup(tmp_path, "kbin", "php messenger")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["compose exec -T php bin/console --no-interaction mbin:images:remove-remote --days 7"]


@pytest.mark.parametrize(
    ("software", "running", "docker", "message"),
    [
        ("mastodon", "", True, "not running: nothing to clean"),
        ("kbin", "", True, "not running: nothing to clean"),
        ("mastodon", "web", False, "not deployed, nothing to clean"),
        ("lemmy", "lemmy pictrs", True, "pict-rs expires proxied media"),
    ],
)
def test_cleanup_with_nothing_to_do_exits_zero(tmp_path, software, running, docker, message):
    proc, calls = run_cleanup(tmp_path, software, running, docker=docker)
    assert proc.returncode == 0, proc.stderr
    assert message in proc.stderr
    assert calls == []


def test_cleanup_refuses_nonsense_days(tmp_path):
    proc, calls = run_cleanup(tmp_path, "mastodon", "web", FEDI_MEDIA_DAYS="0")
    assert proc.returncode != 0 and "FEDI_MEDIA_DAYS" in proc.stderr
    assert calls == []
