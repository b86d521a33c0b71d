"""The admin e-mail check against a real DNS server on loopback (UDP, answers built with dnspython), asked
the way Mastodon's EmailMxValidator asks: MX, then A and AAAA of the domain and of each MX host."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from provision.errors import ValidationError
from provision.lifecycle import admin_email
from provision.lifecycle import stack as lifecycle

# name -> {rdtype: [rdata text]}; a name absent here is NXDOMAIN
ZONE: dict[str, dict[str, list[str]]] = {
    "mail.example.test.": {"MX": ["10 mx1.example.test."]},
    "mx1.example.test.": {"A": ["192.0.2.25"]},
    "a-only.example.test.": {"A": ["192.0.2.80"]},
    "v6-only.example.test.": {"AAAA": ["2001:db8::25"]},
    "null-mx.example.test.": {"MX": ["0 ."], "A": ["192.0.2.99"]},
    "dangling-mx.example.test.": {"MX": ["10 nowhere.example.test."]},
    "empty.example.test.": {"TXT": ['"v=spf1 -all"']},
}


@dataclass
class DnsServer:
    port: int = 0
    mode: str = "answer"  # answer | servfail | silent
    asked: list[tuple[str, str]] = field(default_factory=list)

    def resolver(self, lifetime: float = 1.0) -> dns.resolver.Resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.lifetime = lifetime
        r.timeout = lifetime
        return r


def _answer(server: DnsServer, query: dns.message.Message) -> dns.message.Message | None:
    question = query.question[0]
    name, rdtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
    server.asked.append((name, rdtype))
    if server.mode == "silent":
        return None
    response = dns.message.make_response(query)
    if server.mode == "servfail":
        response.set_rcode(dns.rcode.SERVFAIL)
    elif name not in ZONE:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif rdtype in ZONE[name]:
        response.answer.append(dns.rrset.from_text_list(name, 300, "IN", rdtype, ZONE[name][rdtype]))
    return response  # a known name without that type: NOERROR with no answer


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    server = DnsServer(port=sock.getsockname()[1])
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():  # bounded by the fixture's teardown
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            reply = _answer(server, dns.message.from_wire(data))
            if reply is not None:
                sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


@pytest.mark.parametrize(
    ("email", "seen"),
    [
        ("admin@mail.example.test", "mail.example.test resolves (1 addresses)"),  # MX -> host with A
        ("admin@a-only.example.test", "a-only.example.test resolves (1 addresses)"),  # no MX, an A record
        ("admin@V6-Only.Example.Test", "v6-only.example.test resolves (1 addresses)"),  # AAAA counts too
    ],
)
def test_a_domain_that_resolves_is_accepted(dns_server: DnsServer, email: str, seen: str) -> None:
    assert admin_email.check("mastodon", email, resolver=dns_server.resolver()) == f"{email}: {seen}"


def test_mx_hosts_are_asked_for_their_addresses(dns_server: DnsServer) -> None:
    admin_email.check("mastodon", "admin@mail.example.test", resolver=dns_server.resolver())
    assert dns_server.asked == [
        ("mail.example.test.", "MX"),
        ("mail.example.test.", "A"),
        ("mail.example.test.", "AAAA"),
        ("mx1.example.test.", "A"),
        ("mx1.example.test.", "AAAA"),
    ]


@pytest.mark.parametrize(
    ("email", "why"),
    [
        ("admin@made-up.example.test", "has no MX, A or AAAA record in DNS"),  # NXDOMAIN
        ("admin@empty.example.test", "has no MX, A or AAAA record in DNS"),  # exists, no such records
        ("admin@dangling-mx.example.test", "has no MX, A or AAAA record in DNS"),  # MX host has no address
        ("admin@null-mx.example.test", "publishes a null MX (it accepts no mail)"),  # A ignored, as Mastodon does
    ],
)
def test_a_domain_mastodon_would_refuse_is_one_clear_line(dns_server: DnsServer, email: str, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        admin_email.check("mastodon", email, resolver=dns_server.resolver())
    domain = email.split("@")[1]
    assert err.value.line() == (
        f"admin_email: {email}: {domain} {why}, and mastodon's admin creation refuses such an address "
        "(use --admin-email at a domain that receives mail)"
    )
    assert err.value.exit_code == 2


def test_a_domain_dns_cannot_ask_for_is_one_clear_line(dns_server: DnsServer) -> None:
    with pytest.raises(ValidationError) as err:
        admin_email.check("mastodon", "admin@a..example.test", resolver=dns_server.resolver())
    assert err.value.line() == (
        "admin_email: admin@a..example.test: 'a..example.test' is not a domain name (A DNS label is empty.)"
    )
    assert dns_server.asked == []


def test_an_unanswering_resolver_is_not_a_refusal(dns_server: DnsServer) -> None:
    """The operator's resolver failing says nothing about the server's: note it and go on (bounded)."""
    notes: list[str] = []
    dns_server.mode = "servfail"
    seen = admin_email.check("mastodon", "a@mail.example.test", resolver=dns_server.resolver(), progress=notes.append)
    assert notes == [seen] and seen.startswith("could not check that mail.example.test (of the admin e-mail) resolves")
    assert "NoNameservers" in seen
    dns_server.mode = "silent"
    dns_server.asked.clear()
    seen = admin_email.check("mastodon", "a@mail.example.test", resolver=dns_server.resolver(lifetime=0.3))
    assert "Timeout" in seen
    assert {q for q in dns_server.asked} == {("mail.example.test.", "MX")}  # gave up after the first lookup


def test_no_resolver_configuration_is_not_a_refusal(monkeypatch) -> None:
    def unconfigured(*_a, **_kw):
        raise dns.resolver.NoResolverConfiguration("no nameservers")

    monkeypatch.setattr(dns.resolver, "Resolver", unconfigured)
    seen = admin_email.check("mastodon", "a@mail.example.test")
    assert (
        seen
        == "could not check that mail.example.test (of the admin e-mail) resolves: no nameserver in /etc/resolv.conf"
    )


def test_other_apps_and_the_stacks_own_domain_ask_nothing(dns_server: DnsServer) -> None:
    for app in ("lemmy", "mbin"):
        assert admin_email.check(app, "admin@made-up.example.test", resolver=dns_server.resolver()) == ""
    own = frozenset({"social.example.test"})
    seen = admin_email.check("mastodon", "admin@social.example.test", own, resolver=dns_server.resolver())
    assert "the stack's own domain" in seen
    assert dns_server.asked == []


def test_up_refuses_before_anything_is_created(monkeypatch, tmp_path) -> None:
    """lifecycle.up asks first: a refused address leaves no stack, no secrets, no bundle."""
    from provision.providers.hetzner.offline import OfflineEngine
    from provision.providers.hetzner.provider import HetznerProvider
    from tests.support.stack_fixtures import isolate, spec_of
    from tests.test_lifecycle import Recorder

    isolate(monkeypatch, tmp_path)
    provider = HetznerProvider(engine=OfflineEngine())
    spec = spec_of(software="mastodon", admin_email="admin@made-up.example.test")

    def refuse(spec, progress):
        raise ValidationError("admin_email", "refused")

    steps = Recorder().steps()
    with pytest.raises(ValidationError):
        lifecycle.up(spec, provider, lambda _l: None, steps=replace(steps, admin_email=refuse))
    assert provider.engine.stack_names() == []
    assert not lifecycle.bundle_dir(spec.stack_name).exists()


def test_the_default_step_checks_the_specs_address(monkeypatch) -> None:
    seen: list[tuple] = []
    monkeypatch.setattr(admin_email, "check", lambda *a, **kw: seen.append(a) or "")
    from tests.support.stack_fixtures import spec_of

    spec = spec_of(software="mastodon", admin_email="owner@mail.example.test")
    lifecycle.Steps().admin_email(spec, lambda _l: None)
    assert seen == [("mastodon", "owner@mail.example.test", frozenset({"social.example.org"}))]
