"""InstanceSpec: what the user asked for, validated at the edge.

Flags win over ``fedi.toml`` in the working directory; every error names the path of the bad key,
the way Kamal does (``size: 'smal' is not one of tiny, small, medium, large``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import idna

from provision import apps, names
from provision.errors import ValidationError
from provision.fields import check_strings, check_text, validate_email, validate_host
from provision.render import quote

CONFIG_FILE = "fedi.toml"


# Size tiers are named for user counts: (registered users, monthly active users) each is built for.
SIZES: dict[str, tuple[int, int]] = {
    "tiny": (50, 20),
    "small": (500, 150),
    "medium": (3000, 1000),
    "large": (15000, 5000),
}

# Hetzner Cloud locations (https://docs.hetzner.com/cloud/general/locations/) where both the cx server
# line that sizing uses and Hetzner Object Storage (media and backup buckets) are offered: the EU ones.
# ash, hil and sin have neither, so a stack there could not keep its media and backups beside it.
LOCATIONS: dict[str, str] = {
    "fsn1": "Falkenstein, DE",
    "nbg1": "Nuremberg, DE",
    "hel1": "Helsinki, FI",
}
PROVIDERS = ("hetzner", "local")
REGISTRATIONS = ("open", "approval", "closed")

_USERNAME = re.compile(r"[a-z0-9_]{1,30}")
SMTP_SECURITY = ("starttls", "tls", "none")


@dataclass(frozen=True)
class SmtpSettings:
    """Outgoing mail. The password is never a flag (argv is visible to every user of the machine)."""

    host: str  # SMTP server: a hostname or an IP address, no port, no scheme
    port: int  # 587 (STARTTLS), 465 (implicit TLS), 25, ...
    user: str  # login name ('' when auth is False)
    from_address: str  # envelope and header From (an addr-spec)
    password_env: str = "FEDI_SMTP_PASSWORD"  # environment variable that holds the password
    security: str = "starttls"  # starttls | tls (implicit TLS, "SMTPS") | none
    auth: bool = True  # False: the relay takes mail without a login (no user, no password)

    def password(self) -> str:
        """The password from the environment; an error naming the variable when it is needed and unset."""
        if not self.auth:
            return ""
        value = os.environ.get(self.password_env, "")
        path = f"smtp/password (${self.password_env})"
        if not value:
            raise ValidationError(
                path, "is not set; export it, or set auth = false in [smtp] if the relay needs no login"
            )
        check_text(value, path)
        return value


@dataclass(frozen=True)
class InstanceSpec:
    """One instance, as asked for. Every field is validated by :func:`build_spec`."""

    software: str  # mastodon | lemmy | kbin (as the user named it)
    size: str  # a key of SIZES
    domain: str  # ASCII (IDNA/punycode) hostname, lower case, no trailing dot
    location: str = "fsn1"  # Hetzner location
    admin_email: str = ""  # first admin's e-mail; defaults to admin@<domain>
    admin_username: str = "admin"  # first admin's account name
    provider: str = "hetzner"  # hetzner | local
    registrations: str = "approval"  # open | approval | closed
    smtp: SmtpSettings | None = None  # outgoing mail; None = no mail (local tests)
    ssh_allow: tuple[str, ...] = ()  # CIDRs allowed to reach port 22; empty = anywhere
    production: bool = True  # delete/rebuild protection, typed confirmation on down
    ephemeral: bool = False  # a throwaway stack (staging CA, labels, TTL)
    ttl_hours: float = 0.0  # ephemeral stacks only: hours until `fedi sweep` may destroy it
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # other fedi.toml sections
    stack: str = ""  # the stack that holds it, once resolved ('' = the name provision.names derives)
    images: str = ""  # a directory of `docker save` archives to load instead of pulling ('' = pull)

    @property
    def app(self) -> str:
        """The app actually deployed: mastodon, lemmy or mbin."""
        return apps.app_name(self.software)

    @property
    def domain_unicode(self) -> str:
        return idna.decode(self.domain)

    @property
    def stack_name(self) -> str:
        """The resolved stack, else the name derived from the domain (provision.names holds the rule)."""
        return self.stack or names.stack_name(self.domain)

    @property
    def users(self) -> tuple[int, int]:
        return SIZES[self.size]


def one_of(path: str, value: Any, allowed: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValidationError(path, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def validate_domain(value: Any, path: str = "domain") -> str:
    """A bare hostname, IDNA-aware. Returns the ASCII form. Refuses schemes, paths, ports and IPs."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(path, "a hostname is required, for example social.example.org")
    raw = value.strip()
    if "://" in raw:
        raise ValidationError(path, f"{raw!r} has a scheme; give the bare hostname, without https://")
    if "/" in raw or "?" in raw or "#" in raw:
        raise ValidationError(path, f"{raw!r} has a path; give the bare hostname only")
    host = raw.rstrip(".")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValidationError(path, f"{raw!r} is an IP address; a Fediverse instance needs a domain name")
    if ":" in host:
        raise ValidationError(path, f"{raw!r} has a port; instances are served on 443, give the hostname only")
    if "@" in host:
        raise ValidationError(path, f"{raw!r} looks like an e-mail address; give the hostname only")
    try:
        ascii_host = idna.encode(host, uts46=True).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise ValidationError(path, f"{raw!r} is not a valid hostname ({exc})") from None
    labels = ascii_host.split(".")
    if len(labels) < 2:
        raise ValidationError(path, f"{raw!r} needs at least two labels, for example social.example.org")
    if labels[-1].isdigit():
        raise ValidationError(path, f"{raw!r} is not a valid hostname (numeric top-level label)")
    if len(ascii_host) > 253:
        raise ValidationError(path, f"{raw!r} is longer than 253 characters")
    return ascii_host


