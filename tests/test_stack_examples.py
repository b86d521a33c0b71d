"""The example CI workflow is valid for GitHub Actions' workflow schema and uses real fedi options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "github-actions" / "fedi-smoke.yml"


def _load() -> dict:
    """YAML 1.2 reading, as GitHub does: PyYAML (YAML 1.1) turns the key `on` into True."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def _schema() -> dict:
    import check_jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "github-workflows.json"
    return json.loads(path.read_text())


def test_the_workflow_is_valid_for_the_github_workflow_schema():
    doc = _load()
    jsonschema.validate(doc, _schema())
    assert {"smoke", "sweep"} <= set(doc["jobs"])
    assert doc["on"]["schedule"] and "release" in doc["on"]


def test_the_schema_check_can_fail():
    doc = _load()
    doc["jobs"]["smoke"]["runs-on"] = {"bogus": 1}
    doc["jobs"]["smoke"]["timeout-minutes"] = "soon"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema())


def _fedi_commands(doc) -> list[str]:
    commands = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            run = step.get("run", "")
            commands += [line for line in re.split(r"\n(?=\S)", run) if line.startswith("fedi ")]
    return commands


@pytest.mark.parametrize("command", ["smoke", "sweep"])
def test_every_option_the_workflow_passes_exists(command):
    from typer.testing import CliRunner

    from provision.cli.app import app

    doc = _load()
    lines = [c for c in _fedi_commands(doc) if c.split()[1] == command]
    assert lines, f"the workflow runs no `fedi {command}`"
    help_text = CliRunner().invoke(app, [command, "--help"]).output
    for option in re.findall(r"(--[a-z][a-z-]+)", " ".join(lines)):
        assert option in help_text, f"fedi {command} has no {option}"
    assert "HCLOUD_TOKEN: ${{ secrets.HCLOUD_TOKEN }}" in WORKFLOW.read_text()  # from the secret store, never inline
