"""`fedi render` through provision.cli.app.main: every combination, bad input as one line, packaging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from provision.cli.app import main
from tests.support.render_cases import COMBOS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_fedi_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no fedi.toml from the developer's working directory


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_render_writes_every_manifest_file(software, size, tmp_path, capsys):
    out = tmp_path / "bundle"
    argv = ["render", "--software", software, "--size", size, "--domain", "social.example.org", "--out", str(out)]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    manifest = json.loads(captured.out)
    assert manifest == json.loads((out / "manifest.json").read_text())
    for rel in manifest["files"].values():
        assert (out / rel).is_file(), rel
    if software == "kbin":
        assert "mbin" in captured.err  # says that kbin means mbin
        assert manifest["app"] == "mbin"


BAD = [
    (["--software", "friendica", "--size", "tiny", "--domain", "social.example.org"], "software"),
    (["--software", "lemmy", "--size", "huge", "--domain", "social.example.org"], "size"),
    (["--software", "lemmy", "--size", "tiny", "--domain", "https://x.org/"], "domain"),
    (["--software", "lemmy", "--size", "tiny", "--domain", "10.0.0.1"], "domain"),
    (["--software", "lemmy", "--size", "tiny", "--domain", "x.org:8443"], "domain"),
    (["--software", "lemmy", "--size", "tiny"], "domain"),
]


@pytest.mark.parametrize(("args", "path"), BAD)
def test_bad_input_is_one_line_and_writes_nothing(args, path, tmp_path, capsys):
    out = tmp_path / "bundle"
    code = main(["render", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fedi: {path}:"), err
    assert "Traceback" not in err
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith((".bundle", "bundle"))] == []


def test_bad_input_leaves_an_existing_empty_out_empty(tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    code = main(["render", "--software", "lemmy", "--size", "huge", "--domain", "a.example.org", "--out", str(out)])
    assert code == 2 and list(out.iterdir()) == []
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_non_empty_out_is_refused(tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "x").write_text("keep")
    code = main(["render", "--software", "lemmy", "--size", "tiny", "--domain", "a.example.org", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not empty" in err[0]
    assert [p.name for p in out.iterdir()] == ["x"]


def test_unknown_option_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    code = main(["render", "--bogus", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "--bogus" in err


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


def test_wheel_ships_templates_and_ansible(tmp_path):
    result = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path)]
    )
    if result.returncode != 0 and "hatchling" in result.stderr:  # no build backend in this venv: isolated build
        result = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", str(ROOT), "-w", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("fedi-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for rel in ("templates/cloud-init.yaml.j2", "templates/caddy/Caddyfile.j2", "templates/mbin/env.j2"):
        assert f"provision/_data/{rel}" in names, rel
    assert any(n.startswith("provision/_data/templates/backup/") for n in names)
    assert any(n.startswith("provision/_data/ansible/") and n.endswith("site.yml") for n in names)
    assert "provision/apps/mbin.py" in names and "provision/render/context.py" in names


def test_render_imports_no_cloud_sdk(tmp_path):
    """`fedi --help` and `fedi render` never import pulumi, paramiko or boto3 (python -X importtime)."""
    code = (
        "import sys; from provision.cli.app import main; "
        f"rc = main(['render', '--software', 'lemmy', '--size', 'tiny', '--domain', 'a.example.org', "
        f"'--out', {str(tmp_path / 'b')!r}]); sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in (["-c", "import provision.cli.app"], ["-m", "provision", "--help"], ["-c", code]):
        result = _run([sys.executable, "-X", "importtime", *argv], env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert imported, "python -X importtime printed nothing"
        heavy = sorted(m for m in imported if m.split(".")[0] in ("pulumi", "pulumi_hcloud", "paramiko", "boto3"))
        assert heavy == [], f"{argv}: imports {heavy[:5]}"
    assert "jinja2" in imported  # the render did run (and was measured)


def test_installed_wheel_renders_from_another_directory(tmp_path):
    """A non-editable install (the wheel unpacked into a target dir) renders with its own templates."""
    wheels, target, elsewhere = tmp_path / "w", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)]
    )
    if built.returncode != 0 and "hatchling" in built.stderr:
        built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", str(ROOT), "-w", str(wheels)])
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("fedi-*.whl")
    installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)])
    assert installed.returncode == 0, installed.stderr[-2000:]
    code = (
        "import sys, provision, provision.render.resources as r; "
        f"assert provision.__file__.startswith({str(target)!r}), provision.__file__; "
        "assert '/_data/' in str(r.templates_dir()), r.templates_dir(); "
        "from provision.cli.app import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # the installed copy first; dependencies from this interpreter's site
    for software in ("mastodon", "lemmy", "kbin"):
        out = elsewhere / software
        argv = [
            "render",
            "--software",
            software,
            "--size",
            "small",
            "--domain",
            "social.example.org",
            "--out",
            str(out),
        ]
        result = _run([sys.executable, "-c", code, *argv], env=env, cwd=elsewhere)
        assert result.returncode == 0, result.stderr[-2000:]
        manifest = json.loads((out / "manifest.json").read_text())
        assert all((out / rel).is_file() for rel in manifest["files"].values())
