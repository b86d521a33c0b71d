"""Stack and resource names under Pulumi's mocks: two domains never share a stack, long domains stay
within Hetzner's limits, stacks named under the old rule are still found, and `up` refuses a stack
that holds another domain before anything is created."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from provision import names
from provision.cli import app as cli
from provision.cli import target as cli_target
from provision.errors import UsageError
from provision.lifecycle import stack as lifecycle
from provision.providers.hetzner import offline
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.providers.local.provider import LocalProvider
from provision.sizing import sizing
from tests.support.stack_fixtures import bundle_of, config_of, isolate, spec_of

HETZNER_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
LONG = "a" * 50 + ".bbbbbbbbbbbbbbbbbbbb"  # shared by both long domains: far beyond the old 50-character cut
OLD_PAIR = ("chat-social.club.example", "chat.social.club.example")  # one legacy name: chat-social-club-example


def _names(domain: str) -> dict[str, str]:
    """Every hcloud resource name the real program declares for ``domain``, by resource type."""
    run = offline.run(config_of(domain=domain))
    named = [r for r in run.resources if r.type.startswith("hcloud:") and "name" in r.inputs]
    return {r.type.split(":")[-1] + "/" + r.name: r.inputs["name"] for r in named if "ZoneRrset" not in r.type}


def test_the_program_gives_two_long_domains_different_valid_names():
    one, two = _names(f"{LONG}.one.example.org"), _names(f"{LONG}.two.example.org")
    assert set(one) == set(two) and {"Server/server", "Firewall/firewall", "Volume/data"} <= set(one)
    for key in one:
        assert one[key] != two[key], key
        for name in (one[key], two[key]):
            assert len(name) <= 63 and HETZNER_NAME.match(name), name  # never ends with '-'


def test_the_program_keeps_the_names_of_plain_domains():
    got = _names("social.example.org")
    assert got["Server/server"] == "social-example-org"
    assert got["Firewall/firewall"] == "social-example-org-fw" and got["Volume/data"] == "social-example-org-data"


# ---- the provider and `up` on the test engine ----


@pytest.fixture
def hetzner(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    provider = HetznerProvider(engine=OfflineEngine())
    monkeypatch.setattr(cli_target, "make_provider", lambda name, backend=None, **_: provider)
    return provider


def _up(provider, spec):
    provider.secrets(spec)
    return provider.up(spec, sizing(spec), bundle_of(), lambda _l: None)


def _legacy(provider, domain):
    """A stack made under the old rule (every character outside [a-z0-9-] became '-')."""
    spec = replace(spec_of(domain=domain), stack=names.legacy_stack_name(domain))
    _up(provider, spec)
    return spec.stack


def test_two_domains_of_one_old_name_get_two_stacks_with_their_own_secrets(hetzner):
    a, b = spec_of(domain="chat.social-club.example"), spec_of(domain="chat-social.club.example")
    _up(hetzner, names.settle(a, hetzner))
    _up(hetzner, names.settle(b, hetzner))
    assert sorted(hetzner.engine.stack_names()) == ["chat--social-club-example", "chat-social--club-example"]
    assert hetzner.secrets(a) != hetzner.secrets(b)
    assert hetzner.stored_domain(a.stack_name) == a.domain and hetzner.stored_domain(b.stack_name) == b.domain


def test_a_stack_made_under_the_old_rule_is_still_found(hetzner, capsys):
    old = _legacy(hetzner, OLD_PAIR[0])
    the_plan, _ = lifecycle.plan(spec_of(domain=OLD_PAIR[0]), hetzner)
    assert the_plan.stack == old and hetzner.engine.stack_names() == [old]
    assert all(r.action == "same" for r in the_plan.resources if r.type.startswith("hcloud:"))
    code = cli.main(["status", "--domain", OLD_PAIR[0], "--no-health", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["stack"] == old


def test_up_refuses_a_stack_that_holds_another_domain_and_creates_nothing(hetzner, capsys):
    old = _legacy(hetzner, OLD_PAIR[0])
    assert names.stack_name(OLD_PAIR[1]) == old  # the new name of the other domain is the legacy one
    theirs = replace(spec_of(domain=OLD_PAIR[0]), stack=old)
    secrets = hetzner.secrets(theirs)
    before = hetzner.engine.resources(old)
    code = cli.main(["up", "--software", "lemmy", "--size", "small", "--domain", OLD_PAIR[1], "--yes"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"fedi: domain: the stack {old!r} holds {OLD_PAIR[0]}, not {OLD_PAIR[1]}; nothing was changed"
        " (see `fedi stacks`)"
    ]
    assert hetzner.engine.stack_names() == [old]
    assert hetzner.engine.resources(old) == before and hetzner.secrets(theirs) == secrets
    assert hetzner.engine.read_config(old, "domain") == OLD_PAIR[0]


def test_plan_refuses_too(hetzner):
    _legacy(hetzner, OLD_PAIR[0])
    with pytest.raises(UsageError, match="holds chat-social.club.example"):
        lifecycle.plan(spec_of(domain=OLD_PAIR[1]), hetzner)


def test_a_local_stack_that_holds_another_domain_is_refused_too(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    provider = LocalProvider()
    theirs = replace(spec_of(domain=OLD_PAIR[0], provider="local"), stack=names.stack_name(OLD_PAIR[1]))
    provider.secrets(theirs)  # a local stack under the name the other domain would get
    assert provider.stored_domain(theirs.stack) == OLD_PAIR[0]
    assert provider.stored_domain("nothing-here") is None and provider.stored_domain("x" * 80) is None
    with pytest.raises(UsageError, match="holds chat-social.club.example"):
        names.settle(spec_of(domain=OLD_PAIR[1], provider="local"), provider)
    # and the domain it holds finds it under its old name
    assert names.settle(spec_of(domain=OLD_PAIR[0], provider="local"), provider).stack == theirs.stack


@pytest.mark.parametrize(
    "domain", ["social.example.org", "chat.social-club.example", ".".join(["a-very-long-label-here"] * 9) + ".example"]
)
def test_the_local_store_keeps_every_name_the_rule_gives(tmp_path, domain):
    from provision.state import StateStore

    name = names.stack_name(domain)
    StateStore(tmp_path, "pass").save(name, {"domain": domain})
    assert StateStore(tmp_path, "pass").load(name) == {"domain": domain}
    if len(domain) <= names.NAME_MAX:  # an old-rule name was never cut: a longer one was never local
        assert names.LOCAL_STACK.match(names.legacy_stack_name(domain))
