"""One rule per user-given field, the same for every app: what each accepts, and the error (with the
key's path, never a secret's value) for what it does not.

Every text value is also run through the writers of the formats it reaches (provision/render/quote.py),
so a value one app's configuration format cannot carry is refused for every app, before anything is
written. README's fedi.toml section lists the accepted forms.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import idna

from provision.errors import ValidationError
from provision.render import quote

# RFC 5322 addr-spec, dot-atom form (RFC 6532: UTF-8 allowed in the local part); no quoted local part.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_LOCAL_PART = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")


def check_text(value: str, path: str, formats: tuple[str, ...] = quote.APP_FORMATS) -> str:
    """Any printable text: control characters are refused, naming the field (never showing a secret),
    and so is a value one of the bundle's formats cannot carry (provision/render/quote.py)."""
    check_control(value, path)
    return quote.check_field(value, path, formats)


def check_strings(node: Any, path: str) -> None:
    """Every string anywhere in a parsed fedi.toml: no control characters (with the key's path)."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_strings(value, f"{path}/{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        check_control(node, path)


def validate_email(value: Any, path: str, formats: tuple[str, ...] = quote.APP_FORMATS) -> str:
    """An RFC 5322 addr-spec (dot-atom local part, UTF-8 allowed; a domain name), taken exactly as given."""
    if not isinstance(value, str) or "@" not in value:
        raise ValidationError(path, f"{value!r} is not an e-mail address such as admin@example.org")
    check_control(value, path)
    if "<" in value or ">" in value:  # mbin always names the sender itself (its domain)
        raise ValidationError(path, f"{value!r}: give the address only, without a display name or <>")
    local, _, domain = value.rpartition("@")
    if local.startswith('"'):
        raise ValidationError(path, f"{value!r}: a quoted local part is not supported; use a plain address")
    if not _LOCAL_PART.fullmatch(local) or len(local.encode()) > 64:
        raise ValidationError(path, f"{value!r} is not an e-mail address (the part before @ is not valid)")
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise ValidationError(path, f"{value!r} is not an e-mail address (the domain is not valid)") from None
    if "." not in ascii_domain.strip(".") or domain != domain.strip(".") or len(ascii_domain) > 253:
        raise ValidationError(path, f"{value!r} is not an e-mail address (the domain needs a dot)")
    return check_text(value, path, formats)


def check_control(value: str, path: str) -> None:
    bad = quote.control_characters(value)
    if bad:
        raise ValidationError(path, f"contains {quote.describe(bad)}; control characters are not allowed")


def validate_host(value: Any, path: str) -> str:
    """A hostname or an IP address: no port, scheme, path or spaces (each refused with the fix)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(path, "is required: a hostname such as smtp.example.org")
    check_control(value, path)
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        fix = 'use port = 465 and security = "tls"' if scheme == "smtps" else "give the bare hostname"
        raise ValidationError(path, f"{value!r} has a scheme; {fix}")
    try:
        address = ipaddress.ip_address(value.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        if address.version == 6:  # Lemmy splits smtp_server at ':'
            raise ValidationError(path, f"{value!r} is an IPv6 address; give a hostname (or an IPv4 address)")
        return str(address)
    if value.count(":") == 1 or (value.startswith("[") and "]:" in value):
        raise ValidationError(path, f"{value!r} has a port; use the port key (port = 587 or port = 465)")
    if any(c.isspace() for c in value) or any(c in value for c in "/@?#[]:"):
        raise ValidationError(path, f"{value!r} is not a hostname (spaces, /, @, ? and # are not allowed)")
    try:
        ascii_host = idna.encode(value.rstrip("."), uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValidationError(path, f"{value!r} is not a valid hostname ({exc})") from None
    if len(ascii_host) > 253 or not all(re.fullmatch(r"[a-z0-9-]{1,63}", label) for label in ascii_host.split(".")):
        raise ValidationError(path, f"{value!r} is not a valid hostname")
    return value if value.isascii() else ascii_host  # an IDN is written in its ASCII (punycode) form
