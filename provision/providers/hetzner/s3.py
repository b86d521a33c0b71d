"""The few S3 calls fedi makes itself (Hetzner Object Storage, or any S3): is there a restic repository in
a bucket, and move one aside. Path-style requests over httpx, signed with AWS Signature Version 4
(the standard HMAC-SHA256 request signing every S3 implementation checks; no cryptography of our own).

Pulumi creates and deletes the buckets; the server's restic reads and writes the repository. This is
for `fedi up`, which must find an earlier stack's repository before it creates anything, and for the
lock a change to a stack takes in a shared s3:// state backend (provision/lifecycle/s3lock.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from provision.errors import ProvisionError
from provision.model import S3_ACCESS_ENV, S3_SECRET_ENV
from provision.timestamps import utc_stamp

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Replies are parsed with the standard library: they come from the object storage the admin configured,
# and expat >= 2.4.1 (every Python fedi supports) limits entity expansion (the "billion laughs" attack).


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    url: str,
    headers: dict[str, str],
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str = "s3",
    payload_hash: str = EMPTY_SHA256,
    now: float | None = None,
) -> dict[str, str]:
    """The headers of a SigV4-signed request (``headers`` plus host, x-amz-date, x-amz-content-sha256
    and Authorization). ``url`` must already be percent-encoded the way it is sent."""
    parts = urlsplit(url)
    stamp = utc_stamp(now)
    day = stamp[:8]
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed.update({"host": parts.netloc, "x-amz-date": stamp, "x-amz-content-sha256": payload_hash})
    names = sorted(signed)
    query = "&".join(
        sorted(
            f"{quote(unquote(k), safe='-_.~')}={quote(unquote(v), safe='-_.~')}"
            for k, _, v in (pair.partition("=") for pair in parts.query.split("&") if pair)
        )
    )
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    return {**headers, "x-amz-date": stamp, "x-amz-content-sha256": payload_hash, "Authorization": auth}


@dataclass(frozen=True)
class Bucket:
    endpoint: str  # https://fsn1.your-objectstorage.com (path-style requests)
    region: str
    name: str
    access_key: str = ""
    secret_key: str = ""
    session_token: str = ""  # temporary credentials (AWS_SESSION_TOKEN): sent signed, never logged

    def __repr__(self) -> str:  # never the keys
        return f"Bucket({self.endpoint!r}, {self.name!r})"

    def url(self, key: str = "", query: str = "") -> str:
        path = f"/{quote(self.name)}" + (f"/{quote(key, safe='/-_.~')}" if key else "")
        return f"{self.endpoint.rstrip('/')}{path}" + (f"?{query}" if query else "")


class S3:
    def __init__(self, bucket: Bucket, client: Any = None):
        import httpx

        self.bucket = bucket
        self.client = client or httpx.Client(timeout=30.0)

    def _request(
        self, method: str, key: str = "", query: str = "", headers: dict[str, str] | None = None, content: bytes = b""
    ):
        import httpx

        url = self.bucket.url(key, query)
        b = self.bucket
        headers = dict(headers or {})
        if b.session_token:
            headers["x-amz-security-token"] = b.session_token
        digest = hashlib.sha256(content).hexdigest()
        signed = sign(
            method, url, headers, access_key=b.access_key, secret_key=b.secret_key, region=b.region, payload_hash=digest
        )
        try:
            return self.client.request(method, url, headers=signed, content=content or None)
        except httpx.HTTPError as exc:
            raise ProvisionError(f"cannot reach the object storage at {b.endpoint}: {exc}") from None

    def _fail(self, what: str, reply) -> ProvisionError:
        code = ""
        with contextlib.suppress(ET.ParseError):
            code = ET.fromstring(reply.content).findtext("Code") or ""  # noqa: S314 - see _NS
        hint = f"check {S3_ACCESS_ENV} / {S3_SECRET_ENV}" if reply.status_code in (401, 403) else None
        return ProvisionError(f"{what} in bucket {self.bucket.name}: the object storage answered "
                              f"{reply.status_code} {code}".rstrip(), hint=hint)  # fmt: skip

    def exists(self, key: str) -> bool:
        """Whether ``key`` is in the bucket (a missing bucket: no)."""
        reply = self._request("HEAD", key)
        if reply.status_code == 200:
            return True
        if reply.status_code == 404:
            return False
        raise self._fail(f"looking up {key}", reply)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix`` (ListObjectsV2, page by page; bounded by the listing itself)."""
        token = ""
        while True:
            query = "list-type=2" + (f"&prefix={quote(prefix, safe='')}" if prefix else "")
            if token:
                query += f"&continuation-token={quote(token, safe='')}"
            reply = self._request("GET", query=query)
            if reply.status_code != 200:
                raise self._fail("listing", reply)
            root = ET.fromstring(reply.content)  # noqa: S314 - see _NS
            for item in root.iter(f"{_NS}Contents"):
                yield item.findtext(f"{_NS}Key") or ""
            token = root.findtext(f"{_NS}NextContinuationToken") or ""
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return

    def copy(self, source: str, dest: str) -> None:
        source_path = f"/{self.bucket.name}/{quote(source, safe='/-_.~')}"
        reply = self._request("PUT", dest, headers={"x-amz-copy-source": source_path})
        if reply.status_code != 200 or b"<Error>" in reply.content:
            raise self._fail(f"copying {source}", reply)

    def delete(self, key: str, *, if_match: str = "") -> bool:
        """Delete ``key``; with ``if_match``, only while its ETag is that one (False when it is not)."""
        reply = self._request("DELETE", key, headers={"If-Match": if_match} if if_match else None)
        if if_match and reply.status_code in (409, 412):
            return False
        if reply.status_code not in (200, 204):
            raise self._fail(f"deleting {key}", reply)
        return True

    def put(self, key: str, body: bytes, *, if_none_match: bool = False, if_match: str = "") -> str | None:
        """Write ``key``; the new ETag, or None when the condition did not hold (``If-None-Match: *``: the
        key exists; ``If-Match``: its ETag is another one). 409 is S3's answer to a concurrent conditional
        write, which lost too. A store that rejects the condition headers (501) cannot lock."""
        headers = {"content-type": "application/json"}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match:
            headers["If-Match"] = if_match
        reply = self._request("PUT", key, headers=headers, content=body)
        if (if_none_match or if_match) and reply.status_code in (409, 412):
            return None
        if reply.status_code == 501:
            raise ProvisionError(f"the object storage at {self.bucket.endpoint} does not implement conditional writes")
        if reply.status_code != 200:
            raise self._fail(f"writing {key}", reply)
        return reply.headers.get("etag", "")

    def get(self, key: str) -> tuple[bytes, str, float] | None:
        """(content, ETag, seconds since it was last written by the store's own clock), or None if absent."""
        from email.utils import parsedate_to_datetime

        reply = self._request("GET", key)
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise self._fail(f"reading {key}", reply)
        try:
            age = (
                parsedate_to_datetime(reply.headers["date"]) - parsedate_to_datetime(reply.headers["last-modified"])
            ).total_seconds()
        except (KeyError, TypeError, ValueError):
            age = 0.0  # a store that does not say: never stale by its clock
        return reply.content, reply.headers.get("etag", ""), age

    def move_prefix(self, keys: list[str], prefix: str) -> int:
        """Copy every key under ``prefix``, then delete the originals (never before all copies exist)."""
        for key in keys:
            self.copy(key, f"{prefix}{key}")
        for key in keys:
            self.delete(key)
        return len(keys)
