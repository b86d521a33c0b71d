"""`fedi smoke` on the real test host (the local provider: a booted Debian 13 machine).

The whole path runs for real - bundle, machine, pinned SSH, the playbook, health, teardown - once to
the end, and once cancelled with SIGTERM while the playbook runs (what a CI runner does to a
cancelled job). Both must leave nothing behind: no stack in the state, no machine running.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from provision.cli import app as cli

pytestmark = pytest.mark.testhost
ROOT = Path(__file__).resolve().parent.parent
ARGS = ["smoke", "--provider", "local", "--software", "lemmy", "--size", "tiny", "--domain", "smoke.localhost"]


def _machines_running(stack: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "systemd-nspawn" in cmdline and stack in cmdline:
            found.append(cmdline)
    return found


def _left_behind() -> list:
    from provision.providers.local.provider import LocalProvider

    return LocalProvider().stacks()


def test_smoke_runs_the_whole_path_and_tears_down(local_image, tmp_path, capsys):
    junit = tmp_path / "smoke.xml"
    code = cli.main([*ARGS, "--json", "--junit", str(junit)])
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["teardown_ok"], out.err[-3000:]
    names = [s["name"] for s in report["steps"]]
    assert names[0] == "provision" and names[-1] == "teardown" and "https" in names
    assert ET.parse(junit).getroot().get("failures") == "0"
    if report["skipped"]:  # the app's images could not be pulled here: never a green smoke
        assert code == 6 and not report["ok"], out.err[-3000:]
        assert report["skipped"] == ["nodeinfo", "api", "webfinger", "actor"]
        assert ET.parse(junit).getroot().get("skipped") == "4"
    else:
        assert code == 0 and report["ok"], out.err[-3000:]
    assert _left_behind() == []
    assert _machines_running(report["stack"]) == []


def test_sigterm_while_provisioning_tears_down(local_image, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "provision", *ARGS, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:  # bounded: wait for the playbook to start
            try:
                line = lines.get(timeout=5)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line)
            if "with the playbook" in line:
                proc.send_signal(signal.SIGTERM)
                break
        else:
            pytest.fail("the playbook never started:\n" + "".join(seen[-30:]))
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads(out)
    assert proc.returncode == 1, "".join(seen[-30:])
    assert report["error"] == "interrupted by SIGTERM"
    assert report["teardown_ok"] is True
    assert _machines_running(report["stack"]) == []
    env_state = {k: v for k, v in os.environ.items() if k.startswith("FEDI_")}
    assert env_state  # the subprocess used this test's state dirs: nothing may be left there
    assert _left_behind() == []
