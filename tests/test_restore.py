"""What `fedi backup restore` keeps (provision/lifecycle/restore.py): the old secrets go with the restored
data, a snapshot without them is said, a move to another domain is warned about. The restic runs
themselves are tested on the test host (test_backup_testhost.py); here they are replaced."""

from __future__ import annotations

from typing import Any

import pytest

from provision.errors import BackupError
from provision.lifecycle import backup, restore
from provision.model import HostAccess, StackOutputs

RESULT = {"snapshot": "0123456789abcdef", "time": "2026-12-06T03:00:00Z", "databases": ["mastodon"], "config": True}


class Provider:
    def __init__(self) -> None:
        self.adopted: list[tuple[str, dict[str, str]]] = []

    def adopt_secrets(self, stack: str, old: dict[str, str]) -> None:
        self.adopted.append((stack, old))


def target(address: str = "10.0.0.2") -> StackOutputs:
    return StackOutputs("new-stack", "local", HostAccess(address), extra={"domain": "social.example.org"})


@pytest.fixture
def restic(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(backup, "restore", lambda access, snap, safety: calls.append(("own", snap)) or RESULT)
    monkeypatch.setattr(backup, "restore_from", lambda access, env, snap, safety: calls.append(("from", env)) or RESULT)
    return calls


def test_a_saved_env_brings_the_restored_secrets_with_it(restic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup, "read_restored_secrets", lambda access: {"db_password": "old"})
    prov = Provider()
    result, notes = restore.restore(
        "new-stack", prov, target(), "latest", source="r.env", env="RESTIC_REPOSITORY=x", old_secrets=None,
        from_env_file=True, safety=False,
    )  # fmt: skip
    assert result == RESULT and restic == [("from", "RESTIC_REPOSITORY=x")]
    assert prov.adopted == [("new-stack", {"db_password": "old"})]
    assert notes == ["new-stack now keeps the app secrets of r.env (its own SSH keys stay)"]


def test_a_snapshot_without_secrets_is_said_and_nothing_is_adopted(restic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup, "read_restored_secrets", lambda access: None)
    prov = Provider()
    _, notes = restore.restore(
        "new-stack", prov, target(), "latest", source="r.env", env="E", old_secrets=None, from_env_file=True,
        safety=True,
    )  # fmt: skip
    assert prov.adopted == [] and len(notes) == 1 and "holds no secrets.json" in notes[0]


def test_the_own_repository_keeps_the_stack_s_secrets(restic) -> None:
    prov = Provider()
    _, notes = restore.restore(
        "s", prov, target(), "abcd1234", source="stack s", env=None, old_secrets=None, from_env_file=False,
        safety=True,
    )  # fmt: skip
    assert restic == [("own", "abcd1234")] and prov.adopted == [] and notes == []


def test_a_stack_without_a_server_is_refused_before_restic_runs(restic) -> None:
    with pytest.raises(BackupError, match="no running server"):
        restore.restore(
            "s", Provider(), target(address=""), "latest", source="x", env=None, old_secrets=None,
            from_env_file=False, safety=True,
        )  # fmt: skip
    assert restic == []


def test_a_move_to_another_domain_is_warned_about() -> None:
    assert restore.domain_warning("stack old", "a.example.org", "new", "a.example.org") == ""
    assert restore.domain_warning("stack old", "", "new", "b.example.org") == ""
    warning = restore.domain_warning("stack old", "a.example.org", "new", "b.example.org")
    assert warning.startswith("warning: stack old serves a.example.org, new serves b.example.org")
