"""Startup cost of `fedi --help` against the floor of `python -c "import typer"`.

A plain script (no assertions: wall-clock numbers belong here, not in tests):

    .venv/bin/python bench/startup.py [--runs 15]

Prints the median and the best wall time of each command and what `fedi --help` costs on top of
importing typer. `fedi --help` and `fedi render` import no cloud SDK (tests/test_cli_render.py checks
that with -X importtime); this shows what that buys.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "python -c 'import typer'": [sys.executable, "-c", "import typer"],
    "fedi --help": [sys.executable, "-m", "provision", "--help"],
    "python -c 'import pulumi'  (what fedi avoids)": [sys.executable, "-c", "import pulumi, pulumi_hcloud"],
}


def measure(argv: list[str], runs: int) -> list[float]:
    subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)  # warm the page cache and .pyc files
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    results = {}
    for name, argv in COMMANDS.items():
        try:
            results[name] = measure(argv, args.runs)
        except subprocess.CalledProcessError:
            print(f"{name:48s} (not runnable here)")
            continue
        t = results[name]
        print(f"{name:48s} median {statistics.median(t) * 1000:7.1f} ms   best {min(t) * 1000:7.1f} ms")
    base, fedi = results.get("python -c 'import typer'"), results.get("fedi --help")
    if base and fedi:
        extra = (statistics.median(fedi) - statistics.median(base)) * 1000
        print(f"{'fedi --help on top of importing typer':48s} {extra:+7.1f} ms (median)")


if __name__ == "__main__":
    main()
