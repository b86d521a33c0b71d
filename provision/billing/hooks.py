"""The co-op billing hook: signed lifecycle events, written to an outbox first, delivered until a 2xx.

Events: ``stack.created``, ``stack.resized``, ``stack.destroyed``, ``cost.monthly``. Each goes to every URL
in ``fedi.toml``::

    [hooks]
    urls = ["https://books.example.coop/fedi"]
    secret_env = "FEDI_WEBHOOK_SECRET"   # the variable holding the whsec_... secret (never the file)

Requests follow the Standard Webhooks specification (standardwebhooks.com), so a receiver can check them
with that project's libraries in its own language:

- body: ``{"type": "<event>", "timestamp": "<ISO 8601 UTC>", "data": {...}}`` as JSON; ``data`` is
  :func:`provision.billing.events.event_data`: the stack, its size, ``cost`` (its breakdown) and ``dues``; for
  ``cost.monthly`` also ``account`` (the account's whole bill: ``stacks``, ``shared``, ``share_rule``,
  ``total_net``, ``vat``, ``total_gross``), with ``cost`` the stack's own lines plus its share of the
  shared lines and ``dues`` figured on the account's total (``dues_basis: "account"``);
- ``webhook-id``: the message id, the same on every retry: the receiver's idempotency key;
- ``webhook-timestamp``: seconds since the epoch, of this attempt;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the
  base64-decoded part of the secret after ``whsec_``.

The outbox is ``<state dir>/outbox``: one 0600 JSON file per event and URL, written atomically before any
request is made and removed only after a 2xx answer. Each run makes at most ``ATTEMPTS`` tries per event with
backoff, within ``RUN_SECONDS``; an event that still fails waits (1 min, doubling, at most 6 h) for the next
fedi command or the monthly run, which call :func:`deliver_pending`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provision.errors import HookError, MissingPrerequisite, ValidationError
from provision.timestamps import epoch, utc_iso

EVENT_TYPES = ("stack.created", "stack.resized", "stack.destroyed", "cost.monthly")
DEFAULT_SECRET_ENV = "FEDI_WEBHOOK_SECRET"  # the variable's name; also `fedi coop verify-signature`'s default
ATTEMPTS = 3  # tries per event in one run
BACKOFF_S = (1.0, 4.0)  # waits between those tries
RUN_SECONDS = 30.0  # a run stops starting new requests after this long
TIMEOUT_S = 10.0  # per request
RETRY_BASE = timedelta(minutes=1)  # next run's wait after a failed run: doubles per failed run...
RETRY_MAX = timedelta(hours=6)  # ...up to this
TOLERANCE_S = 300  # verify: timestamps further than this from now are rejected (the spec's 5 minutes)
HOOK_KEYS = ("urls", "secret_env")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SignatureError(HookError):
    """A webhook request that does not verify: missing headers, stale timestamp or wrong signature."""


@dataclass(frozen=True)
class HookSettings:
    urls: tuple[str, ...]  # where events go; empty = no hook
    secret_env: str = DEFAULT_SECRET_ENV  # the environment variable with the whsec_ secret


def parse_hooks(config: dict[str, Any] | None) -> HookSettings:
    """``config`` is the fedi.toml dict (or spec.extra); reads and validates its [hooks] table."""
    raw = (config or {}).get("hooks", {})
    if not isinstance(raw, dict):
        raise ValidationError("hooks", "must be a table with urls and secret_env")
    if "secret" in raw:
        raise ValidationError("hooks/secret", f"put the whsec_ secret in ${DEFAULT_SECRET_ENV}, not in a file")
    unknown = sorted(set(raw) - set(HOOK_KEYS))
    if unknown:
        raise ValidationError(f"hooks/{unknown[0]}", f"unknown key (known: {', '.join(HOOK_KEYS)})")
    urls = raw.get("urls", [])
    if isinstance(urls, str) or not isinstance(urls, list):
        raise ValidationError("hooks/urls", "must be a list of https:// URLs")
    for i, url in enumerate(urls):
        parts = urlsplit(url) if isinstance(url, str) else None
        if not parts or parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValidationError(f"hooks/urls[{i}]", f"{url!r} is not an http(s) URL")
    secret_env = raw.get("secret_env", DEFAULT_SECRET_ENV)
    if not isinstance(secret_env, str) or not _ENV_NAME.match(secret_env):
        raise ValidationError("hooks/secret_env", f"{secret_env!r} is not an environment variable name")
    return HookSettings(tuple(urls), secret_env)


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret."""
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise MissingPrerequisite("the webhook secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except ValueError:
        raise MissingPrerequisite("the webhook secret is not valid base64 after whsec_") from None
    if not 24 <= len(key) <= 64:
        raise MissingPrerequisite("the webhook secret must hold 24 to 64 random bytes (Standard Webhooks)")
    return key


def new_secret() -> str:
    """A fresh secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` value for one request."""
    digest = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(
    secret: str, headers: dict[str, str], body: str | bytes, tolerance: int = TOLERANCE_S, now: float | None = None
) -> dict[str, Any]:
    """Check a Standard Webhooks request; return its JSON payload or raise :class:`SignatureError`.

    Rejects missing headers, a timestamp more than ``tolerance`` seconds from now (a replay), and a body
    that does not match any ``v1`` signature (tampering). Header names are case-insensitive.
    """
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and stamp and sigs):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError(f"webhook-timestamp {stamp!r} is not a number") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"webhook-timestamp is {int(now - timestamp)} s from now (tolerance {tolerance} s)")
    try:
        text = body.decode() if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        raise SignatureError("the body is not UTF-8 text") from None
    expected = base64.b64decode(sign(secret, msg_id, timestamp, text)[3:])
    for candidate in sigs.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(expected, given):
            try:
                return json.loads(text)
            except ValueError:
                raise SignatureError("the signature matches but the body is not JSON") from None
    raise SignatureError("no signature matches the body (tampered, or another secret)")


