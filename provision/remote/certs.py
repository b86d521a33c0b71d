"""The certificate issuer Caddy used, read from the server over the pinned SSH channel.

Ephemeral stacks get certificates from Let's Encrypt's staging CA, which no system trusts. Rather
than ever turning verification off, the health checks trust the staging intermediate that Caddy
itself received with the certificate, read here through the pinned, authenticated connection.
"""

from __future__ import annotations

import time
from pathlib import Path

from provision import paths
from provision.errors import RemoteError
from provision.model import HostAccess
from provision.remote.commands import privileged

# Debian's caddy runs as user caddy with HOME=/var/lib/caddy: its storage is under XDG_DATA_HOME.
CADDY_STORAGE = "/var/lib/caddy/.local/share/caddy"
# Caddy's storage key of each issuer (the ACME directory URL's host and path, "/" -> "-")
ISSUERS = {
    "staging": "acme-staging-v02.api.letsencrypt.org-directory",
    "production": "acme-v02.api.letsencrypt.org-directory",
    "internal": "local",
}
_BEGIN = "-----BEGIN CERTIFICATE-----"


def chain_path(domain: str, issuer: str, storage: str = CADDY_STORAGE) -> str:
    if issuer not in ISSUERS:
        raise ValueError(f"unknown issuer {issuer!r}")
    return f"{storage}/certificates/{ISSUERS[issuer]}/{domain}/{domain}.crt"


def read_chain_argv(domain: str, issuer: str, user: str, storage: str = CADDY_STORAGE) -> list[str]:
    return privileged(["cat", "--", chain_path(domain, issuer, storage)], user)


def issuer_certs(chain_pem: str) -> str:
    """The PEM blocks after the leaf (the intermediates), or '' if the chain has only the leaf."""
    blocks = [_BEGIN + part for part in chain_pem.split(_BEGIN)[1:]]
    return "".join(block.strip() + "\n" for block in blocks[1:])


def fetch_issuer(
    access: HostAccess,
    domain: str,
    dest: Path,
    *,
    issuer: str = "staging",
    timeout: float = 300,
    storage: str = CADDY_STORAGE,
) -> Path:
    """Wait (bounded, with backoff) until Caddy holds a certificate for ``domain``; write its issuer to ``dest``."""
    from provision.remote.session import connect_when_ready

    argv = read_chain_argv(domain, issuer, access.user, storage)
    deadline = time.monotonic() + timeout
    delay = 2.0
    with connect_when_ready(access, timeout) as session:
        while True:
            rc, out, err = session.run(argv, timeout=30)
            intermediates = issuer_certs(out) if rc == 0 else ""
            if intermediates:
                paths.write_private(dest, intermediates)  # a public certificate, but our file alone
                return dest
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = "it holds only the leaf" if rc == 0 else (err.strip().splitlines() or ["no such file"])[-1]
                raise RemoteError(
                    f"Caddy on {access.address} has no {issuer} certificate chain for {domain} after {timeout:g}s "
                    f"({chain_path(domain, issuer, storage)}: {why})"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 15.0)
