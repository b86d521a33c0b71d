"""The encrypted local state store: round trip, wrong passphrase, tampering, no plaintext at rest."""

from __future__ import annotations

import json
import stat

import pytest

from provision import state
from provision.errors import ProvisionError, UsageError

SECRET = "s3cr3t-db-password-value"


def test_round_trip_and_no_plaintext_on_disk(tmp_path):
    store = state.StateStore(tmp_path, "pass-one")
    store.save("lemmy-localhost", {"secrets": {"db_password": SECRET}, "size": "tiny"})
    path = store.path("lemmy-localhost")
    raw = path.read_text()
    assert SECRET not in raw and "db_password" not in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load("lemmy-localhost") == {"secrets": {"db_password": SECRET}, "size": "tiny"}
    assert store.stacks() == ["lemmy-localhost"]


def test_wrong_passphrase_is_one_clear_line(tmp_path):
    state.StateStore(tmp_path, "right").save("a-b", {"x": 1})
    with pytest.raises(ProvisionError, match="wrong passphrase"):
        state.StateStore(tmp_path, "wrong").load("a-b")


def test_file_moved_to_another_stack_does_not_decrypt(tmp_path):
    store = state.StateStore(tmp_path, "p")
    store.save("one", {"x": 1})
    target = store.path("two")
    target.parent.mkdir(parents=True)
    target.write_text(store.path("one").read_text())
    with pytest.raises(ProvisionError, match="wrong passphrase"):
        store.load("two")


def test_tampered_ciphertext_is_rejected(tmp_path):
    store = state.StateStore(tmp_path, "p")
    store.save("one", {"x": 1})
    envelope = json.loads(store.path("one").read_text())
    ciphertext = envelope["ciphertext"]
    envelope["ciphertext"] = ("A" if ciphertext[0] != "A" else "B") + ciphertext[1:]
    store.path("one").write_text(json.dumps(envelope))
    with pytest.raises(ProvisionError):
        store.load("one")


def test_damaged_file_is_reported(tmp_path):
    store = state.StateStore(tmp_path, "p")
    store.path("one").parent.mkdir(parents=True)
    store.path("one").write_text('{"format": 1}')
    with pytest.raises(ProvisionError, match="damaged"):
        store.load("one")


def test_each_save_uses_fresh_salt_and_nonce(tmp_path):
    store = state.StateStore(tmp_path, "p")
    store.save("one", {"x": 1})
    first = json.loads(store.path("one").read_text())
    store.save("one", {"x": 1})
    second = json.loads(store.path("one").read_text())
    assert first["nonce"] != second["nonce"] and first["kdf"]["salt"] != second["kdf"]["salt"]


def test_update_and_delete(tmp_path):
    store = state.StateStore(tmp_path, "p")
    store.save("one", {"x": 1})
    assert store.update("one", y=2) == {"x": 1, "y": 2}
    store.delete("one")
    assert not store.exists("one")
    with pytest.raises(ProvisionError, match="no local stack"):
        store.load("one")


def test_bad_stack_name_is_refused(tmp_path):
    with pytest.raises(UsageError):
        state.StateStore(tmp_path, "p").path("../etc")


def test_passphrase_from_env_wins(monkeypatch):
    monkeypatch.setenv("FEDI_PASSPHRASE", "from-env")
    assert state.passphrase() == "from-env"
    monkeypatch.delenv("FEDI_PASSPHRASE")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "pulumi-one")
    assert state.passphrase() == "pulumi-one"


def test_generated_passphrase_is_private_and_stable(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDI_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.setenv("FEDI_CONFIG_DIR", str(tmp_path))
    first = state.passphrase()
    assert len(first) >= 32 and state.passphrase() == first
    path = tmp_path / state.PASSPHRASE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(UsageError, match="readable by other users"):
        state.passphrase()
