"""The account's bill: shared lines priced once, exact shares, every server type priced. Tables first."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provision.billing.account import account_bill, split_cents
from provision.billing.account_stacks import GB, Member, members_from, parse_account, with_planned
from provision.billing.cost import load_prices, table_prices
from provision.errors import ValidationError
from provision.providers import StackSummary
from provision.sizing import SERVER_TYPES, TIERS
from provision.spec import LOCATIONS

D = Decimal


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.delenv("HCLOUD_TOKEN", raising=False)


# (total EUR, weights) -> parts: the largest remainder method, by hand
SPLITS = [
    ("4.99", [1], ["4.99"]),
    ("4.99", [1, 1, 1, 1], ["1.25", "1.25", "1.25", "1.24"]),
    ("5.94", [1, 1, 1, 1], ["1.49", "1.49", "1.48", "1.48"]),
    ("1.00", [1, 1, 1], ["0.34", "0.33", "0.33"]),
    ("1.00", [1, 2, 3], ["0.17", "0.33", "0.50"]),  # quotas 16.67, 33.33, 50: the spare cent to .67
    ("0.01", [5, 5], ["0.01", "0.00"]),  # a tie goes to the earlier stack
    ("9.98", [0, 0], ["4.99", "4.99"]),  # nothing known: even
    ("4.99", [300 * GB, 100 * GB], ["3.74", "1.25"]),  # quotas 374.25, 124.75
    ("0.00", [1, 1], ["0.00", "0.00"]),
]


@pytest.mark.parametrize(("total", "weights", "parts"), SPLITS)
def test_split_cents_table(total, weights, parts):
    got = split_cents(D(total), weights)
    assert got == [D(p) for p in parts]
    assert sum(got) == D(total)


@given(
    cents=st.integers(min_value=0, max_value=10**7),
    weights=st.lists(st.integers(min_value=0, max_value=10**13), min_size=1, max_size=12),
)
def test_split_cents_never_loses_a_cent(cents, weights):
    total = D(cents) / 100
    parts = split_cents(total, weights)
    assert sum(parts) == total
    assert all(p >= 0 and p == p.quantize(D("0.01")) for p in parts)
    whole = sum(weights) or len(weights)
    for p, w in zip(parts, weights, strict=True):
        quota = total * (w if sum(weights) else 1) / whole
        assert abs(p - quota) < D("0.01")  # nobody is more than a cent from their exact share


def _m(stack, size, app="mastodon", location="fsn1", gb=None):
    return Member(stack, size, app, location, None if gb is None else int(gb * GB))


FOUR = [_m("a", "tiny"), _m("b", "small", "lemmy"), _m("c", "medium", "mbin", "hel1"), _m("d", "large")]


@pytest.mark.parametrize(
    "members",
    [
        pytest.param([_m("a", "tiny")], id="one stack"),
        pytest.param([_m(x, "tiny") for x in "abcd"], id="four tiny stacks"),
        pytest.param(FOUR, id="four stacks of different sizes"),
        pytest.param([_m("a", "tiny", gb=300), _m("b", "large", gb=1700), _m("c", "small", gb=0)], id="by bytes"),
    ],
)
def test_the_account_total_is_the_stacks_own_lines_plus_the_shared_lines_once(members):
    bill = account_bill(members, table_prices())
    own = sum((line.amount.net for s in bill.stacks for line in s.own), D(0))
    shared = sum((line.amount.net for line in bill.shared), D(0))
    assert bill.total_net == own + shared
    own_g = sum((line.amount.gross for s in bill.stacks for line in s.own), D(0))
    assert bill.total_gross == own_g + sum((line.amount.gross for line in bill.shared), D(0))
    assert bill.vat == bill.total_gross - bill.total_net > 0
    # Object Storage's base is on the bill once, whatever the number of stacks
    assert [line.name for line in bill.shared][0].startswith("object storage base")
    assert sum(1 for s in bill.stacks for line in s.own if line.name.startswith("object storage")) == 0
    for i, line in enumerate(bill.shared):  # the shares add up to the shared line exactly
        assert sum(s.shares[i].amount.net for s in bill.stacks) == line.amount.net
        assert sum(s.shares[i].amount.gross for s in bill.stacks) == line.amount.gross
    assert sum(s.total.net for s in bill.stacks) == bill.total_net
    for s in bill.stacks:  # every amount is whole cents, as an invoice shows it
        for line in s.lines:
            assert line.amount.net == line.amount.net.quantize(D("0.01"))


def test_four_stacks_pay_the_base_once_not_four_times():
    prices = table_prices()
    alone = [account_bill([m], prices) for m in FOUR]
    together = account_bill(FOUR, prices)
    base = together.shared[0].amount
    assert sum(b.total_net for b in alone) - together.total_net == 3 * base.net
    assert sum(b.total_gross for b in alone) - together.total_gross == 3 * base.gross
    assert together.rule == "even shares, 1/4 each"
    for s, single in zip(together.stacks, alone, strict=True):
        assert s.own == single.stacks[0].own  # own lines do not depend on the company a stack keeps


def test_shares_follow_stored_bytes_when_every_stack_has_them():
    members = [_m("a", "tiny", gb=500), _m("b", "small", gb=1500), _m("c", "medium", gb=1000)]
    bill = account_bill(members, table_prices())
    # 3 TB stored: 1 TB in the base, 2 TB further at the table's 4.99 net a TB-month
    names = [line.name for line in bill.shared]
    assert names[1] == "object storage, further TB stored"
    assert bill.shared[1].quantity == 2 and bill.shared[1].amount.net == D("9.98")
    assert bill.rule.startswith("by stored bytes")
    base = [s.shares[0].amount.net for s in bill.stacks]
    assert base == split_cents(D("4.99"), [500, 1500, 1000]) == [D("0.83"), D("2.50"), D("1.66")]
    # one stack without a figure: even shares, and the account's storage from the flag
    some = [*members[:2], _m("c", "medium")]
    even = account_bill(some, table_prices(), stored_tb=1.0)
    assert even.rule == "even shares, 1/3 each" and len(even.shared) == 1


def test_without_object_storage_there_is_nothing_to_share():
    bill = account_bill(FOUR, table_prices(), object_storage=False)
    assert bill.shared == () and all(s.shares == () for s in bill.stacks)


@pytest.mark.parametrize("server_type", sorted({t for t, _ in TIERS.values()} | set(SERVER_TYPES)))
@pytest.mark.parametrize("location", list(LOCATIONS))
def test_the_fallback_table_prices_every_server_type_fedi_sizes_for(server_type, location):
    monthly, hourly = table_prices().server(server_type, location)  # raises when the table lacks one
    assert monthly.net > 0 and hourly.net > 0 and monthly.gross > monthly.net


def test_every_unconfirmed_item_names_a_line_fedi_prices():
    prices = table_prices()
    assert prices.unconfirmed, "the table lists what no published source confirms"
    bill = account_bill(FOUR, prices)
    names = [line.name for s in bill.stacks for line in s.own] + [line.name for line in bill.shared]
    for item, why in prices.unconfirmed:
        assert why and any(n.startswith(item) for n in names), item
    assert len(bill.unconfirmed) == len(prices.unconfirmed)
    # live prices: only Object Storage (never in /v1/pricing) still comes from the table
    assert load_prices().unconfirmed == prices.unconfirmed


# ---- which stacks make the account ----


def _summary(stack, size="tiny", software="mastodon", provider="hetzner", location="fsn1"):
    return StackSummary(stack, provider, software, size, f"{stack}.example", "", location=location)


def test_members_are_the_backends_hetzner_stacks_unless_named():
    summaries = [
        _summary("b", "small", "lemmy"),
        _summary("a"),
        _summary("l", provider="local"),
        _summary("x", size=""),  # says nothing of what it runs: not priced
        _summary("k", software="kbin", location="hel1"),
        StackSummary("t", "hetzner", "lemmy", "tiny", "t.example", "", ephemeral=True, location="fsn1"),
    ]
    members = members_from(summaries, parse_account(None))
    assert [(m.stack, m.app, m.location) for m in members] == [
        ("a", "mastodon", "fsn1"),
        ("b", "lemmy", "fsn1"),
        ("k", "mbin", "hel1"),
    ]
    named = members_from(summaries, parse_account({"stacks": ["b", "a", "t"], "stored_gb": {"a": 2.5}}))
    assert [(m.stack, m.stored_bytes) for m in named] == [("b", None), ("a", int(2.5 * GB)), ("t", None)]
    with pytest.raises(ValidationError, match="'zz' is not a Hetzner stack"):
        members_from(summaries, parse_account({"stacks": ["zz"]}))


def test_a_planned_stack_joins_or_replaces_its_namesake():
    planned = Member("b", "large", "lemmy", "fsn1", planned=True)
    assert [m.stack for m in with_planned(FOUR, Member("e", "tiny", "lemmy", "fsn1", planned=True))][-1] == "e"
    replaced = with_planned(FOUR, planned)
    assert len(replaced) == 4 and replaced[1].size == "large" and not replaced[1].planned


ACCOUNT_ERRORS = [
    ({"stacks": "a"}, "account/stacks: must be a list of stack names"),
    ({"stored_gb": 3}, "account/stored_gb: must be a table"),
    ({"stored_gb": {"a": -1}}, "account/stored_gb/a: -1 must be a number of GB, 0 or more"),
    ({"stored_gb": {"a": True}}, "account/stored_gb/a: True must be a number of GB"),
    ({"share": "even"}, "account/share: unknown key (known: stacks, stored_gb)"),
    ("x", "account: must be a table"),
]


@pytest.mark.parametrize(("raw", "message"), ACCOUNT_ERRORS)
def test_account_table_errors_name_the_key(raw, message):
    with pytest.raises(ValidationError) as err:
        parse_account(raw)
    assert err.value.line().startswith(message)


def test_an_empty_account_or_a_stack_twice_is_refused():
    with pytest.raises(ValidationError, match="no Hetzner stacks"):
        account_bill([], table_prices())
    with pytest.raises(ValidationError, match="names a stack twice"):
        account_bill([_m("a", "tiny"), _m("a", "small")], table_prices())
