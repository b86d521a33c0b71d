"""The units fedi installs on the server, rated by `systemd-analyze security --offline=true`.

Each service unit of the bundle (backup, check, cleanup) and the playbook's own (the firewall) is laid
out in a private root like the server's and rated offline by the systemd-analyze of the machine running
the tests. Every unit must stay at or below its ceiling in tests/data/unit-exposure.txt (each with the
reason it is not lower) and at or below the OK goal; `systemd-analyze verify` stays silent on them.
tests/test_security_testhost.py rates the installed units again on a configured Debian 13 host.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.support.render_cases import SOFTWARE, rendered, tool
from tests.support.unit_security import GOAL, ceilings, overall

ROOT = Path(__file__).resolve().parent.parent
SERVICE_ROLES = ("backup-service", "backup-check-service", "cleanup-service")
FIREWALL = ROOT / "ansible/roles/base/templates/fedi-firewall.service.j2"


def firewall_unit() -> str:
    """The playbook's firewall unit, rendered with the role's defaults (as ansible's template module does)."""
    defaults = yaml.safe_load((ROOT / "ansible/roles/base/defaults/main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)  # noqa: S701
    return env.from_string(FIREWALL.read_text()).render(ansible_managed="Ansible managed", **defaults)


def server_root(root: Path, units: dict[str, str]) -> list[str]:
    """A private root laid out like the server: systemd's own units, fedi's units, stub programs."""
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for program in ("usr/local/sbin/fedi-backup", "usr/local/sbin/fedi-cleanup", "usr/sbin/nft"):
        (root / program).parent.mkdir(parents=True, exist_ok=True)
        (root / program).write_text("#!/bin/sh\nexit 0\n")
        (root / program).chmod(0o755)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
    return [f"/etc/systemd/system/{name}" for name in units]


def fedi_units(software: str) -> dict[str, str]:
    bundle, _ = rendered(software, "small", "storage")
    units = {bundle.path(role).name: bundle.path(role).read_text() for role in SERVICE_ROLES}
    units["fedi-firewall.service"] = firewall_unit()
    return units


def rate(root: Path, paths: list[str]) -> dict[str, tuple[float, str]]:
    argv = [tool("systemd-analyze"), "security", "--offline=true", f"--root={root}", "--no-pager", *paths]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return overall(result.stdout)


@pytest.mark.parametrize("software", SOFTWARE)
def test_every_fedi_unit_is_rated_ok_or_better(software, tmp_path):
    units = fedi_units(software)
    limits = ceilings()
    assert set(units) == set(limits), "tests/data/unit-exposure.txt names exactly the units fedi installs"
    rated = rate(tmp_path, server_root(tmp_path, units))
    print()
    for unit, (exposure, rating) in sorted(rated.items()):
        print(f"  {unit:<28} {exposure:>4} {rating}")
    assert set(rated) == set(units)
    above = {u: e for u, (e, _) in rated.items() if e > min(GOAL, limits[u][0])}
    assert above == {}, f"exposure above the ceiling in tests/data/unit-exposure.txt: {above}"


@pytest.mark.parametrize("software", SOFTWARE)
def test_hardened_units_verify_clean(software, tmp_path):
    paths = server_root(tmp_path, fedi_units(software))
    argv = [tool("systemd-analyze"), "verify", f"--root={tmp_path}", *paths]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_an_unsandboxed_unit_is_rated_above_the_goal(tmp_path):
    """The check can fail: the backup unit without its [Service] sandbox lines is rated UNSAFE."""
    units = fedi_units("lemmy")
    bare = units["fedi-backup.service"].split("# Sandbox")[0]  # the unit as it was before the sandbox
    assert "ExecStart=" in bare and "ProtectSystem" not in bare
    rated = rate(tmp_path, server_root(tmp_path, {"fedi-backup.service": bare}))
    assert rated["fedi-backup.service"][0] > GOAL


def test_the_ceilings_file_needs_a_reason(tmp_path):
    path = tmp_path / "exposure.txt"
    path.write_text("fedi-backup.service 2.0\n")
    with pytest.raises(ValueError, match="reason"):
        ceilings(path)


def test_the_docker_socket_is_hidden_from_backups_that_do_not_pause_a_container():
    """Only Lemmy's backup pauses a container (pict-rs, while its repository is copied)."""
    for software in SOFTWARE:
        unit = fedi_units(software)["fedi-backup.service"]
        hidden = "InaccessiblePaths=-/run/docker.sock" in unit
        assert hidden == (software != "lemmy"), software
        assert "InaccessiblePaths=-/run/docker.sock" in fedi_units(software)["fedi-backup-check.service"]
