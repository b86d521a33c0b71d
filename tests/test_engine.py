"""The Automation API wrapper: preflight, passphrase handling, backend URLs and the error mapping."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from pulumi.automation import errors
from pulumi.automation._cmd import CommandResult

from provision.errors import MissingPrerequisite, ProvisionError, UsageError
from provision.providers.hetzner import engine
from tests.support.stack_fixtures import config_of, fake_cli, isolate

TOKEN = "a" * 64


@pytest.fixture
def bindir(monkeypatch, tmp_path):
    return isolate(monkeypatch, tmp_path)


def test_this_machine_has_no_pulumi_cli_on_the_test_path(bindir):
    assert shutil.which("pulumi") is None
    assert engine.find_pulumi() is None


def test_preflight_without_the_cli_says_how_to_install_it(bindir, monkeypatch):
    monkeypatch.setenv("HCLOUD_TOKEN", TOKEN)
    with pytest.raises(MissingPrerequisite) as err:
        engine.PulumiEngine().preflight()
    line = err.value.line()
    assert "Pulumi CLI is not installed" in line
    assert "curl -fsSL https://get.pulumi.com | sh" in line
    assert "--provider local" in line
    assert "\n" not in line


def test_preflight_without_a_token_says_where_to_create_one(bindir):
    fake_cli(bindir)
    with pytest.raises(MissingPrerequisite) as err:
        engine.PulumiEngine().preflight()
    assert "HCLOUD_TOKEN is not set" in err.value.line()
    assert "Security > API tokens" in err.value.line()


def test_preflight_finds_the_installers_location(bindir, tmp_path, monkeypatch):
    home_bin = tmp_path / "home" / ".pulumi" / "bin"
    home_bin.mkdir(parents=True)
    fake_cli(home_bin)
    monkeypatch.setenv("HCLOUD_TOKEN", TOKEN)
    engine.PulumiEngine().preflight()
    assert engine.find_pulumi() == home_bin / "pulumi"


@pytest.mark.parametrize("token", ["short", "x" * 63 + "!", "b" * 65])
def test_a_malformed_token_is_refused(token):
    with pytest.raises(MissingPrerequisite, match="does not look like"):
        engine.check_token({"HCLOUD_TOKEN": token})


def test_the_engine_does_not_start_without_the_cli(bindir, monkeypatch):
    """Even past preflight, no workspace is created without the CLI: one line, nothing created."""
    monkeypatch.setenv("HCLOUD_TOKEN", TOKEN)
    eng = engine.PulumiEngine()
    with pytest.raises(MissingPrerequisite, match="Pulumi CLI is not installed"):
        eng.up(config_of(), lambda _l: None)
    assert list(engine.paths.state_dir().iterdir()) == []


def test_passphrase_is_generated_once_private_and_passed_by_environment(bindir):
    env = engine.passphrase_env()
    assert set(env) == {"PULUMI_CONFIG_PASSPHRASE"}
    files = list(engine.paths.config_dir().iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert engine.passphrase_env() == env  # the same on every run


def test_a_passphrase_from_the_environment_wins(bindir, monkeypatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "from-env")
    assert engine.passphrase_env() == {}
    assert list(engine.paths.config_dir().iterdir()) == []


def test_default_backend_is_a_local_file_backend_under_the_state_dir(bindir):
    url = engine.validate_backend(None)
    assert url.startswith("file://") and url.endswith("/pulumi")
    assert url.removeprefix("file://") == str(engine.paths.state_dir() / "pulumi")
    assert engine.validate_backend("s3://coop-state/fedi") == "s3://coop-state/fedi"
    with pytest.raises(UsageError, match="backend"):
        engine.validate_backend("https://example.org/state")


def test_plugins_are_pinned_to_the_installed_sdks():
    from pathlib import Path

    import pulumi_hcloud
    import pulumi_minio

    versions = engine.plugin_versions()
    for name, module in (("hcloud", pulumi_hcloud), ("minio", pulumi_minio)):
        plugin = json.loads((Path(module.__file__).parent / "pulumi-plugin.json").read_text())
        assert versions[name] == "v" + plugin["version"]


def _result(stderr: str, stdout: str = "") -> CommandResult:
    return CommandResult(stdout=stdout, stderr=stderr, code=255)


@pytest.mark.parametrize(
    ("exc", "kind", "expected"),
    [
        (FileNotFoundError(2, "No such file", "pulumi"), MissingPrerequisite, "Pulumi CLI is not installed"),
        (errors.InvalidVersionError("3.1.0"), MissingPrerequisite, "too old"),
        (
            errors.ConcurrentUpdateError(_result("conflict: Another update is currently in progress.")),
            ProvisionError,
            "being updated by another",
        ),
        (
            errors.StackNotFoundError(_result("no stack named 'x' found")),
            ProvisionError,
            "does not exist in the state backend",
        ),
        (
            errors.CommandError(_result("error: creating server: limit exceeded (resource_limit_exceeded, 1a2b)")),
            ProvisionError,
            "limit is reached",
        ),
        (
            errors.CommandError(_result("error: server type cx99 not found")),
            ProvisionError,
            "no capacity for this server type",
        ),
        (
            errors.CommandError(_result("error: unable to authenticate (unauthorized, 3c)")),
            ProvisionError,
            "refused the token",
        ),
        (errors.CommandError(_result("error: failed to decrypt: incorrect passphrase")), ProvisionError, "passphrase"),
        (
            errors.CommandError(_result("warning: x\nerror: something odd happened\n")),
            ProvisionError,
            "something odd happened",
        ),
    ],
)
def test_every_engine_failure_becomes_one_line(exc, kind, expected):
    mapped = engine.map_error(exc, "social-example-org")
    assert isinstance(mapped, kind)
    assert expected in mapped.line()
    assert "\n" not in mapped.line()


# ---- the workspace fedi hands to the Automation API, and the engine events it reads ----

SERVER_URN = "urn:pulumi:social-example-org::fedi::hcloud:index/server:Server::server"


def _version_cli(bindir):
    """A `pulumi` that answers `pulumi version` (all PulumiCommand asks when it is constructed)."""
    cli = bindir / "pulumi"
    cli.write_text('#!/bin/sh\n[ "$1" = version ] && echo v3.200.0 && exit 0\nexit 99\n')
    cli.chmod(0o755)


def test_workspace_options_local_backend_passphrase_in_env_not_argv(bindir):
    _version_cli(bindir)
    eng = engine.PulumiEngine()
    opts = eng._opts()
    assert opts.project_settings.name == "fedi"
    assert opts.project_settings.backend.url == eng.backend
    assert os.path.isdir(eng.backend.removeprefix("file://"))
    assert opts.secrets_provider == "passphrase"
    assert set(opts.env_vars) == {"PULUMI_CONFIG_PASSPHRASE", "PULUMI_SKIP_UPDATE_CHECK"}
    assert opts.pulumi_command.command == str(bindir / "pulumi")
    assert stat.S_IMODE(os.stat(opts.work_dir).st_mode) == 0o700


def test_workspace_options_with_a_coop_backend(bindir):
    _version_cli(bindir)
    opts = engine.PulumiEngine("s3://coop-state/fedi?region=fsn1")._opts()
    assert opts.project_settings.backend.url == "s3://coop-state/fedi?region=fsn1"


def _event(kind: str, op: str, inputs: dict | None = None):
    from pulumi.automation.events import EngineEvent

    meta = {"op": op, "urn": SERVER_URN, "type": "hcloud:index/server:Server", "provider": ""}
    if inputs is not None:
        meta["new"] = {"type": meta["type"], "urn": SERVER_URN, "inputs": inputs}
    return EngineEvent.from_json({kind: {"metadata": meta}})


def test_preview_steps_are_read_from_engine_events_with_secrets_redacted():
    step = engine.planned_from_event(_event("resourcePreEvent", "create", {"serverType": "cx33", "userData": "x"}))
    assert (step.type, step.name, step.action) == ("hcloud:index/server:Server", "server", "create")
    assert step.properties == {"serverType": "cx33", "userData": "[secret]"}
    assert engine.planned_from_event(_event("resOutputsEvent", "create")) is None


def test_progress_lines_name_the_resource_and_the_elapsed_time():
    lines: list[str] = []
    on_event = engine._progress_events(lines.append, started=0.0)
    on_event(_event("resOutputsEvent", "create"))
    on_event(_event("resOutputsEvent", "same"))
    on_event(_event("resOpFailedEvent", "update"))
    assert len(lines) == 2
    assert lines[0].startswith("+ Server server created (") and lines[0].endswith("s)")
    assert lines[1].startswith("! Server server failed")


def test_the_passphrase_reaches_pulumi_by_environment_never_by_argv(bindir, tmp_path):
    """A stand-in `pulumi` records the argv and environment fedi's workspace runs it with."""
    log = tmp_path / "calls.log"
    cli = bindir / "pulumi"
    cli.write_text(
        "#!/bin/sh\n"
        f'echo "argv: $*" >> {log}\n'
        f'echo "env: ${{PULUMI_CONFIG_PASSPHRASE:-unset}}" >> {log}\n'
        '[ "$1" = version ] && echo v3.200.0 && exit 0\n'
        'case "$*" in *"stack ls"*) echo "[]"; exit 0;; esac\n'
        "exit 0\n"
    )
    cli.chmod(0o755)
    assert engine.PulumiEngine().stack_names() == []
    passphrase = engine.passphrase_env()["PULUMI_CONFIG_PASSPHRASE"]
    text = log.read_text()
    argv_lines = [line for line in text.splitlines() if line.startswith("argv:")]
    assert any("stack ls" in line for line in argv_lines)
    assert all(passphrase not in line for line in argv_lines)
    assert f"env: {passphrase}" in text
