"""`fedi smoke`: the whole path on the test engine, teardown on success, failure, SIGTERM and timeout.

The host configuration and health steps need a real server; here they are recording stand-ins
(the same ones tests/test_lifecycle.py uses), so these tests cover smoke's own logic: the
ordering, the always-teardown, the signal handling and the reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from provision.errors import HealthError
from provision.lifecycle import smoke
from provision.lifecycle import stack as lifecycle
from provision.lifecycle.health import NOT_STARTED, Check, HealthReport, Target
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from tests.support.stack_fixtures import isolate, spec_of
from tests.test_lifecycle import Recorder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def provider(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    return HetznerProvider(engine=OfflineEngine())


def eph():
    return spec_of(domain="t1a2b3c.smoke.example.org", ephemeral=True, ttl_hours=2, size="tiny")


def healthy(spec, outputs, progress):
    target = Target(spec.domain, spec.app, address=outputs.access.address)
    names = ("https", "http-redirect", "nodeinfo", "api", "webfinger", "actor")
    return HealthReport(target, tuple(Check(n, True, "fine") for n in names))


def app_not_started(spec, outputs, progress):
    """What health.check reports for a stack whose app's containers never started (the proxy's 502)."""
    target = Target(spec.domain, spec.app, address=outputs.access.address, app_started=False)
    front = (Check("https", True, "HTTPS 502 from the proxy"), Check("http-redirect", True, "308 -> https://"))
    skipped = tuple(Check(n, False, NOT_STARTED, skipped=True) for n in ("nodeinfo", "api", "webfinger", "actor"))
    return HealthReport(target, front + skipped)


def test_a_passing_run_checks_everything_and_tears_down(provider):
    steps = replace(Recorder().steps(), health=healthy)
    report = smoke.run(eph(), provider, lambda _l: None, timeout=60, steps=steps)
    assert report.ok, report.text()
    assert [s.name for s in report.steps] == [
        "provision",
        "https",
        "http-redirect",
        "nodeinfo",
        "api",
        "webfinger",
        "actor",
        "teardown",
    ]
    assert report.exit_code == 0 and report.skipped == []
    assert provider.engine.stack_names() == []
    assert not lifecycle.bundle_dir(eph().stack_name).exists()


def test_a_run_whose_app_never_answered_is_not_green(provider):
    """The proxy answers, the app's checks could not run: reported as skipped, with exit code 6."""
    steps = replace(Recorder().steps(), health=app_not_started)
    report = smoke.run(eph(), provider, lambda _l: None, timeout=60, steps=steps)
    assert not report.ok and report.failed == [] and report.teardown_ok
    assert report.exit_code == 6
    data = report.as_dict()
    assert data["ok"] is False and data["skipped"] == ["nodeinfo", "api", "webfinger", "actor"]
    assert [(s["name"], s["skipped"]) for s in data["steps"] if s["skipped"]] == [
        (n, True) for n in ("nodeinfo", "api", "webfinger", "actor")
    ]
    assert report.text().splitlines()[0].endswith(": INCOMPLETE")
    assert "  skip api: " + NOT_STARTED in report.text().splitlines()
    suite = ET.fromstring(report.junit())
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == (
        "8",
        "0",
        "4",
        "0",
    )
    skipped = [c.get("name") for c in suite.iter("testcase") if c.find("skipped") is not None]
    assert skipped == ["nodeinfo", "api", "webfinger", "actor"]
    assert [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None] == []


def test_a_failure_outranks_skipped_checks_in_the_exit_code():
    report = smoke.SmokeReport("s", "d.example.org", "lemmy", "tiny")
    report.steps = [
        smoke.Step("provision", True, "ok"),
        smoke.Step("https", False, "certificate not valid"),
        smoke.Step("api", False, NOT_STARTED, skipped=True),
        smoke.Step("teardown", True, "gone"),
    ]
    assert report.exit_code == 1 and report.text().splitlines()[0].endswith(": FAILED")


