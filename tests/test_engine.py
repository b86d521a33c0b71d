"""The Automation API wrapper: preflight, passphrase handling, backend URLs and the error mapping."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
from pulumi.automation import errors
from pulumi.automation._cmd import CommandResult

from provision import engine
from provision.errors import MissingPrerequisite, ProvisionError, UsageError
from tests.stack_fixtures import config_of, fake_cli, isolate

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
