"""The naming rule (provision.names): injective, within Pulumi's and Hetzner's limits, for any valid domain."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from provision import names
from provision.errors import FediError, UsageError
from provision.spec import validate_domain

PULUMI_STACK = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")  # Pulumi's own rule for stack names
HETZNER_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # a hostname label, as Hetzner wants names


def unescape(name: str) -> str:
    """The inverse of the uncut rule: a run of hyphens is one '.' when odd-length 1, else hyphens."""
    return re.sub(r"-+", lambda m: "." if len(m.group()) == 1 else "-" * (len(m.group()) // 2), name)


def assert_valid(domain: str) -> dict[str, str]:
    stack = names.stack_name(domain)
    assert PULUMI_STACK.match(stack), stack
    assert len(stack) <= 63 and HETZNER_NAME.match(stack), stack
    all_names = names.hetzner_names(stack, domain)
    for role, name in all_names.items():
        assert len(name) <= 63 and HETZNER_NAME.match(name), (role, name)
    names.check_stack(stack, domain)
    return {"stack": stack, **all_names}


# ---- the examples from the issue and the edges ----


def test_the_two_domains_of_the_issue_get_two_stacks():
    a, b = names.stack_name("chat.social-club.example"), names.stack_name("chat-social.club.example")
    assert (a, b) == ("chat-social--club-example", "chat--social-club-example")
    assert unescape(a) == "chat.social-club.example" and unescape(b) == "chat-social.club.example"


def test_plain_domains_keep_the_name_they_always_had():
    assert names.stack_name("social.example.org") == "social-example-org"
    assert names.stack_name("Social.Example.ORG") == "social-example-org"
    assert names.legacy_stack_name("social.example.org") == "social-example-org"
    assert names.legacy_stack_name("chat-social.club.example") == "chat-social-club-example"


def test_bucket_names_are_those_of_the_first_release():
    # a changed bucket name would replace the bucket (and the media bucket's content with it)
    assert names.bucket_names("social-example-org", "social.example.org") == (
        "social-example-org-media-907ed79b",
        "social-example-org-backups-907ed79b",
    )
    assert names.bucket_names("a" * 60, "long.example.org")[0] == "a" * 40 + "-media-377dbd1e"


def test_long_domains_sharing_their_first_60_characters_get_different_valid_names():
    head = "a" * 55 + ".bbbb"
    one, two = f"{head}.one.example.org", f"{head}.two.example.org"
    n1, n2 = assert_valid(one), assert_valid(two)
    for role in n1:
        assert n1[role] != n2[role], role
    assert names.CUT_MARK in n1["stack"] and len(n1["stack"]) <= 63


def test_a_cut_never_ends_with_a_hyphen():
    # the cut falls in the middle of '--' (an escaped '-') and just after a '.' for these domains
    for pad in range(45, 60):
        domain = "x" * pad + "-y." + "z" * 40 + ".example.org"
        for name in assert_valid(domain).values():
            assert not name.endswith("-")


def test_a_domain_over_100_characters_gets_a_stack_name_pulumi_accepts():
    domain = ".".join(["abcdefghij" * 6] * 3) + ".example.org"  # 197 characters
    assert len(validate_domain(domain)) > 100
    assert len(assert_valid(domain)["stack"]) == 63


@pytest.mark.parametrize(
    ("stack", "why"),
    [
        ("has space", "not a valid stack name"),
        ("x" * 101, "not a valid stack name"),
        ("-leading", "not a valid Hetzner resource name"),
        ("Upper-Case", "not a valid Hetzner resource name"),
        ("dots.in.it", "not a valid Hetzner resource name"),
    ],
)
def test_names_outside_the_limits_are_refused_before_anything_is_created(stack, why):
    with pytest.raises(UsageError) as err:
        names.check_stack(stack, "social.example.org")
    assert why in err.value.line() and err.value.exit_code == 2


def test_a_legacy_stack_is_found_only_by_the_domain_it_stores():
    stored = {"chat-social-club-example": "chat-social.club.example"}
    assert names.resolve_stack("chat-social.club.example", stored.get) == "chat-social-club-example"
    # the other domain of the pair does not take it over: it gets its own (new) name
    assert names.resolve_stack("chat.social-club.example", stored.get) == "chat-social--club-example"
    # once the new name exists, it wins
    stored["chat--social-club-example"] = "chat-social.club.example"
    assert names.resolve_stack("chat-social.club.example", stored.get) == "chat--social-club-example"


# ---- property: many domains, no collisions, every name valid ----

LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


def _valid(labels: list[str]) -> str | None:
    try:
        return validate_domain(".".join(labels))
    except FediError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(LABEL, min_size=2, max_size=5), min_size=2, max_size=12))
def test_property_distinct_domains_never_share_a_name(domains):
    valid = {d for d in (_valid(labels) for labels in domains) if d}
    assume(len(valid) >= 2)
    seen: dict[str, dict[str, str]] = {}
    for domain in valid:
        got = assert_valid(domain)
        if names.CUT_MARK not in got["stack"]:
            assert unescape(got["stack"]) == domain
        seen[domain] = got
    for role in next(iter(seen.values())):
        assert len({v[role] for v in seen.values()}) == len(seen), role


def _random_domain(rng: random.Random, stem: str) -> str:
    labels = [stem] if stem else []
    for _ in range(rng.randint(1, 4)):
        length = rng.choice([1, 2, 5, 12, 30, 63])
        label = "".join(rng.choice("ab-0.") for _ in range(length)).replace(".", "")
        label = label.strip("-") or "a"
        if label[2:4] == "--":
            label = label[:2] + "x" + label[3:]
        labels.append(label[:63])
    return ".".join([*labels, rng.choice(["example", "example.org", "co.uk"])])


def test_property_thousands_of_similar_domains_never_collide():
    # few letters, many hyphens and dots, long shared prefixes: where a lossy rule collides first
    rng = random.Random(16)
    stems = ["", "a" * 50, "chat-social", "chat", "x-" * 20 + "x"]
    domains = {d for d in (_valid([_random_domain(rng, rng.choice(stems))]) for _ in range(4000)) if d}
    assert len(domains) > 2500
    taken: dict[str, set[str]] = {}
    for domain in domains:
        for role, name in assert_valid(domain).items():
            taken.setdefault(role, set()).add(name)
    for role, used in taken.items():
        assert len(used) == len(domains), role