def test_fedi_smoke_exits_with_the_reports_code(monkeypatch, tmp_path, capsys):
    """The CLI: a report with skipped checks exits 6 with the JSON and JUnit saying which."""
    from provision.cli import app as cli

    def fake_run(spec, prov, progress, *, timeout):
        report = smoke.SmokeReport(spec.stack_name, spec.domain, spec.software, spec.size)
        report.steps = [
            smoke.Step("provision", True, "10.0.0.2 in 1s"),
            smoke.Step("https", True, "HTTPS 502 from the proxy"),
            smoke.Step("nodeinfo", False, NOT_STARTED, skipped=True),
            smoke.Step("teardown", True, "gone"),
        ]
        return report

    isolate(monkeypatch, tmp_path)
    monkeypatch.setattr(smoke, "run", fake_run)
    junit = tmp_path / "r.xml"
    args = ["smoke", "--provider", "local", "--software", "lemmy", "--size", "tiny", "--domain", "smoke.localhost"]
    code = cli.main([*args, "--json", "--junit", str(junit)])
    data = json.loads(capsys.readouterr().out)
    assert code == 6 and data["skipped"] == ["nodeinfo"] and data["ok"] is False
    assert ET.parse(junit).getroot().get("skipped") == "1"


def test_a_failing_health_check_still_tears_down(provider):
    def unhealthy(spec, outputs, progress):
        raise HealthError("not healthy after 600s: nodeinfo (HTTP 502)")

    report = smoke.run(
        eph(), provider, lambda _l: None, timeout=60, steps=replace(Recorder().steps(), health=unhealthy)
    )
    assert not report.ok
    assert [(s.name, s.ok) for s in report.steps] == [("health", False), ("teardown", True)]
    assert provider.engine.stack_names() == []


def test_sigterm_in_the_middle_of_provisioning_tears_down(provider):
    def cancelled(access, bundle, runtime, progress):
        os.kill(os.getpid(), signal.SIGTERM)  # what a CI runner sends when the job is cancelled
        raise AssertionError("SIGTERM did not interrupt the run")

    before = signal.getsignal(signal.SIGTERM)
    report = smoke.run(
        eph(), provider, lambda _l: None, timeout=60, steps=replace(Recorder().steps(), configure=cancelled)
    )
    assert report.error == "interrupted by SIGTERM"
    assert report.teardown_ok and not report.ok
    assert provider.engine.stack_names() == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_timeout_tears_down(provider):
    def stuck(access, bundle, runtime, progress):
        for _ in range(600):  # bounded: the 3 s timer interrupts this long before it ends
            time.sleep(0.05)
        raise AssertionError("the timeout did not fire")

    report = smoke.run(eph(), provider, lambda _l: None, timeout=3, steps=replace(Recorder().steps(), configure=stuck))
    assert report.error == "the smoke run hit its timeout"
    assert report.teardown_ok
    assert provider.engine.stack_names() == []


def test_smoke_refuses_a_non_ephemeral_stack(provider):
    from provision.errors import ProvisionError

    with pytest.raises(ProvisionError, match="ephemeral"):
        smoke.run(spec_of(), provider, lambda _l: None, timeout=60)


def test_junit_report_is_valid_xml_with_one_case_per_step():
    report = smoke.SmokeReport("s", "d.example.org", "lemmy", "tiny")
    report.steps = [
        smoke.Step("provision", True, "ok"),
        smoke.Step("api", False, "HTTP 500"),
        smoke.Step("teardown", True, "gone"),
    ]
    suite = ET.fromstring(report.junit())
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["api"]


def test_fedi_smoke_without_pulumi_fails_cleanly_and_reports_it(tmp_path):
    """The real command: preflight fails, nothing was created, teardown confirms it, exit code 1."""
    env = {k: v for k, v in os.environ.items() if k != "HCLOUD_TOKEN" and not k.startswith("PULUMI_")}
    (tmp_path / "bin").mkdir()
    env.update(
        PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin",
        HOME=str(tmp_path / "home"),
        FEDI_STATE_DIR=str(tmp_path / "state"),
        FEDI_CONFIG_DIR=str(tmp_path / "config"),
        FEDI_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT),
    )
    junit = tmp_path / "smoke.xml"
    args = ["smoke", "--software", "lemmy", "--size", "tiny", "--domain", "smoke.example.org"]
    run = subprocess.run(
        [sys.executable, "-m", "provision", *args, "--junit", str(junit), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    data = json.loads(run.stdout)
    assert data["ok"] is False and data["teardown_ok"] is True
    assert "Pulumi CLI is not installed" in data["error"]
    assert data["domain"].endswith(".smoke.example.org") and data["domain"] != "smoke.example.org"
    assert ET.parse(junit).getroot().get("failures") == "1"
    assert "Traceback" not in run.stderr
