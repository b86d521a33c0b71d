"""`fedi smoke`: up an ephemeral stack, check it, and tear it down - always.

Teardown runs on success, on failure, on Ctrl-C and SIGTERM (how CI cancels a job) and on timeout
(SIGALRM); while it runs, further SIGINT/SIGTERM are ignored so a second cancel cannot leave a
paid server behind. The report is a human summary, JSON, or JUnit XML for CI systems; it is ok
only when every check ran and passed and the teardown succeeded. A check that could not run (the app's
containers were not started) is reported as skipped, never as passed: a smoke is green only when the
app itself answered.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from provision.errors import FediError, HealthError, ProvisionError


class Interrupted(FediError):
    exit_code = 130


class SmokeTimeout(FediError):
    exit_code = 124


@dataclass(frozen=True)
class Step:
    name: str  # provision | https | http-redirect | nodeinfo | api | webfinger | actor | teardown
    ok: bool  # False for a skipped step
    detail: str
    skipped: bool = False  # it could not run: neither passed nor failed


@dataclass
class SmokeReport:
    stack: str
    domain: str
    software: str
    size: str
    steps: list[Step] = field(default_factory=list)
    error: str = ""  # why the run stopped early
    elapsed_s: float = 0.0

    @property
    def teardown_ok(self) -> bool:
        return any(s.name == "teardown" and s.ok for s in self.steps)

    @property
    def ok(self) -> bool:
        return not self.error and len(self.steps) > 2 and all(s.ok and not s.skipped for s in self.steps)

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if not s.ok and not s.skipped]

    @property
    def skipped(self) -> list[Step]:
        return [s for s in self.steps if s.skipped]

    @property
    def exit_code(self) -> int:
        """0 passed; 1 a step failed or the run stopped; HealthError's code (6) when nothing failed but
        checks were skipped: the instance's front answered, the app's health is unknown."""
        if self.ok:
            return 0
        if self.error or self.failed:
            return 1
        return HealthError.exit_code

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "stack": self.stack,
            "domain": self.domain,
            "software": self.software,
            "size": self.size,
            "error": self.error,
            "teardown_ok": self.teardown_ok,
            "skipped": [s.name for s in self.skipped],
            "elapsed_s": round(self.elapsed_s, 1),
            "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail, "skipped": s.skipped} for s in self.steps],
        }

    def text(self) -> str:
        verdict = "PASSED" if self.ok else "INCOMPLETE" if self.exit_code == HealthError.exit_code else "FAILED"
        rows = [f"smoke {self.software}/{self.size} on {self.domain}: {verdict}"]
        rows += [f"  {'skip' if s.skipped else 'ok  ' if s.ok else 'FAIL'} {s.name}: {s.detail}" for s in self.steps]
        if self.error:
            rows.append(f"  stopped: {self.error}")
        return "\n".join(rows)

    def junit(self) -> str:
        failures = len(self.failed)
        suite = ET.Element(
            "testsuite",
            name=f"fedi smoke {self.software} {self.size}",
            tests=str(len(self.steps)),
            failures=str(failures),
            errors="1" if self.error and not failures else "0",
            skipped=str(len(self.skipped)),
            time=f"{self.elapsed_s:.1f}",
        )
        for s in self.steps:
            case = ET.SubElement(suite, "testcase", classname=f"fedi.smoke.{self.software}", name=s.name)
            if s.skipped:
                ET.SubElement(case, "skipped", message=s.detail[:500]).text = s.detail
            elif not s.ok:
                ET.SubElement(case, "failure", message=s.detail[:500]).text = s.detail
        if self.error and not failures:
            case = ET.SubElement(suite, "testcase", classname=f"fedi.smoke.{self.software}", name="run")
            ET.SubElement(case, "error", message=self.error[:500]).text = self.error
        return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def _raise_signal(signum, _frame):
    if signum == signal.SIGALRM:
        raise SmokeTimeout("the smoke run hit its timeout")
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def teardown(provider: Any, stack: str, progress: Callable[[str], None]) -> Step:
    from provision.lifecycle.stack import bundle_dir, staging_issuer_path

    try:
        provider.down(stack, progress, purge_backups=True)
    except FediError as err:
        if not isinstance(err, ProvisionError) or "does not exist" not in err.message:
            return Step("teardown", False, f"{err.line()}: run `fedi sweep` or remove {stack} by hand")
        detail = "nothing had been created"
    else:
        detail = f"{stack} destroyed and removed from the backend"
    path = bundle_dir(stack)
    if path.exists():
        shutil.rmtree(path)
    staging_issuer_path(stack).unlink(missing_ok=True)
    return Step("teardown", True, detail)


def run(spec, provider, progress: Callable[[str], None], *, timeout: float, steps=None) -> SmokeReport:
    """Up, check, tear down. ``spec`` must be ephemeral (staging CA, labels, TTL, no protection)."""
    from provision.lifecycle import stack as lifecycle

    if not spec.ephemeral:
        raise ProvisionError("smoke runs only on ephemeral stacks")
    report = SmokeReport(spec.stack_name, spec.domain, spec.software, spec.size)
    started = time.monotonic()
    previous = {s: signal.signal(s, _raise_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_REAL, timeout)
    preflight_passed = False
    try:
        provider.preflight(spec)  # a missing prerequisite means nothing can have been created
        preflight_passed = True
        result = lifecycle.up(spec, provider, progress, steps=steps or lifecycle.Steps())
        report.steps.append(Step("provision", True, f"{result.outputs.ipv4} in {result.elapsed_s:.0f}s"))
        for check in getattr(result.health, "checks", ()):
            report.steps.append(Step(check.name, check.ok, check.detail, skipped=check.skipped))
    except (FediError, KeyboardInterrupt) as err:
        report.error = err.line() if isinstance(err, FediError) else "interrupted"
        report.steps.append(Step("health" if isinstance(err, HealthError) else "provision", False, report.error))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        try:
            if preflight_passed:
                progress(f"tearing down {spec.stack_name}")
                report.steps.append(teardown(provider, spec.stack_name, progress))
            else:
                report.steps.append(Step("teardown", True, "nothing was created (preflight failed)"))
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        report.elapsed_s = time.monotonic() - started
    return report
