"""The README's example bills are what `fedi cost --all` prints: the README stays true when prices change.

Each block after a ``<!-- bill: NAME -->`` marker in README.md is compared, line for line, with the
output of `fedi cost --all` for an account of those stacks (the real CLI, the Hetzner provider on the
test engine, prices from the fallback table). The tiny-instance figures in the prose are checked too.
Run ``python -m tests.test_readme_cost`` (from the repository root) to print the blocks after a change of prices.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from provision.cli import app as cli
from provision.cli import target as cli_target
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.sizing import sizing
from tests.support.stack_fixtures import bundle_of, spec_of

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ONE = [{"domain": "social.example.coop", "software": "mastodon", "size": "tiny"}]
FOUR = [
    *ONE,
    {"domain": "forum.example.coop", "software": "lemmy", "size": "small"},
    {"domain": "links.example.coop", "software": "kbin", "size": "medium", "location": "hel1"},
    {"domain": "town.example.coop", "software": "mastodon", "size": "large"},
]
BILLS = {"one-stack": ONE, "four-stacks": FOUR}


def readme_blocks(text: str) -> dict[str, str]:
    """NAME -> the indented block after ``<!-- bill: NAME -->``, without its 4-space indent."""
    blocks = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        found = re.fullmatch(r"<!-- bill: ([a-z-]+) -->", line.strip())
        if not found:
            continue
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
            body.append(lines[j][4:])
            j += 1
        blocks[found.group(1)] = "\n".join(body).rstrip("\n")
    return blocks


def _run(capsys, *argv) -> str:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out.rstrip("\n")


def account_of(stacks, monkeypatch, tmp_path) -> None:
    """A state backend (the test engine's) holding ``stacks``, as `fedi up` leaves them."""
    for env in ("FEDI_STATE_DIR", "FEDI_CACHE_DIR", "FEDI_CONFIG_DIR"):
        monkeypatch.setenv(env, str(tmp_path / env.lower()))
    for env in ("HCLOUD_TOKEN", "FEDI_HCLOUD_API"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("FEDI_PASSPHRASE", "readme-example")
    monkeypatch.chdir(tmp_path)
    engine = OfflineEngine()
    monkeypatch.setattr(cli_target, "make_provider", lambda name, backend=None, **_: HetznerProvider(engine=engine))
    provider = HetznerProvider(engine=engine)
    for flags in stacks:
        spec = spec_of(**flags)
        provider.secrets(spec)
        provider.up(spec, sizing(spec), bundle_of(), lambda _l: None)


@pytest.mark.parametrize("name", list(BILLS))
def test_the_readme_bill_is_what_fedi_cost_prints(name, monkeypatch, tmp_path, capsys):
    account_of(BILLS[name], monkeypatch, tmp_path)
    printed = _run(capsys, "cost", "--all")
    shown = readme_blocks(README.read_text()).get(name)
    assert shown is not None, f"README.md has no <!-- bill: {name} --> block"
    assert shown == printed, f"README's {name} bill is stale; run: python tests/test_readme_cost.py"


def tiny_figures(monkeypatch, tmp_path, capsys) -> dict[str, str]:
    """What the README says of a tiny instance: alone, and added to a co-op that already pays Object Storage."""
    account_of(FOUR[1:], monkeypatch, tmp_path)
    flags = ["--software", "mastodon", "--size", "tiny", "--domain", "social.example.coop", "--json"]
    alone = json.loads(_run(capsys, "cost", *flags, "--alone"))
    joined = json.loads(_run(capsys, "cost", *flags))
    own = sum(line["gross"] for line in joined["lines"] if not line["name"].startswith("share of"))
    share = sum(line["gross"] for line in joined["lines"] if line["name"].startswith("share of"))
    return {"alone": f"{alone['total_gross']:.2f}", "own": f"{own:.2f}", "share": f"{share:.2f}"}


def test_the_readme_tiny_instance_figures(monkeypatch, tmp_path, capsys):
    f = tiny_figures(monkeypatch, tmp_path, capsys)
    text = " ".join(README.read_text().split())
    assert f"alone costs {f['alone']} EUR gross a month" in text
    assert f"adds {f['own']} EUR gross a month to the bill" in text
    assert f"its even share of the base ({f['share']} EUR in a co-op of four)" in text


if __name__ == "__main__":  # print the blocks to paste into README.md
    import tempfile

    class _Patch:
        def setenv(self, k, v):
            import os

            os.environ[k] = v

        def delenv(self, k, raising=True):
            import os

            os.environ.pop(k, None)

        def chdir(self, p):
            import os

            os.chdir(p)

        def setattr(self, obj, name, value):
            setattr(obj, name, value)

    import contextlib
    import io

    for name, stacks in BILLS.items():
        buffer = io.StringIO()
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(buffer):
            account_of(stacks, _Patch(), Path(tmp))
            cli.main(["cost", "--all"])
        print(f"<!-- bill: {name} -->\n")
        print("\n".join("    " + line if line else "" for line in buffer.getvalue().rstrip("\n").splitlines()))
        print()
