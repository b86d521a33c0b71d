"""Reading the issuer of Caddy's certificate from the server, over the pinned connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from test_health import DOMAIN, make_ca
from test_remote_sshd import SSHD, Sshd, start_sshd, stop

from provision.errors import RemoteError
from provision.remote import certs


def test_paths_and_argv_as_values() -> None:
    assert certs.chain_path("a.example", "staging") == (
        "/var/lib/caddy/.local/share/caddy/certificates/acme-staging-v02.api.letsencrypt.org-directory/"
        "a.example/a.example.crt"
    )
    assert certs.chain_path("a.example", "internal").endswith("/certificates/local/a.example/a.example.crt")
    assert certs.read_chain_argv("a.example", "production", "fedi") == [
        "sudo",
        "-n",
        "-H",
        "--",
        "cat",
        "--",
        "/var/lib/caddy/.local/share/caddy/certificates/acme-v02.api.letsencrypt.org-directory/a.example/a.example.crt",
    ]
    with pytest.raises(ValueError):
        certs.chain_path("a.example", "zerossl")


def test_issuer_certs_drop_the_leaf() -> None:
    a, b, c = (f"-----BEGIN CERTIFICATE-----\n{x}\n-----END CERTIFICATE-----\n" for x in "ABC")
    assert certs.issuer_certs(a + b + c) == b + c
    assert certs.issuer_certs(a) == ""
    assert certs.issuer_certs("") == ""


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not Path(SSHD).exists():
        pytest.skip("openssh-server is not installed")
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        stop(server)


def test_fetch_waits_for_caddy_then_writes_the_intermediate(sshd: Sshd, tmp_path: Path) -> None:
    root = make_ca("(STAGING) root")
    intermediate = make_ca("(STAGING) intermediate", parent=root)
    leaf, _ = intermediate.issue(tmp_path, DOMAIN, chain=True)
    storage = tmp_path / "caddy"
    target = Path(certs.chain_path(DOMAIN, "staging", str(storage)))

    def caddy_obtains_the_certificate() -> None:
        time.sleep(1.0)  # the first reads find nothing yet
        target.parent.mkdir(parents=True)
        target.write_bytes(leaf.read_bytes())

    thread = threading.Thread(target=caddy_obtains_the_certificate)
    thread.start()
    try:
        dest = certs.fetch_issuer(
            sshd.access, DOMAIN, tmp_path / "out" / "issuer.pem", timeout=30, storage=str(storage)
        )
    finally:
        thread.join()
    assert dest.read_bytes() == intermediate.cert.public_bytes(serialization.Encoding.PEM)
    assert dest.stat().st_mode & 0o777 == 0o600


def test_fetch_gives_up_with_one_line(sshd: Sshd, tmp_path: Path) -> None:
    with pytest.raises(RemoteError) as err:
        certs.fetch_issuer(sshd.access, DOMAIN, tmp_path / "x.pem", timeout=1, storage=str(tmp_path / "none"))
    assert err.value.message.startswith(f"Caddy on 127.0.0.1 has no staging certificate chain for {DOMAIN} after 1s")
    assert "No such file or directory" in err.value.message
