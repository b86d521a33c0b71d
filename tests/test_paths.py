"""The one atomic file write: same-directory temp file, mode before the first byte, fsync of file and directory."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from provision import paths

PACKAGE = Path(__file__).resolve().parent.parent / "provision"


def _record_fsyncs(monkeypatch) -> list[tuple[str, bytes | Path]]:
    seen: list[tuple[str, bytes | Path]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            seen.append(("dir", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        else:
            seen.append(("file", os.pread(fd, info.st_size, 0)))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_fsyncs_the_new_content_and_then_the_directory(tmp_path, monkeypatch):
    seen = _record_fsyncs(monkeypatch)
    target = tmp_path / "own" / "state.json"
    target.parent.mkdir()
    target.write_text("old")
    paths.write_atomic(target, "new content\n")
    assert seen == [("file", b"new content\n"), ("dir", target.parent)]
    assert target.read_text() == "new content\n"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


@pytest.mark.parametrize(("mode", "umask"), [(0o600, 0), (0o644, 0o077)])
def test_mode_is_the_asked_one_whatever_the_umask_or_the_old_file(tmp_path, mode, umask):
    target = tmp_path / "f.json"
    target.write_text("old")
    target.chmod(0o666)
    old = os.umask(umask)
    try:
        paths.write_atomic(target, b"x", mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_a_failed_replace_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "own" / "outbox.json"
    target.parent.mkdir()
    target.write_text("old")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        paths.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["outbox.json"]


def test_no_other_module_replaces_a_file_by_hand():
    """Every atomic file write goes through paths.write_atomic (directories and image archives excepted)."""
    allowed = {"paths.py", "render/bundle.py", "providers/local/image.py"}  # a bundle directory; a streamed archive
    found = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if re.search(r"\bos\.(replace|rename)\(", p.read_text(encoding="utf-8"))
    }
    assert found <= allowed, found - allowed
