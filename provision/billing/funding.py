"""What every app's funding announcement shares: the text, the marked section it replaces, requests as
data and their sender (httpx, bounded timeouts, one try each).

A leaf: it consults neither the app catalog nor a stack, so each app's ``announce`` (``provision/apps/``)
imports it without a cycle; :mod:`provision.billing.coop` picks the app and the TLS trust.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from provision.errors import HookError

START = "[//]: # (fedi-funding-start)"  # a markdown link definition: renders as nothing
END = "[//]: # (fedi-funding-end)"
MARKER = "(funding status posted by fedi)"  # ends the text, so fedi finds its own (plain-text announcements)
TIMEOUT_S = 15.0


def funding_text(report: Any, today: date | None = None, *, markdown: bool = True) -> str:
    """The members' paragraph: ``report`` is a :class:`provision.billing.dues.DuesReport`.

    Mastodon shows announcements as plain text (links and hashtags only), Lemmy and mbin as markdown.
    """
    today = today or date.today()
    title = f"Funding, {today:%B %Y}"
    return f"{f'**{title}**' if markdown else title}\n\n{report.summary()}\n\n{MARKER}"


def replace_section(markdown: str, section: str) -> str:
    """``markdown`` with fedi's section (between START and END) replaced by ``section``, or appended."""
    block = f"{START}\n{section}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(markdown or ""):
        return pattern.sub(lambda _: block, markdown, count=1)
    return f"{markdown.rstrip()}\n\n{block}" if markdown and markdown.strip() else block


# ---- HTTP requests as data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # below the instance's base URL
    json: dict[str, Any] | None = field(default=None, repr=False)  # repr=False: a login body holds a password
    bearer: bool = False  # send the session token


def send(client: Any, base_url: str, request: Request, token: str = "") -> dict[str, Any]:
    import httpx

    headers = {"Accept": "application/json"}
    if request.bearer:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = client.request(
            request.method, base_url.rstrip("/") + request.path, json=request.json, headers=headers
        )
    except httpx.HTTPError as exc:
        raise HookError(f"{request.method} {request.path}: {type(exc).__name__}") from None
    if response.status_code >= 300:
        raise HookError(f"{request.method} {request.path}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise HookError(f"{request.method} {request.path}: the answer is not JSON") from None
