"""`fedi up --images DIR` on the local provider, one booted machine, through the real CLI.

1. `fedi up` of an mbin stack without --images (the machine boots; nothing can be pulled here, so the
   app is not started: the path without --images is unchanged).
2. Inside that machine's Docker: a tiny image (`docker import` of a one-file root filesystem, not the
   app) tagged with mbin's pinned reference, and the same image under another tag; both `docker save`d
   out to this host, then removed from the machine's Docker.
3. `fedi up --images` of another domain with the wrong-tag archive: one line, exit 2, nothing created.
4. `fedi up --images` of the first stack with the right archive: uploaded over the pinned SSH session,
   loaded (`docker image inspect` on the machine shows the archive's image), and only then does the
   app role start the app, which fails because the tiny image is not mbin: the run's log shows the load
   before the first app command, and the uploaded archives are gone from the machine. A second run
   with the same archive loads it again and reports no change.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from provision import apps, names
from provision.cli import app as cli
from provision.providers.local import machine
from provision.providers.local.provider import LocalProvider

pytestmark = pytest.mark.testhost

REF = dict(apps.get("mbin").images)["mbin"]
WRONG = REF.rsplit(":", 1)[0] + ":not-the-pin"


def _inside(record, argv: list[str], **kwargs):
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(machine.exec_argv(record, argv), env=base, timeout=300, check=False, **kwargs)


def _ok(record, script: str) -> str:
    done = _inside(record, ["sh", "-euc", script], capture_output=True, text=True)
    assert done.returncode == 0, f"{script}: {done.stderr[-2000:]}"
    return done.stdout.strip()


def _save(record, ref: str, out: Path) -> None:
    with out.open("wb") as f:
        done = _inside(record, ["docker", "save", ref], stdout=f, stderr=subprocess.PIPE)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_images_from_archives_are_loaded_before_the_app_starts(local_image, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no fedi.toml
    domain, other = "img.localhost", "img-wrong.localhost"
    stack = names.stack_name(domain)
    base = ["up", "--provider", "local", "--software", "kbin", "--size", "tiny", "--yes"]
    prov = LocalProvider()
    try:
        code = cli.main([*base, "--domain", domain])
        out = capsys.readouterr()
        assert code == 0, out.err[-3000:]
        record = machine.load(stack)
        assert record is not None and machine.running(record)

        image_id = _ok(
            record,
            "mkdir -p /tmp/tiny && echo 'a stand-in, not mbin' > /tmp/tiny/README && "
            "tar -C /tmp/tiny -cf /tmp/tiny.tar . && "
            f"docker import /tmp/tiny.tar {REF} >/dev/null && docker tag {REF} {WRONG} && "
            f"docker image inspect --format '{{{{.Id}}}}' {REF}",
        ).splitlines()[-1]
        good, bad = tmp_path / "good", tmp_path / "bad"
        good.mkdir()
        bad.mkdir()
        _save(record, REF, good / "mbin.tar")
        _save(record, WRONG, bad / "mbin.tar")
        _ok(record, f"docker image rm {REF} {WRONG} >/dev/null && ! docker image inspect {REF} >/dev/null 2>&1")

        code = cli.main([*base, "--domain", other, "--images", str(bad)])
        err = capsys.readouterr().err
        assert code == 2, err[-3000:]
        assert f"images/mbin.tar: holds {WRONG}, not exactly {REF}" in err
        assert prov.stored_domain(names.stack_name(other)) is None
        assert machine.load(names.stack_name(other)) is None

        code = cli.main([*base, "--domain", domain, "--images", str(good)])
        err = capsys.readouterr().err
        assert f"uploading mbin.tar ({REF})" in err
        loaded = _ok(record, f"docker image inspect --format '{{{{.Id}}}}' {REF}")
        assert loaded == image_id
        # the tiny image is not mbin: the app role starts it, and that is what fails, after the load
        assert code == 5, err[-3000:]
        first_app_task = "app : Run mbin's database migrations"
        assert f"ansible task '{first_app_task}' failed" in err, err[-3000:]
        log = Path(re.search(r"full log: (\S+)", err).group(1)).read_text()
        assert log.index("Load the app's images from their archives") < log.index(first_app_task)
        assert re.search(r"changed: \[localhost\] => \(item=" + re.escape(REF) + r"\)", log), log[-3000:]
        left = _ok(record, "ls /tmp/fedi-upload.* 2>/dev/null | grep -c 'mbin.tar' || true")
        assert left == "0"  # the uploaded archive does not stay on the machine
        compose = json.loads(_ok(record, "docker compose -f /opt/fedi/app/compose.yaml config --format json"))
        assert {s["image"] for s in compose["services"].values() if "image" in s} >= {REF}

        # the same archive again: loaded again, but the reference names the same image: no change
        code = cli.main([*base, "--domain", domain, "--images", str(good)])
        err = capsys.readouterr().err
        assert code == 5 and f"ansible task '{first_app_task}' failed" in err, err[-3000:]
        log = Path(re.search(r"full log: (\S+)", err).group(1)).read_text()
        assert re.search(r"ok: \[localhost\] => \(item=" + re.escape(REF) + r"\)", log), log[-3000:]
    finally:
        for name in (stack, names.stack_name(other)):
            if prov.stored_domain(name) is not None or machine.load(name) is not None:
                prov.down(name, lambda _line: None, purge_backups=True)
