"""Shared fixtures.

- Every test gets its own FEDI_STATE_DIR, FEDI_CACHE_DIR and FEDI_CONFIG_DIR (temporary dirs).
- The Debian 13 image is the exception: FEDI_IMAGE_DIR points at the user's real image cache (or
  the FEDI_IMAGE_DIR given), so the suite builds it once and reuses it across runs.
- Tests marked ``testhost`` need root, systemd-nspawn and debootstrap. Without them they are skipped,
  except under CI (CI=true), where a missing prerequisite fails the test: CI must run them.
- ``test_machine``: one booted Debian 13 machine for the session, through the local provider's own
  machine code (provision.providers.local.machine), with a fresh host key and client key; destroyed at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import pytest

IMAGE_DIR = Path(os.environ.get("FEDI_IMAGE_DIR") or Path(platformdirs.user_cache_dir("fedi")) / "images")


@pytest.fixture(autouse=True)
def fedi_dirs(tmp_path, monkeypatch):
    for env, sub in (("FEDI_STATE_DIR", "state"), ("FEDI_CACHE_DIR", "cache"), ("FEDI_CONFIG_DIR", "config")):
        path = tmp_path / "fedi" / sub
        path.mkdir(parents=True, mode=0o700)
        monkeypatch.setenv(env, str(path))
    monkeypatch.setenv("FEDI_IMAGE_DIR", str(IMAGE_DIR))
    return tmp_path / "fedi"


def testhost_missing() -> str | None:
    """Why the test host cannot run here, or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux"
    for tool in ("systemd-nspawn", "debootstrap", "ip", "nsenter", "zstd"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/test installs it)"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("testhost") is None:
        return
    reason = testhost_missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"testhost: {reason}; CI must run the test-host tests", pytrace=False)
    pytest.skip(f"testhost: {reason}")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def local_image():
    """The cached Debian 13 image (built on first use, a few minutes; reused afterwards)."""
    from provision.providers.local import image

    os.environ["FEDI_IMAGE_DIR"] = str(IMAGE_DIR)
    return image.ensure_image(_progress)


@dataclass(frozen=True)
class TestMachine:
    __test__ = False  # a fixture value, not a test class

    machine: object  # provision.providers.local.machine.Machine
    state: Path  # the state dir it lives under
    client_key: Path  # private key of the `fedi` user (0600)
    host_public_key: str  # the pinned host key, OpenSSH one-line form

    @property
    def address(self) -> str:
        return self.machine.address

    def run(self, argv: list[str], timeout: float = 120):
        from provision.providers.local import machine

        return machine.run_in(self.machine, argv, timeout=timeout)


@pytest.fixture(scope="session")
def test_machine(local_image, tmp_path_factory):
    from tests.support.machines import booted_machine

    reason = testhost_missing()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("machine-state")
    with booted_machine(state, "fedi-test", _progress) as (booted, boot, directory):
        yield TestMachine(booted, state, directory / "client_key", boot.host_keys[0].public)
