"""Security figures of a configured server: lynis's hardening index, ssh-audit's findings, unit exposure.

Boots one Debian 13 test host (as tests/test_security_testhost.py does: systemd-nspawn, configured by
fedi's own remote step with a real rendered bundle), runs `lynis audit system` and `systemd-analyze
security` of fedi's units inside it and ssh-audit against it from outside, prints the figures and
records them under LABEL in the JSON result file, so a change that lowers them is seen in the diff of
that file.

    .venv/bin/python bench/security.py [--software lemmy] [--label after] [--out bench/security.json]
                                                                          (root; boots a test host)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.support

from tests.support.security_host import (  # noqa: E402
    allowed_findings,
    configured_host,
    findings,
    run_lynis,
    ssh_audit_json,
    unit_exposure,
)

HERE = Path(__file__).resolve().parent


def measure(software: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedi-bench-") as tmp, configured_host(Path(tmp), software) as host:
        lynis, _ = run_lynis(host)
        units = unit_exposure(host)
        version = host.sh("lynis --version").stdout.strip()
        _, report = ssh_audit_json(host.access.address)
        found = findings(report)
        allowed = allowed_findings()
    return {
        "software": software,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "lynis": {
            "version": version,
            "hardening_index": lynis.hardening_index,
            "tests_performed": lynis.tests_performed,
            "warnings": [f"{test} {text}" for test, text in lynis.warnings],
            "suggestions": [f"{test} {text}" for test, text in lynis.suggestions],
        },
        "systemd_units": {unit: f"{exposure} {rating}" for unit, (exposure, rating) in sorted(units.items())},
        "ssh_audit": {
            "banner": report.get("banner", {}).get("raw", ""),
            "failures": sorted(f"{f.kind} {f.algorithm}" for f in found if f.level == "fail"),
            "warnings": sorted(f"{f.kind} {f.algorithm}" for f in found if f.level == "warn"),
            "unexplained": sorted(f"{f.level} {f.algorithm}" for f in found if f.key() not in allowed),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--software", default="lemmy", choices=["lemmy", "mastodon", "kbin"])
    parser.add_argument("--label", default="after", help="the key to record the figures under")
    parser.add_argument("--out", type=Path, default=HERE / "security.json")
    args = parser.parse_args()
    figures = measure(args.software)
    recorded = json.loads(args.out.read_text()) if args.out.exists() else {}
    recorded[args.label] = figures
    args.out.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    lynis, ssh = figures["lynis"], figures["ssh_audit"]
    print(f"lynis {lynis['version']}: hardening index {lynis['hardening_index']} ({lynis['tests_performed']} tests)")
    print(f"  {len(lynis['warnings'])} warning(s), {len(lynis['suggestions'])} suggestion(s)")
    print(f"ssh-audit {ssh['banner']}: {len(ssh['failures'])} failure(s), {len(ssh['warnings'])} warning(s)")
    print(f"  not explained in tests/data/ssh-audit-allowed.txt: {ssh['unexplained'] or 'none'}")
    for unit, figure in figures["systemd_units"].items():
        print(f"systemd-analyze security {unit}: {figure}")
    print(f"recorded as {args.label!r} in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
