"""A local ephemeral stack through the real CLI: `fedi up --provider local --ephemeral`, then `status`,
the sweep (nothing before the expiry; the stack once it has passed) and `down`, the last ones without
`--provider`: the stack is found where it lives. Its record carries created/expires in ISO 8601 UTC.

The sweep runs once through the CLI (the wall clock: not expired yet) and once through the same sweep
function with a clock past the stack's expiry, as a dry run, so that `fedi down` still has the stack
to destroy: both paths end in the same lifecycle.down.
"""

from __future__ import annotations

import json
import re

import pytest

from provision.cli import app as cli
from provision.lifecycle import sweep
from provision.providers.local.provider import LocalProvider
from provision.timestamps import epoch

pytestmark = pytest.mark.testhost
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _main(capsys, *argv: str):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, f"fedi {' '.join(argv)} exited {code}: {out.err[-3000:]}"
    return json.loads(out.out) if out.out.strip() else None


def test_up_status_sweep_and_down_of_a_local_ephemeral_stack(local_image, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no fedi.toml
    up = _main(
        capsys,
        *("up", "--provider", "local", "--ephemeral", "--ttl", "2h"),
        *("--software", "lemmy", "--size", "tiny", "--domain", "eph.localhost", "--yes", "--json"),
    )
    stack, domain = up["stack"], up["outputs"]["domain"]
    try:
        assert domain.endswith(".eph.localhost") and stack == domain.replace(".", "-")
        status = _main(capsys, "status", "--domain", domain, "--json")  # no --provider
        out = status["outputs"]
        assert out["ephemeral"] is True and ISO.match(out["created"]) and ISO.match(out["expires"])
        assert round((epoch(out["expires"]) - epoch(out["created"])) / 3600) == 2
        assert all(c["ok"] or c["skipped"] for c in status["health"]), status["health"]  # no images: app skipped

        assert _main(capsys, "sweep", "--provider", "local", "--dry-run", "--json") == []  # not expired yet
        later = epoch(out["expires"]) + 1
        items = sweep.sweep(LocalProvider(), dry_run=True, now=later)
        assert [(i.kind, i.name, i.action) for i in items] == [("stack", stack, "would destroy")]

        _main(capsys, "down", "--domain", domain, "--yes", "--json")  # no --provider
        assert LocalProvider().stacks() == []
    finally:
        prov = LocalProvider()
        if prov.stored_domain(stack) is not None:
            prov.down(stack, lambda _line: None, purge_backups=True)