def validate_cidr(value: Any, path: str) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise ValidationError(path, f"{value!r} is not a CIDR such as 203.0.113.0/24") from None


def parse_smtp(raw: Any) -> SmtpSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValidationError("smtp", "must be a table with host, port, user and from")
    allowed = {"host", "port", "user", "from", "password_env", "security", "auth"}
    if "password" in raw:
        raise ValidationError("smtp/password", "put the password in $FEDI_SMTP_PASSWORD, not in a file")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValidationError(f"smtp/{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})")
    auth = raw.get("auth", True)
    if not isinstance(auth, bool):
        raise ValidationError("smtp/auth", f"{auth!r} must be true or false")
    security = raw.get("security")
    if security is not None:
        security = one_of("smtp/security", security, SMTP_SECURITY)
    port = raw.get("port", 465 if security == "tls" else 587)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValidationError("smtp/port", f"{port!r} is not a port number (1-65535)")
    security = security or ("tls" if port == 465 else "starttls")
    host = validate_host(raw.get("host"), "smtp/host")
    user = raw.get("user", "")
    if not isinstance(user, str) or (auth and not user):
        raise ValidationError("smtp/user", "is required (or set auth = false if the relay needs no login)")
    if not auth and user:
        raise ValidationError("smtp/user", "is set but auth = false; remove one of them")
    check_text(user, "smtp/user")
    if not isinstance(raw.get("from"), str) or not raw["from"]:
        raise ValidationError("smtp/from", "is required: the sender address, such as social@example.org")
    password_env = raw.get("password_env", "FEDI_SMTP_PASSWORD")
    if not isinstance(password_env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", password_env):
        raise ValidationError("smtp/password_env", f"{password_env!r} is not an environment variable name")
    return SmtpSettings(
        host=host,
        port=port,
        user=user,
        from_address=validate_email(raw["from"], "smtp/from"),
        password_env=password_env,
        security=security,
        auth=auth,
    )


# Keys fedi.toml may hold at the top level, and the sections other modules read (each validates its own).
SPEC_KEYS = (
    "software",
    "size",
    "domain",
    "location",
    "admin_email",
    "admin_username",
    "provider",
    "registrations",
    "ssh_allow",
    "production",
    "images",
)
SECTIONS = ("smtp", "coop", "hooks", "backup", "state", "account")


BACKUP_KEYS = ("alert_webhook",)
STATE_KEYS = ("backend",)


def section_table(raw: Any, section: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValidationError(section, f"must be a table with {', '.join(known)}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValidationError(f"{section}/{unknown[0]}", f"unknown key (known: {', '.join(known)})")
    return raw


def parse_backup(raw: Any) -> dict[str, str]:
    """[backup]: ``alert_webhook``, an http(s) URL the server calls when a backup fails (optional)."""
    table = section_table(raw if raw is not None else {}, "backup", BACKUP_KEYS)
    url = table.get("alert_webhook", "")
    if not isinstance(url, str) or (url and not re.fullmatch(r"https?://[^\s\"'`$\\]+", url)):
        raise ValidationError("backup/alert_webhook", f"{url!r} is not an http(s) URL")
    return {"alert_webhook": url}


def build_spec(flags: dict[str, Any], config: dict[str, Any] | None = None) -> InstanceSpec:
    """Merge flags over fedi.toml and validate. ``None`` flag values mean "not given"."""
    config = config or {}
    merged = {k: v for k, v in config.items() if k in SPEC_KEYS}
    merged.update({k: v for k, v in flags.items() if v is not None and k not in ("ephemeral", "ttl_hours")})
    check_strings(config, "")
    check_strings(merged, "")

    for key in ("software", "size", "domain"):
        if merged.get(key) in (None, ""):
            raise ValidationError(key, f"is required (pass --{key} or set {key} in {CONFIG_FILE})")
    software = one_of("software", merged["software"], apps.software_names())
    size = one_of("size", merged["size"], tuple(SIZES))
    domain = validate_domain(merged["domain"])
    location = one_of("location", merged.get("location", "fsn1"), tuple(LOCATIONS))
    provider = one_of("provider", merged.get("provider", "hetzner"), PROVIDERS)
    registrations = one_of("registrations", merged.get("registrations", "approval"), REGISTRATIONS)
    # the admin's address is also Caddy's ACME contact e-mail
    admin_email = validate_email(
        merged.get("admin_email") or f"admin@{domain}", "admin_email", (*quote.APP_FORMATS, "caddy")
    )
    admin_username = merged.get("admin_username", "admin")
    if not isinstance(admin_username, str) or not _USERNAME.fullmatch(admin_username):
        raise ValidationError("admin_username", f"{admin_username!r} must be 1-30 of a-z, 0-9 and _")
    ssh_allow = merged.get("ssh_allow", ())
    if isinstance(ssh_allow, str):
        ssh_allow = [s for s in ssh_allow.split(",") if s.strip()]
    if not isinstance(ssh_allow, list | tuple):
        raise ValidationError("ssh_allow", "must be a list of CIDRs")
    cidrs = tuple(validate_cidr(c.strip(), f"ssh_allow[{i}]") for i, c in enumerate(ssh_allow))
    ephemeral = bool(flags.get("ephemeral"))
    ttl = float(flags.get("ttl_hours") or 0.0)
    if ephemeral and ttl <= 0:
        raise ValidationError("ttl", "an ephemeral stack needs a positive TTL, for example --ttl 2h")
    production = merged.get("production", not ephemeral and provider == "hetzner")
    if not isinstance(production, bool):
        raise ValidationError("production", f"{production!r} must be true or false")
    parse_backup(config.get("backup"))  # the server's restic.env carries it: never unchecked
    images = merged.get("images", "")
    if not isinstance(images, str):
        raise ValidationError("images", f"{images!r} must be a directory (of `docker save` archives)")
    images = str(Path(images).expanduser().absolute()) if images.strip() else ""
    return InstanceSpec(
        software=software,
        size=size,
        domain=domain,
        location=location,
        admin_email=admin_email,
        admin_username=admin_username,
        provider=provider,
        registrations=registrations,
        smtp=parse_smtp(config.get("smtp")),
        ssh_allow=cidrs,
        production=production and not ephemeral,
        ephemeral=ephemeral,
        ttl_hours=ttl,
        extra={k: config[k] for k in SECTIONS if k in config and k != "smtp"},
        images=images,
    )


def parse_ttl(value: str) -> float:
    """'2h' -> 2.0, '90m' -> 1.5, '1d' -> 24.0. Returns hours."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd]?)\s*", value or "")
    if not match:
        raise ValidationError("ttl", f"{value!r} is not a duration such as 90m, 2h or 1d")
    number, unit = float(match.group(1)), match.group(2) or "h"
    hours = {"m": number / 60, "h": number, "d": number * 24}[unit]
    if hours <= 0:
        raise ValidationError("ttl", "must be positive")
    return hours
