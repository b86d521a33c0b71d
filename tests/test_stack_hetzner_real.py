"""The real thing, off by default: `fedi smoke` against Hetzner Cloud with the Pulumi CLI.

Runs only with FEDI_REAL_CLOUD=1, HCLOUD_TOKEN, FEDI_S3_ACCESS_KEY/SECRET_KEY, FEDI_SMOKE_DOMAIN (a
zone at Hetzner DNS) and `pulumi` on PATH; costs a few cents. The smoke run tears its stack down
itself; a sweep in ``finally`` catches anything a crash could leave.
"""

from __future__ import annotations

import json
import os

import pytest

from provision.cli import app as cli

pytestmark = [
    pytest.mark.hetzner,
    pytest.mark.skipif(
        not (os.environ.get("FEDI_REAL_CLOUD") == "1" and os.environ.get("HCLOUD_TOKEN")),
        reason="real Hetzner Cloud: set FEDI_REAL_CLOUD=1 and HCLOUD_TOKEN",
    ),
]


def test_smoke_on_hetzner_cloud(capsys):
    domain = os.environ["FEDI_SMOKE_DOMAIN"]
    report = {}
    try:
        code = cli.main(["smoke", "--software", "lemmy", "--size", "tiny", "--domain", domain, "--json"])
        report = json.loads(capsys.readouterr().out)
        assert code == 0, report
        assert report["teardown_ok"]
    finally:
        cli.main(["sweep"])
        capsys.readouterr()
        cli.main(["stacks", "--json"])
        left = [s["stack"] for s in json.loads(capsys.readouterr().out or "[]")]
        assert report.get("stack") not in left
