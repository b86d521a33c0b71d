"""The sshd drop-in's algorithms: each kind shared with fedi's own client (paramiko), all within the
ssh-audit policy kept in tests/data. The real negotiation and ssh-audit's verdict are checked on the
configured test host (tests/test_security_testhost.py)."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
from test_ansible import _render

from tests.support.security_host import SSH_AUDIT_POLICY

DROP_IN = "roles/base/templates/sshd-fedi.conf.j2"


@pytest.fixture(scope="module")
def drop_in(tmp_path_factory) -> dict[str, list[str]]:
    text = _render(tmp_path_factory.mktemp("sshd"), DROP_IN)
    settings = dict(line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k: v.split(",") for k, v in settings.items()}


def _policy(path: Path = SSH_AUDIT_POLICY) -> dict[str, list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {k.strip(): [a.strip() for a in v.split(",")] for k, v in (line.split("=", 1) for line in lines)}


def test_paramiko_can_do_the_post_quantum_key_exchange() -> None:
    from paramiko.kex_mlkem import KexMLKEM768X25519

    assert KexMLKEM768X25519.is_available()  # cryptography built with ML-KEM
    assert "mlkem768x25519-sha256" in paramiko.Transport._preferred_kex


@pytest.mark.parametrize(
    ("keyword", "client"),
    [
        ("KexAlgorithms", paramiko.Transport._preferred_kex),
        ("Ciphers", paramiko.Transport._preferred_ciphers),
        ("MACs", paramiko.Transport._preferred_macs),
        ("HostKeyAlgorithms", paramiko.Transport._preferred_keys),
        ("PubkeyAcceptedAlgorithms", paramiko.Transport._preferred_pubkeys),
    ],
)
def test_fedi_client_shares_one_of_each_kind(drop_in, keyword, client) -> None:
    assert set(drop_in[keyword]) & set(client), f"paramiko {paramiko.__version__} shares no {keyword}"


def test_drop_in_offers_only_what_the_policy_accepts(drop_in) -> None:
    policy = _policy()
    assert set(drop_in["KexAlgorithms"]) <= set(policy["key exchanges"])
    assert set(drop_in["Ciphers"]) <= set(policy["ciphers"])
    assert set(drop_in["MACs"]) <= set(policy["macs"])
    assert set(drop_in["HostKeyAlgorithms"]) <= set(policy["host keys"]) | set(policy["optional host keys"])
    # no classic-only key exchange, no SHA-1 or encrypt-and-MAC MAC, no CBC
    assert not [k for k in drop_in["KexAlgorithms"] if k.startswith(("curve25519", "ecdh-", "diffie-hellman"))]
    assert all(m.endswith("-etm@openssh.com") and "sha2" in m for m in drop_in["MACs"])
    assert not [c for c in drop_in["Ciphers"] if "cbc" in c]
