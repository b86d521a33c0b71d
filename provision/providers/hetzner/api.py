"""The Hetzner Cloud API, the few calls fedi makes itself: DNS zones, servers, prices, labelled resources.

One base URL (``$FEDI_HCLOUD_API`` for tests, else Hetzner's), one way to authenticate (the token as a
Bearer header, never in a URL or argv), bounded requests (a timeout on each, no retry loops). What an
answer means is for the caller to say: a failed zone look-up stops `fedi up`, a failed price fetch
falls back to the table.
"""

from __future__ import annotations

import os
from typing import Any

API_URL = "https://api.hetzner.cloud/v1"
URL_ENV = "FEDI_HCLOUD_API"
TIMEOUT_S = 10.0


def base_url(given: str | None = None) -> str:
    """``given``, else ``$FEDI_HCLOUD_API``, else Hetzner's API; without a trailing slash."""
    return (given or os.environ.get(URL_ENV) or API_URL).rstrip("/")


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


class Api:
    """A token, a base URL and an httpx client (``client`` is borrowed, else one is made and closed here)."""

    def __init__(self, token: str, *, url: str | None = None, client: Any = None, timeout: float = TIMEOUT_S):
        import httpx

        self.token = token
        self.base = base_url(url)
        self._own = client is None
        self.client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """One GET of ``{base}{path}``; httpx.HTTPError for a network failure, the reply otherwise."""
        return self.client.get(f"{self.base}{path}", params=params, headers=headers(self.token))

    def close(self) -> None:
        if self._own:
            self.client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