def signed_headers(secret: str, msg_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": "fedi-billing-hook",
    }


# ---- the outbox ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingEvent:
    """One event for one URL, waiting in the outbox."""

    path: Path  # its file
    id: str  # webhook-id
    url: str
    type: str
    body: str  # the exact JSON body that is signed and sent
    secret_env: str
    created_at: str
    attempts: int = 0  # failed delivery runs so far
    next_attempt_at: str = ""  # ISO time before which a normal run leaves it alone
    last_error: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "type": self.type,
            "body": self.body,
            "secret_env": self.secret_env,
            "created_at": self.created_at,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
        }

    def summary(self) -> dict[str, Any]:
        """What `fedi coop outbox` shows: no body, and the URL without path or query (they may hold tokens)."""
        return {k: v for k, v in self.record().items() if k != "body"} | {"url": display_url(self.url)}


@dataclass(frozen=True)
class DeliveryReport:
    delivered: tuple[str, ...]  # webhook ids delivered in this run
    pending: tuple[PendingEvent, ...]  # still in the outbox afterwards
    errors: tuple[str, ...]  # one line per failure, URLs shortened

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": list(self.delivered),
            "pending": [p.summary() for p in self.pending],
            "errors": list(self.errors),
        }


def display_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def outbox_dir(create: bool = True) -> Path:
    from provision.paths import state_dir

    path = state_dir() / "outbox"
    if create:
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def _write_atomic(path: Path, record: dict[str, Any]) -> None:
    from provision.paths import write_atomic

    write_atomic(path, json.dumps(record, indent=1))


def _read(path: Path) -> PendingEvent | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return PendingEvent(path=path, **{k: raw[k] for k in PendingEvent.__dataclass_fields__ if k in raw})
    except (OSError, ValueError, TypeError):
        return None


def list_pending() -> list[PendingEvent]:
    """Events in the outbox, oldest first."""
    # reading creates nothing: a command that fails its preflight leaves the state dir as it was
    found = (_read(p) for p in sorted(outbox_dir(create=False).glob("msg_*.json")))
    return [event for event in found if event is not None]


def _new_id() -> str:
    # time-ordered (milliseconds, hex) then random: outbox files sort in the order events happened
    return f"msg_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def emit(event_type: str, data: dict[str, Any], config: dict[str, Any], *, deliver: bool = True) -> list[str]:
    """Queue ``event_type`` with ``data`` for every [hooks] URL, then try to deliver what is pending.

    Returns the webhook ids (one per URL). Never raises because an endpoint is down: the events stay
    in the outbox for the next run. ``config`` is the fedi.toml dict (or spec.extra).
    """
    if event_type not in EVENT_TYPES:
        raise ValidationError("event", f"{event_type!r} is not one of {', '.join(EVENT_TYPES)}")
    settings = parse_hooks(config)
    if not settings.urls:
        return []
    now = datetime.now(UTC)
    payload = {"type": event_type, "timestamp": utc_iso(now.timestamp()), "data": data}
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)
    ids = []
    for url in settings.urls:
        msg_id = _new_id()
        event = PendingEvent(
            path=outbox_dir() / f"{msg_id}.json",
            id=msg_id,
            url=url,
            type=event_type,
            body=body,
            secret_env=settings.secret_env,
            created_at=utc_iso(now.timestamp()),
            next_attempt_at=utc_iso(now.timestamp()),
        )
        _write_atomic(event.path, event.record())
        ids.append(msg_id)
    if deliver:
        deliver_pending()
    return ids


