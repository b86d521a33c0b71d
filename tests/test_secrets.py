"""Secrets are generated in the exact forms the apps check, distinct, and key pairs match."""

from __future__ import annotations

import base64
import re
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from provision.render import keys as K
from provision.render import secrets as S
from provision.spec import build_spec


def spec(software: str):
    return build_spec({"software": software, "size": "tiny", "domain": "social.example.org"})


@pytest.fixture(scope="module")
def generated() -> dict[str, dict[str, str]]:
    return {sw: S.generate_secrets(spec(sw)) for sw in ("mastodon", "lemmy", "kbin")}


ALWAYS = {
    "db_password",
    "restic_password",
    "admin_password",
    "ssh_host_ed25519_key",
    "ssh_host_ed25519_key_pub",
    "ssh_client_key",
    "ssh_client_key_pub",
}


def test_key_sets(generated):
    mastodon = ALWAYS | {
        "valkey_password",
        "mastodon_secret_key_base",
        "mastodon_otp_secret",
        "mastodon_ar_deterministic_key",
        "mastodon_ar_key_derivation_salt",
        "mastodon_ar_primary_key",
        "mastodon_vapid_private_key",
        "mastodon_vapid_public_key",
    }
    lemmy = ALWAYS | {"pictrs_api_key"}
    mbin = ALWAYS | {
        "valkey_password",
        "rabbitmq_password",
        "mbin_app_secret",
        "mbin_oauth_passphrase",
        "mbin_oauth_private_key",
        "mbin_oauth_public_key",
        "mbin_oauth_encryption_key",
        "mbin_mercure_jwt_secret",
    }
    assert set(generated["mastodon"]) == mastodon
    assert set(generated["lemmy"]) == lemmy
    assert set(generated["kbin"]) == mbin


def test_every_value_nonempty_and_distinct(generated):
    for sw, values in generated.items():
        assert all(values.values()), sw
        assert len(set(values.values())) == len(values), f"{sw}: two secrets share a value"
    # and nothing is reused across stacks
    pools = [set(v.values()) for v in generated.values()]
    assert not (pools[0] & pools[1]) and not (pools[1] & pools[2]) and not (pools[0] & pools[2])


def test_mastodon_forms(generated):
    m = generated["mastodon"]
    for key in ("mastodon_secret_key_base", "mastodon_otp_secret"):
        assert re.fullmatch(r"[0-9a-f]{128}", m[key]), key  # rake secret
    for key in ("mastodon_ar_deterministic_key", "mastodon_ar_key_derivation_salt", "mastodon_ar_primary_key"):
        assert re.fullmatch(r"[A-Za-z0-9]{32}", m[key]), key  # db:encryption:init


def test_vapid_pair_is_p256_and_matches(generated):
    m = generated["mastodon"]
    private, public = m["mastodon_vapid_private_key"], m["mastodon_vapid_public_key"]
    assert re.fullmatch(r"[A-Za-z0-9_\-]+=*", private) and re.fullmatch(r"[A-Za-z0-9_\-]+=*", public)
    raw_public = base64.urlsafe_b64decode(public)
    assert len(base64.urlsafe_b64decode(private)) == 32
    assert len(raw_public) == 65 and raw_public[0] == 4  # uncompressed point
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw_public)  # on the curve
    assert isinstance(point.curve, ec.SECP256R1)
    assert K.vapid_public_from_private(private) == public
    # a different pair does not match: the check can fail
    other_private, _ = K.vapid_keypair()
    assert K.vapid_public_from_private(other_private) != public


def test_lemmy_forms(generated):
    lemmy = generated["lemmy"]
    assert 10 <= len(lemmy["admin_password"]) <= 60  # Lemmy's limit
    assert re.fullmatch(r"[A-Za-z0-9]{32,}", lemmy["pictrs_api_key"])


def test_mbin_forms_and_rsa_pair(generated):
    b = generated["kbin"]
    assert re.fullmatch(r"[0-9a-f]{32}", b["mbin_oauth_encryption_key"])  # openssl rand -hex 16
    assert re.fullmatch(r"[0-9a-f]{32}", b["mbin_app_secret"])
    assert len(b["mbin_mercure_jwt_secret"]) >= 64  # HS256: >= 256 bits
    assert "ENCRYPTED PRIVATE KEY" in b["mbin_oauth_private_key"]
    with pytest.raises(TypeError):  # a passphrase is required
        serialization.load_pem_private_key(b["mbin_oauth_private_key"].encode(), password=None)
    key = serialization.load_pem_private_key(
        b["mbin_oauth_private_key"].encode(), password=b["mbin_oauth_passphrase"].encode()
    )
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 4096
    public = serialization.load_pem_public_key(b["mbin_oauth_public_key"].encode())
    assert public.public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize("name", ["ssh_host_ed25519_key", "ssh_client_key"])
def test_ssh_pairs_match(generated, name):
    for values in generated.values():
        private = serialization.load_ssh_private_key(values[name].encode(), password=None)
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        derived = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        line = values[f"{name}_pub"]
        assert "\n" not in line and line.startswith("ssh-ed25519 ")
        assert line.split()[:2] == derived.decode().split()[:2]


def test_ssh_keys_readable_by_openssh(generated, tmp_path):
    """ssh-keygen (when present) derives the same public key from the private key file."""
    import shutil

    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen not installed")
    values = generated["lemmy"]
    path = tmp_path / "key"
    path.write_text(values["ssh_host_ed25519_key"])
    path.chmod(0o600)
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == values["ssh_host_ed25519_key_pub"].split()[:2]


def test_generators_have_the_documented_lengths():
    assert len(K.rails_secret()) == 128
    assert len(K.rails_encryption_key()) == 32
    assert len({K.alnum(32) for _ in range(50)}) == 50


def test_a_stack_taking_over_data_keeps_the_old_app_secrets_and_its_own_ssh_keys():
    from provision.render.secrets import carried_over

    old = {"db_password": "old-db", "mastodon_secret_key_base": "old-skb", "ssh_client_key": "old-ssh"}
    old["restic_password"] = "old-repo"
    own = {"db_password": "new-db", "ssh_client_key": "new-ssh", "ssh_host_ed25519_key": "new-host"}
    own["restic_password"] = "new-repo"
    merged = carried_over(old, own)
    assert merged == {
        "db_password": "old-db",
        "mastodon_secret_key_base": "old-skb",
        "ssh_client_key": "new-ssh",
        "ssh_host_ed25519_key": "new-host",
        "restic_password": "new-repo",  # its own repository was made with its own password
    }
