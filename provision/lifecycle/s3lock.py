"""One change to a stack at a time across computers: a lock object in a shared s3:// state backend.

A co-op's admins keep their stacks in one state bucket (``--backend s3://bucket/prefix`` or ``backend``
under ``[state]`` in fedi.toml). provision/lifecycle/stacklock.py keeps two runs on one computer apart; across
computers, every command that changes a stack also holds ``<prefix>/.fedi/locks/<stack>.json`` in
that bucket for its whole run (stacklock takes it, right after its own lock):

- Taking it is one PUT with ``If-None-Match: *``: the store writes it only if the key does not exist,
  atomically (AWS S3, MinIO, Ceph RGW and moto implement this conditional write). A run that gets 412
  (or 409, a concurrent conditional write that lost) is refused at once with the holder's line
  (StackBusy, exit 10) and has changed nothing. Pulumi's own lock in the same bucket is written and
  then listed, which is not atomic on every S3 implementation; this one is, and it is taken first.
- The object says who holds it (user@host, pid, command), since when, and its lease (LEASE seconds).
  The holder rewrites it every LEASE/4 with ``If-Match`` on its own last ETag (a counter in the body
  changes the ETag each time). A lock not rewritten for longer than its lease is stale (its holder
  crashed, was killed, or lost power or network): the next run takes it over with one ``If-Match``
  PUT on the stale object's ETag (of two runs taking over at once, one wins) and says so in one line.
  Age is the store's own clock (its ``Date`` against the object's ``Last-Modified``), so the admins'
  clocks do not matter. A holder whose lock was taken over meanwhile says so when it notices.
- Released (deleted, ``If-Match`` its own ETag) on every way out of the run: success, failure, Ctrl-C.
  SIGKILL, a crash or a lost network leave it to go stale after LEASE seconds.
- A store that ignores the conditions (writes over an existing key despite ``If-None-Match: *``, or
  despite an ``If-Match`` that does not hold) cannot keep two admins apart. Before its first lock in a
  backend, a run checks this with a throw-away probe key, and refuses to change stacks in a backend
  that fails it (one line, exit 4) rather than pretend.

Credentials are the ones Pulumi's s3 backend reads: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_SESSION_TOKEN; the region from the URL's ``region=`` or AWS_REGION / AWS_DEFAULT_REGION; the
endpoint from the URL's ``endpoint=`` (``disableSSL=true`` or ``disable_https=true`` for plain http) or
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS (path-style requests). Profiles in ~/.aws are not read.
The keys go into signed headers only, never argv, output or the lock object.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from urllib.parse import parse_qsl, urlsplit

from provision.errors import FediError, MissingPrerequisite, ProvisionError, StackBusy
from provision.lifecycle.holder import Holder
from provision.providers.hetzner.s3 import S3, Bucket

LEASE = 120  # seconds a lock stays valid without being rewritten; the holder rewrites it every LEASE/4
_checked: set[str] = set()  # backends whose conditional writes this process has checked


@dataclass(frozen=True)
class StateBucket:
    bucket: Bucket
    prefix: str  # the URL's path: Pulumi keeps <prefix>/.pulumi/, fedi <prefix>/.fedi/
    url: str  # s3://bucket/prefix, without the query (for messages)

    def lock_key(self, stack: str) -> str:
        return f"{self.prefix}/.fedi/locks/{stack}.json".lstrip("/")


def shared(backend: str | None) -> bool:
    """Whether ``backend`` is kept in object storage other computers reach (an s3:// URL)."""
    return bool(backend) and str(backend).startswith("s3://")


def state_bucket(url: str, env: dict[str, str] | os._Environ[str] = os.environ) -> StateBucket:
    """The bucket of an s3:// backend URL, with the credentials Pulumi's s3 backend reads."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    region = query.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = query.get("endpoint") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    plain = any(query.get(k, "").lower() == "true" for k in ("disableSSL", "disable_https"))
    if not endpoint:
        endpoint = f"https://s3.{region}.amazonaws.com"
    elif "://" not in endpoint:
        endpoint = ("http://" if plain else "https://") + endpoint
    where = f"s3://{parts.netloc}{parts.path}"
    key, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
    if not key or not secret:
        raise MissingPrerequisite(
            f"the state backend {where} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to lock a stack "
            "(the keys Pulumi's s3 backend reads; fedi does not read ~/.aws profiles): export them"
        )
    bucket = Bucket(endpoint, region, parts.netloc, key, secret, env.get("AWS_SESSION_TOKEN", ""))
    return StateBucket(bucket, parts.path.strip("/"), where)


def _record(me: Holder, token: str, renewals: int) -> bytes:
    return json.dumps({**asdict(me), "lease": LEASE, "token": token, "renewals": renewals}).encode()


def _holder(content: bytes) -> tuple[Holder | None, float]:
    """(who holds it, its lease) from a lock object; (None, LEASE) for one fedi cannot read."""
    try:
        data = json.loads(content)
        return Holder(**{f.name: data[f.name] for f in fields(Holder)}), float(data.get("lease", LEASE))
    except (ValueError, TypeError, KeyError):
        return None, float(LEASE)


def check_conditions(s3: S3, where: StateBucket) -> None:
    """Refuse a store that writes over a key despite ``If-None-Match: *`` or a failing ``If-Match``."""
    if where.url in _checked:
        return
    probe = f"{where.prefix}/.fedi/locks/.probe-{secrets.token_hex(8)}".lstrip("/")
    if s3.put(probe, b"{}", if_none_match=True) is None:
        raise ProvisionError(f"the state backend {where.url} refused to create a new key ({probe})")
    try:
        again = s3.put(probe, b"{ }", if_none_match=True)
        other = s3.put(probe, b"{  }", if_match='"00000000000000000000000000000000"')
    finally:
        s3.delete(probe)
    if again is not None or other is not None:
        ignored = "If-None-Match" if again is not None else "If-Match"
        raise ProvisionError(
            f"the object storage of the state backend {where.url} ignores conditional writes ({ignored}): "
            "fedi cannot keep two admins from changing one stack at once there, so it changes nothing",
            hint="keep the state in a store that implements them (AWS S3, MinIO, Ceph RGW)",
        )
    _checked.add(where.url)


class _Lease:
    """A held lock: rewrites it every LEASE/4 on a thread of its own until released."""

    def __init__(self, where: StateBucket, stack: str, me: Holder, token: str, etag: str, note: Callable[[str], None]):
        self.where, self.stack, self.me, self.token, self.etag, self.note = where, stack, me, token, etag, note
        self.key = where.lock_key(stack)
        self.renewals = 0
        self.lost = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, name=f"fedi-lock-{stack}", daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        s3 = S3(self.where.bucket)  # its own connection: the run's requests go on meanwhile
        while not self.stop.wait(LEASE / 4):
            self.renewals += 1
            try:
                etag = s3.put(self.key, _record(self.me, self.token, self.renewals), if_match=self.etag)
                if etag is None:
                    etag = self._still_mine(s3)  # a renewal whose answer was lost on the way changed the ETag
            except FediError as failed:
                self.note(f"stack {self.stack}: could not renew its lock in {self.where.url}: {failed.line()}")
                continue
            if etag is None:
                self.lost = True
                self.note(
                    f"stack {self.stack}: another run took over this run's lock in {self.where.url} "
                    f"(it was not renewed for {LEASE} s)"
                )
                return
            self.etag = etag

    def _still_mine(self, s3: S3) -> str | None:
        """The lock object's ETag if it still holds this run's token, else None."""
        found = s3.get(self.key)
        if found is None:
            return None
        try:
            return found[1] if json.loads(found[0]).get("token") == self.token else None
        except (ValueError, AttributeError):
            return None

    def release(self) -> None:
        self.stop.set()
        self.thread.join(timeout=90)  # at most one renewal in flight (bounded by the client's timeouts)
        if self.lost:
            return
        try:
            s3 = S3(self.where.bucket)
            if not s3.delete(self.key, if_match=self.etag):
                etag = self._still_mine(s3)
                if etag is not None:
                    s3.delete(self.key, if_match=etag)
        except FediError as failed:
            self.note(
                f"stack {self.stack}: could not release its lock in {self.where.url} ({failed.line()}); "
                f"it goes stale {LEASE} s after its last renewal"
            )


def _note(line: str) -> None:
    import sys

    print(f"fedi: {line}", file=sys.stderr, flush=True)


def _take(where: StateBucket, s3: S3, stack: str, me: Holder, note: Callable[[str], None]) -> _Lease:
    key, token = where.lock_key(stack), secrets.token_hex(16)
    record = _record(me, token, 0)
    for _ in range(10):  # bounded: each retry means the lock changed hands between two requests
        etag = s3.put(key, record, if_none_match=True)
        if etag is not None:
            return _Lease(where, stack, me, token, etag, note)
        found = s3.get(key)
        if found is None:  # released just now
            continue
        content, stale_etag, age = found
        holder, lease = _holder(content)
        who = holder.line() if holder else "a run fedi cannot name (its lock object is unreadable)"
        if age <= lease:
            raise StackBusy(f"stack {stack} is busy: {who}; nothing was changed, try again when it is done")
        etag = s3.put(key, record, if_match=stale_etag)
        if etag is None:  # renewed, released or taken over by another run meanwhile: look again
            continue
        stale = f"not renewed for {age:.0f} s, lease {lease:.0f} s"
        note(f"stack {stack}: took over a stale lock in {where.url}: {who} ({stale})")
        return _Lease(where, stack, me, token, etag, note)
    raise StackBusy(f"stack {stack} is busy: its lock in {where.url} keeps changing hands; try again")


@contextmanager
def hold(backend: str, stack: str, me: Holder, note: Callable[[str], None] = _note) -> Iterator[None]:
    """Hold ``stack``'s lock in the s3:// ``backend`` for the block; StackBusy at once if another run does."""
    where = state_bucket(backend)
    s3 = S3(where.bucket)
    check_conditions(s3, where)
    lease = _take(where, s3, stack, me, note)
    try:
        yield
    finally:
        lease.release()
