"""Will the app accept the first admin's e-mail address? Checked on the operator's side, before anything
is created, so a made-up address is one clear line instead of a failed first deploy on the server.

Mastodon's `tootctl accounts create` (lib/mastodon/cli/accounts.rb) saves a User, which in production
validates the address with EmailMxValidator (app/validators/email_mx_validator.rb, enabled by
`validate_email_dns?` in app/models/concerns/user/email_address.rb; read at mastodon/mastodon 079a540 and
the newest stored tree: v4.7.2's own tree was too large to fetch here): it asks DNS for the domain's MX
records, then for the A and AAAA records of the domain and of every MX host; when no address comes back,
or the domain publishes a null MX (RFC 7505: it accepts no mail), the account is invalid
("unreachable") and the command fails. Like Ruby's Resolv::DNS, the lookups here ask the nameservers of
/etc/resolv.conf and ignore /etc/hosts.

Lemmy and mbin create their admin without looking the domain up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provision import apps
from provision.errors import ValidationError

TIMEOUT_S = 5.0  # per lookup, as Mastodon's resolver (dns.timeouts = 5)
MAX_MX = 10  # MX hosts looked up at most (bounded)


@dataclass(frozen=True)
class Lookup:
    addresses: tuple[str, ...]  # A and AAAA of the domain and of its MX hosts
    mx: tuple[str, ...]  # MX exchanges; ("",) is a null MX
    inconclusive: str = ""  # why DNS gave no answer either way (timeout, SERVFAIL, no nameserver)


def lookup(domain: str, resolver: Any = None) -> Lookup:
    """What Mastodon's EmailMxValidator#resolve_mx asks DNS, asked the same way."""
    import dns.exception
    import dns.name
    import dns.resolver

    if resolver is None:
        try:
            resolver = dns.resolver.Resolver()  # /etc/resolv.conf, never /etc/hosts
        except dns.resolver.NoResolverConfiguration:
            return Lookup((), (), "no nameserver in /etc/resolv.conf")
        resolver.lifetime = TIMEOUT_S
    problems: list[str] = []

    def ask(name: Any, rdtype: str) -> list[Any]:
        try:
            return list(resolver.resolve(name, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []  # a definite "no such record"
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            problems.append(f"{rdtype} {name}: {type(exc).__name__}")
            return []

    origin = dns.name.from_text(domain)
    mx = [r.exchange for r in ask(origin, "MX")]
    if problems and "Timeout" in problems[0]:  # a silent resolver stays silent: bounded by one lookup
        return Lookup((), (), problems[0])
    mx_text = tuple("" if m == dns.name.root else m.to_text(omit_final_dot=True) for m in mx)
    if mx_text == ("",):  # null MX: Mastodon looks no further
        return Lookup((), mx_text, "")
    addresses: list[str] = []
    hosts = [origin] + [m for m in mx if m != origin][:MAX_MX]
    for host in hosts:
        for rdtype in ("A", "AAAA"):
            addresses += [r.address for r in ask(host, rdtype)]
    return Lookup(tuple(addresses), mx_text, "; ".join(problems) if not addresses else "")


def check(
    app: str,
    email: str,
    published: frozenset[str] = frozenset(),
    *,
    resolver: Any = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Raise ValidationError (``admin_email: ...``) if ``app`` would refuse ``email``; else say what was seen.

    ``published``: domains fedi itself makes resolve before the app starts (the stack's own domain on
    Hetzner, whose A/AAAA records fedi creates or waits for), accepted without asking DNS now.
    """
    if not apps.get(app).resolves_admin_email:
        return ""
    import dns.exception
    import dns.name

    domain = email.rpartition("@")[2].rstrip(".").lower()
    if domain in published:
        return f"{email}: {domain} is the stack's own domain, which fedi publishes in DNS"
    try:
        dns.name.from_text(domain)
    except (dns.exception.DNSException, UnicodeError) as exc:  # an empty or overlong label, say
        raise ValidationError("admin_email", f"{email}: {domain!r} is not a domain name ({exc})") from None
    seen = lookup(domain, resolver)
    if seen.addresses:
        return f"{email}: {domain} resolves ({len(seen.addresses)} addresses)"
    if seen.inconclusive:
        note = f"could not check that {domain} (of the admin e-mail) resolves: {seen.inconclusive}"
        if progress:
            progress(note)
        return note
    why = "publishes a null MX (it accepts no mail)" if seen.mx == ("",) else "has no MX, A or AAAA record in DNS"
    raise ValidationError(
        "admin_email",
        f"{email}: {domain} {why}, and {app}'s admin creation refuses such an address",
        hint="use --admin-email at a domain that receives mail",
    )
