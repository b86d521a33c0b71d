"""One Debian 13 test host configured by fedi's own remote step, and the auditors run against it.

Shared by tests/test_security_testhost.py (one host for the module) and bench/security.py. The host is
booted with systemd-nspawn (provision.providers.local.machine), configured over paramiko by
provision.remote.configure with a real rendered bundle (the app's containers are not started: no
registry here), and then audited from outside (ssh-audit over its veth address) and inside (lynis).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DATA = ROOT / "tests" / "data"
SSH_AUDIT_POLICY = DATA / "ssh-audit-policy.txt"
SSH_AUDIT_ALLOWED = DATA / "ssh-audit-allowed.txt"
RUNTIME = {"fedi_volume_device": "", "fedi_start_app": False, "fedi_bundle_dir": "/opt/fedi/bundle"}


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SecurityHost:
    software: str
    domain: str
    machine: object  # provision.providers.local.machine.Machine
    access: object  # provision.model.HostAccess, pinned to the rotated host key
    bundle: Path

    def sh(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        from provision.providers.local import machine

        return machine.run_in(self.machine, ["bash", "-c", script], timeout=timeout)


@contextlib.contextmanager
def configured_host(work: Path, software: str = "lemmy") -> Iterator[SecurityHost]:
    """Render, boot, configure through fedi's remote step; destroy the machine afterwards."""
    from provision.model import Bundle, HostAccess
    from provision.providers.local import image
    from provision.remote.configure import configure
    from tests.support.machines import booted_machine

    domain = f"{software}.localhost"
    env = {**os.environ, **{f"FEDI_{k}_DIR": str(work / k.lower()) for k in ("STATE", "CACHE", "CONFIG")}}
    bundle_dir = work / "bundle"
    render = [BIN / "fedi", "render", "--software", software, "--size", "tiny", "--domain", domain]
    proc = subprocess.run(
        [*render, "--provider", "local", "--out", str(bundle_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fedi render failed: {proc.stdout}{proc.stderr}")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    image.ensure_image(_progress)
    with booted_machine(work / "state", "fedi-sec", _progress) as (booted, boot, directory):
        access = HostAccess(
            address=booted.address, user="fedi", host_key=boot.host_keys[0].public, client_key=directory / "client_key"
        )
        bundle = Bundle(bundle_dir, manifest, "", access.host_key)
        result = configure(access, bundle, RUNTIME, _progress, ansible_dir=ROOT / "ansible", log_dir=work / "logs")
        yield SecurityHost(software, domain, booted, replace(access, host_key=result.host_key), bundle_dir)


# ---- ssh-audit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    level: str  # "fail" or "warn"
    kind: str  # kex, key, enc, mac, or "recommendation"/"cve"
    algorithm: str
    note: str

    def key(self) -> tuple[str, str]:
        return (self.level, self.algorithm)


def ssh_audit_json(address: str, *extra: str, timeout: float = 300) -> tuple[int, dict]:
    proc = subprocess.run(
        [BIN / "ssh-audit", "-j", "-n", *extra, address], capture_output=True, text=True, timeout=timeout
    )
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"ssh-audit printed no JSON (rc {proc.returncode}): {proc.stdout}{proc.stderr}") from None


def findings(report: dict) -> list[Finding]:
    """Every failure and warning of a standard ssh-audit report, algorithms and CVEs alike."""
    found = []
    for kind in ("kex", "key", "enc", "mac"):
        for entry in report.get(kind) or []:
            notes = entry.get("notes") or {}
            for level in ("fail", "warn"):
                for note in notes.get(level) or []:
                    found.append(Finding(level, kind, entry["algorithm"], note))
    for cve in report.get("cves") or []:
        found.append(Finding("fail", "cve", cve.get("name", "?"), cve.get("description", "")))
    for note in report.get("additional_notes") or []:
        if "DHEat" in note:  # the connection-rate probe: ssh-audit's text output shows it as a warning
            found.append(Finding("warn", "note", "DHEat", note))
    return found


def allowed_findings(path: Path = SSH_AUDIT_ALLOWED) -> dict[tuple[str, str], str]:
    """The allow-list: `LEVEL ALGORITHM -- reason` lines; a reason is required."""
    allowed = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"(warn|fail)\s+(\S+)\s+--\s+(\S.*)", line)
        if not match:
            raise ValueError(f"{path.name}:{number}: expected 'warn|fail ALGORITHM -- reason': {raw!r}")
        allowed[(match.group(1), match.group(2))] = match.group(3)
    return allowed


# ---- lynis -------------------------------------------------------------------------------------

LYNIS_REPORT = "/var/log/lynis-report.dat"


@dataclass(frozen=True)
class LynisReport:
    hardening_index: int
    tests_performed: int
    warnings: list[tuple[str, str]]  # (test id, text)
    suggestions: list[tuple[str, str]]  # (test id, text)


def parse_lynis_report(text: str) -> LynisReport:
    """lynis-report.dat: `key=value` lines; warning[] and suggestion[] are `TEST-ID|text|details|solution|`."""
    index, performed, warnings, suggestions = None, 0, [], []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "hardening_index":
            index = int(value)
        elif key == "lynis_tests_done":
            performed = int(value)
        elif key in ("warning[]", "suggestion[]"):
            test_id, _, rest = value.partition("|")
            fields = rest.split("|")
            details = fields[1] if len(fields) > 1 and fields[1] not in ("", "-") else ""
            entry = f"{fields[0]} ({details})" if details else fields[0]
            (warnings if key == "warning[]" else suggestions).append((test_id, entry))
    if index is None:
        raise ValueError("lynis report has no hardening_index")
    return LynisReport(index, performed, warnings, suggestions)


def run_lynis(host: SecurityHost) -> tuple[LynisReport, str]:
    """`lynis audit system` inside the host; returns the parsed report and lynis's own screen output."""
    proc = host.sh(f"lynis audit system --quick --no-colors --report-file {LYNIS_REPORT} 2>&1", timeout=900)
    report = host.sh(f"cat {LYNIS_REPORT}")
    if report.returncode != 0:
        raise AssertionError(f"lynis wrote no report (rc {proc.returncode}): {proc.stdout[-3000:]}")
    return parse_lynis_report(report.stdout), proc.stdout


# ---- testssl.sh --------------------------------------------------------------------------------

TESTSSL_ALLOWED = DATA / "testssl-allowed.txt"
STANDIN_PAGE = "<!doctype html><title>stand-in</title>" + "<p>A page the size of a small app page.</p>" * 60


def start_standins(host: SecurityHost) -> list[int]:
    """The app's containers cannot start here: answer on every port Caddy proxies to with a static page
    (large enough for Caddy to compress it, as it compresses the apps' pages)."""
    caddyfile = next(host.bundle.rglob("Caddyfile")).read_text()
    ports = sorted({int(p) for p in re.findall(r"reverse_proxy\s+127\.0\.0\.1:(\d+)", caddyfile)})
    host.sh(f"mkdir -p /srv/standin && printf '%s' '{STANDIN_PAGE}' > /srv/standin/index.html")
    for port in ports:
        proc = host.sh(
            f"systemd-run --unit=fedi-standin-{port} -- python3 -m http.server {port} --bind 127.0.0.1 "
            "--directory /srv/standin"
        )
        if proc.returncode != 0:
            raise AssertionError(f"stand-in on {port}: {proc.stderr}")
    return ports


def run_testssl(address: str, domain: str, out: Path, timeout: float = 900) -> list[dict]:
    """testssl.sh (Debian's) against Caddy: protocols, cipher categories, forward secrecy, HTTP headers,
    vulnerabilities. Returns its JSON findings (id, severity, finding)."""
    argv = ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--jsonfile", str(out), "--ip", address]
    proc = subprocess.run(
        [*argv, "-p", "-s", "-f", "-h", "-U", f"https://{domain}/"], capture_output=True, text=True, timeout=timeout
    )
    if not out.exists():
        raise AssertionError(f"testssl wrote no JSON (rc {proc.returncode}): {proc.stdout[-3000:]}{proc.stderr}")
    return json.loads(out.read_text())


def allowed_testssl(path: Path = TESTSSL_ALLOWED) -> dict[str, str]:
    """`ID -- reason` lines: testssl findings rated above LOW that are accepted, each with its reason."""
    allowed = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"(\S+)\s+--\s+(\S.*)", line)
        if not match:
            raise ValueError(f"{path.name}:{number}: expected 'ID -- reason': {raw!r}")
        allowed[match.group(1)] = match.group(2)
    return allowed


