"""Dues arithmetic and [coop] validation, as tables."""

from __future__ import annotations

from decimal import Decimal

import pytest

from provision.billing.cost import CostBreakdown, CostLine, Price, monthly_cost
from provision.billing.dues import compute_dues, parse_coop
from provision.errors import ValidationError


def breakdown(net: str, gross: str | None = None) -> CostBreakdown:
    """A one-line monthly cost of a known amount."""
    price = Price(Decimal(net), Decimal(gross or net))
    return CostBreakdown((CostLine("server", Decimal(1), "month", price, price),), "EUR", "table 2026-05-27")


# (coop settings, monthly cost) -> expected figures
CASES = [
    pytest.param(
        {"dues": 1, "period": "month", "members": 0},
        "10",
        {
            "income_month": 0,
            "funding_percent": 0,
            "members_to_cover": 10,
            "surplus_month": -10,
            "subsidy_capacity": 0,
            "subsidies_unfunded": 0,
            "paying": 0,
        },
        id="zero members",
    ),
    pytest.param(
        {"dues": 1, "period": "month", "members": 10},
        "10",
        {
            "income_month": 10,
            "funding_percent": 100,
            "members_to_cover": 10,
            "surplus_month": 0,
            "subsidy_capacity": 0,
            "subsidies_unfunded": 0,
        },
        id="covered exactly",
    ),
    pytest.param(
        {"dues": 1, "period": "month", "members": 12, "subsidized": 2},
        "10",
        {
            "income_month": 10,
            "funding_percent": 100,
            "surplus_month": 0,
            "subsidy_capacity": 2,
            "subsidies_unfunded": 0,
        },
        id="covered exactly with subsidies",
    ),
    pytest.param(
        {"dues": 1, "period": "month", "members": 12, "subsidized": 6, "extra_share": 0.5, "extra_amount": 1},
        "10",
        {
            "paying": 6,
            "extra_payers": 3,
            "income_month": 9,
            "funding_percent": 90,
            "surplus_month": -1,
            "subsidy_capacity": 5,
            "subsidies_unfunded": 1,
            "members_to_cover": 7,
        },
        id="more subsidies than surplus",
    ),
    pytest.param(
        {"dues": 1, "period": "month", "members": 4, "subsidized": 4},
        "10",
        {"paying": 0, "income_month": 0, "subsidy_capacity": 0, "subsidies_unfunded": 4},
        id="everyone subsidized",
    ),
    pytest.param(
        {"dues": 1, "period": "month", "members": 20, "subsidized": 1, "extra_share": 0.25, "extra_amount": 2},
        "10",
        # 19 paying, 4 pay 2 extra: 19 + 8 = 27; surplus 17 carries 1 + 17 subsidized memberships
        {
            "extra_payers": 4,
            "income_month": 27,
            "surplus_month": 17,
            "subsidy_capacity": 18,
            "funding_percent": 270,
            "members_to_cover": 7,
        },
        id="surplus funds subsidies",
    ),
    pytest.param(
        # the co-op example: 5 a year, every extra 5 covers a subsidized member; 12 a month = 144 a year
        {"dues": 5, "period": "year", "members": 40, "subsidized": 4, "extra_share": 0.25},
        "12",
        {
            "paying": 36,
            "extra_payers": 9,
            "income_month": 18.75,
            "members_to_cover": 24,
            "surplus_month": 6.75,
            "subsidy_capacity": 20,
            "funding_percent": 156.3,
            "cost_per_period": 144,
        },
        id="yearly dues",
    ),
    pytest.param(
        {"dues": 1, "period": "month", "members": 3},
        "0",
        {"funding_percent": 100, "members_to_cover": 0, "subsidy_capacity": 3},
        id="nothing to pay",
    ),
]


@pytest.mark.parametrize(("raw", "cost", "expected"), CASES)
def test_dues(raw, cost, expected):
    report = compute_dues(parse_coop(raw), breakdown(cost)).as_dict()
    assert {k: report[k] for k in expected} == pytest.approx(expected)


def test_gross_or_net_costs():
    cost = breakdown("10", "11.9")
    gross = compute_dues(parse_coop({"dues": 1, "period": "month", "members": 10}), cost)
    net = compute_dues(parse_coop({"dues": 1, "period": "month", "members": 10, "costs": "net"}), cost)
    assert gross.cost_month == Decimal("11.9") and net.cost_month == Decimal("10")
    assert net.funding_percent == 100 and gross.members_to_cover == 12


def test_reserve_and_runway():
    raw = {"dues": 1, "period": "month", "members": 8, "reserve_months": 3, "reserve_balance": 15}
    r = compute_dues(parse_coop(raw), breakdown("10")).as_dict()
    assert r["reserve_target"] == 30 and r["reserve_percent"] == 50
    assert r["runway_months"] == 7.5  # 15 in reserve, 2 short a month
    settings = parse_coop({"dues": 1, "period": "month", "members": 10, "reserve_amount": 200})
    fixed = compute_dues(settings, breakdown("1"))
    assert fixed.reserve_target == 200 and fixed.runway_months is None


def test_summary_from_the_real_cost_model(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDI_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("HCLOUD_TOKEN", raising=False)
    cost = monthly_cost(("small", "mastodon", "fsn1"))
    report = compute_dues(parse_coop({"dues": 5, "members": 100, "subsidized": 10, "extra_share": 0.1}), cost)
    text = report.summary()
    assert f"{report.members_to_cover} paying members cover it" in text
    assert "subsidized" in text and report.source.startswith("table ")


BAD = [
    (None, "coop: no [coop] table"),
    ({"members": 3}, "coop/dues: is required"),
    ({"dues": 0}, "coop/dues: 0 must be more than 0"),
    ({"dues": "5"}, "coop/dues: '5' must be a number"),
    ({"dues": True}, "coop/dues: True must be a number"),
    ({"dues": 5, "period": "week"}, "coop/period: 'week' is not one of month, year"),
    ({"dues": 5, "members": -1}, "coop/members: -1 must not be negative"),
    ({"dues": 5, "members": 2.5}, "coop/members: 2.5 must be a whole number"),
    ({"dues": 5, "members": 2, "subsidized": 3}, "coop/subsidized: 3 is more than coop/members (2)"),
    ({"dues": 5, "extra_share": 1.5}, "coop/extra_share: 1.5 must be at most 1"),
    ({"dues": 5, "reserve_months": 3, "reserve_amount": 9}, "coop/reserve_amount: give the reserve target"),
    ({"dues": 5, "costs": "vat"}, "coop/costs: 'vat' is not one of gross, net"),
    ({"dues": 5, "announce": "yes"}, "coop/announce: 'yes' must be true or false"),
    ({"dues": 5, "due": 4}, "coop/due: unknown key"),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_bad_coop_settings(raw, message):
    with pytest.raises(ValidationError) as err:
        parse_coop(raw)
    assert str(err.value).startswith(message)
