"""How much a backup uploads after the first one: restic deduplication of fedi-backup's dumps.

Runs the rendered fedi-backup against a throwaway Postgres cluster and a local S3 server (moto), as
the tests do, and reports restic's own `data_added` (bytes new to the repository, before compression)
for: the first backup, a second backup of unchanged data, and a third after 1% new rows.

    .venv/bin/python bench/backup_dedup.py [--rows 300000]      (root, or a user that can run initdb)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_backup_support import backup_world, make_host  # noqa: E402


def summary(host, *args: str) -> dict:
    started = time.monotonic()
    out = host.run("fedi-backup", "run", *args).stdout.strip().splitlines()[-1]
    data = json.loads(out)
    data["seconds"] = round(time.monotonic() - started, 1)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000, help="rows of ~300 bytes in the seeded table")
    args = parser.parse_args()
    with backup_world() as (base, pg, endpoint):
        host = make_host(base / "bench", pg, f"s3:{endpoint}/backups/bench", db="benchdb")
        pg.psql("postgres", "CREATE ROLE bench LOGIN")
        pg.psql("postgres", "CREATE DATABASE benchdb OWNER bench")
        pg.psql(
            "benchdb",
            "CREATE TABLE statuses (id bigserial PRIMARY KEY, text text, created_at timestamptz DEFAULT now());"
            f"INSERT INTO statuses (text) SELECT repeat(md5(g::text), 9) FROM generate_series(1, {args.rows}) g;"
            "CREATE INDEX ON statuses (created_at);",
        )
        for d in (host.app_dir, host.bundle_dir):
            d.mkdir(parents=True, exist_ok=True)
        (host.app_dir / ".env.production").write_text("LOCAL_DOMAIN=bench.example\n")
        first = summary(host)
        second = summary(host)
        new_rows = max(1, args.rows // 100)
        pg.psql(
            "benchdb",
            f"INSERT INTO statuses (text) SELECT repeat(md5((-g)::text), 9) FROM generate_series(1, {new_rows}) g",
        )
        third = summary(host)

    def row(name: str, s: dict) -> str:
        ratio = s["data_added"] / first["data_added"]
        return (
            f"{name:<34} {s['total_bytes_processed'] / 1e6:>9.1f} MB read {s['data_added'] / 1e6:>9.2f} MB added "
            f"({ratio:6.1%} of the first)  {s['seconds']:>5.1f} s"
        )

    print(f"fedi-backup deduplication, {args.rows} rows (restic data_added; moto S3 on loopback)")
    print(row("first backup", first))
    print(row("second backup, unchanged data", second))
    print(row(f"third backup, +{new_rows} rows (1%)", third))
    return 0


if __name__ == "__main__":
    sys.exit(main())