# ---- systemd-analyze security of fedi's units ---------------------------------------------------

FEDI_UNITS = ("fedi-backup.service", "fedi-backup-check.service", "fedi-cleanup.service", "fedi-firewall.service")
_NOT_SANDBOX = ("Type", "ExecStart", "ExecReload", "ExecStop", "RemainAfterExit")


def unit_exposure(host: SecurityHost) -> dict[str, tuple[float, str]]:
    """{unit: (exposure, rating)}: the host's own systemd-analyze on the installed units."""
    from tests.support.unit_security import overall

    proc = host.sh(f"systemd-analyze security --no-pager {' '.join(FEDI_UNITS)}")
    if proc.returncode != 0:
        raise AssertionError(f"systemd-analyze security failed: {proc.stderr}")
    return overall(proc.stdout)


def sandbox_properties(host: SecurityHost, unit: str) -> list[str]:
    """The installed unit's [Service] settings other than what it runs: its sandbox, as systemd-run -p."""
    text = host.sh(f"cat /etc/systemd/system/{unit}").stdout
    section, props = "", []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and line.split("=", 1)[0] not in _NOT_SANDBOX:
            props.append(line)
    return props


def run_in_sandbox(host: SecurityHost, unit: str, command: str) -> subprocess.CompletedProcess[str]:
    """``command`` as a transient service with ``unit``'s sandbox (systemd-run --wait --pipe)."""
    import shlex

    props = " ".join(f"-p {shlex.quote(p)}" for p in sandbox_properties(host, unit))
    return host.sh(f"systemd-run --wait --pipe --quiet --collect {props} -- {command}")
