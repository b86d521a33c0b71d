"""The CLI's own dependencies: typer vendors click, so fedi must run where no `click` is installed
(a plain `pip install .` does not bring one; the test extras do, through other tools)."""

import subprocess
import sys

CODE = """
import sys
sys.modules["click"] = None  # any `import click` now fails, as in a venv without it
from provision.cli.app import main
for argv in (["--help"], ["up", "--help"], ["down", "--help"], ["backup", "--help"]):
    assert main(argv) == 0, argv
assert main(["render", "--bogus"]) == 2
"""


def test_fedi_runs_without_click_installed():
    run = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