def emit_lifecycle(
    kind: str, *, spec: Any, outputs: Any = None, cost: Any = None, account: Any = None, deliver: bool = True
) -> list[str]:
    """The lifecycle's hook: ``kind`` is stack.created/resized/destroyed or cost.monthly; data from the spec.

    ``account`` (a :class:`provision.billing.account.AccountBill`, cost.monthly) adds the account's whole bill.
    """
    from provision.billing.events import event_data

    return emit(kind, event_data(spec, outputs, cost, account=account), spec.extra or {}, deliver=deliver)


@contextlib.contextmanager
def _outbox_lock() -> Iterator[bool]:
    """One delivering process at a time, so an event is not sent twice by two fedi commands at once."""
    fd = os.open(outbox_dir() / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _post(client: Any, event: PendingEvent, secret: str) -> str:
    """One signed POST. Returns "" on a 2xx, else why not."""
    import httpx

    try:
        headers = signed_headers(secret, event.id, event.body)
        response = client.post(event.url, content=event.body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'no answer'}"
    return "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


def deliver_pending(
    *,
    force: bool = False,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
    attempts: int = ATTEMPTS,
    run_seconds: float = RUN_SECONDS,
) -> DeliveryReport:
    """Send what the outbox holds, oldest first; remove each event after a 2xx.

    ``force`` ignores the wait after earlier failures (``fedi coop outbox --flush``). Events for a URL
    that failed in this run wait for the next run, so their order is kept and a dead endpoint is not
    hammered. Bounded: ``attempts`` tries per event, and no new request after ``run_seconds``.
    """
    if not any(outbox_dir(create=False).glob("msg_*.json")):
        return DeliveryReport((), (), ())  # the common case: nothing to send, nothing to import
    import httpx

    now = now or datetime.now(UTC)
    delivered: list[str] = []
    errors: list[str] = []
    with _outbox_lock() as locked:
        if not locked:
            return DeliveryReport((), tuple(list_pending()), ("another fedi command is delivering the outbox",))
        deadline = time.monotonic() + run_seconds
        blocked_urls: set[str] = set()
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
            for event in list_pending():
                due = force or not event.next_attempt_at or epoch(event.next_attempt_at) <= now.timestamp()
                if not due or event.url in blocked_urls or time.monotonic() > deadline:
                    blocked_urls.add(event.url)  # later events to this URL wait behind this one
                    continue
                secret = os.environ.get(event.secret_env, "")
                if not secret:
                    errors.append(f"{event.id}: not sent, ${event.secret_env} is not set")
                    blocked_urls.add(event.url)
                    continue
                try:
                    secret_key(secret)
                except MissingPrerequisite as exc:
                    errors.append(f"{event.id}: not sent, ${event.secret_env}: {exc.message}")
                    blocked_urls.add(event.url)
                    continue
                error = ""
                for attempt in range(attempts):
                    if attempt:
                        sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
                    error = _post(client, event, secret)
                    if not error or time.monotonic() > deadline:
                        break
                if not error:
                    event.path.unlink(missing_ok=True)
                    delivered.append(event.id)
                    continue
                blocked_urls.add(event.url)
                tries = event.attempts + 1
                wait = min(RETRY_BASE * 2 ** (tries - 1), RETRY_MAX)
                errors.append(f"{event.id} to {display_url(event.url)}: {error}")
                retry = {"attempts": tries, "last_error": error, "next_attempt_at": utc_iso((now + wait).timestamp())}
                _write_atomic(event.path, event.record() | retry)
        return DeliveryReport(tuple(delivered), tuple(list_pending()), tuple(errors))


def drop(msg_id: str) -> bool:
    """Remove one event from the outbox without sending it (an endpoint that is gone for good)."""
    if not re.fullmatch(r"msg_[0-9a-f]+", msg_id):
        raise ValidationError("id", f"{msg_id!r} is not a webhook id such as msg_0190...")
    path = outbox_dir() / f"{msg_id}.json"
    if not path.exists():
        return False
    path.unlink()
    return True
