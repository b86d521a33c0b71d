"""Member dues: how many paying members cover the instance, and how many subsidized memberships it carries.

The co-op's settings live in ``fedi.toml``::

    [coop]
    dues = 5              # what one member pays per period (in the price list's currency, EUR)
    period = "year"       # "month" or "year"
    members = 120         # current members, subsidized ones included
    extra_share = 0.2     # share of paying members who pay extra
    extra_amount = 5      # what they pay extra per period (default: one more dues)
    subsidized = 10       # memberships that pay nothing
    reserve_months = 3    # reserve target as months of cost (or reserve_amount = 100)
    reserve_balance = 40  # what the reserve holds now
    costs = "gross"       # "gross" (a co-op without VAT registration pays VAT) or "net"
    announce = false      # `fedi coop monthly` posts the funding status on the instance

Arithmetic, per month (a yearly due counts as a twelfth):

- paying members = members - subsidized; of them floor(paying x extra_share) pay the extra amount;
- income = paying x dues + extra payers x extra amount; funding = income / cost;
- members to cover = ceil(cost / (dues + extra_share x extra amount)): paying members needed;
- surplus = income - cost; each subsidized membership forgoes one member's dues, so the co-op can carry
  ``subsidized + floor(surplus / dues)`` subsidized memberships (never below 0) with the extra payers it has;
  any beyond that are unfunded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from provision.errors import ValidationError

PERIODS = {"month": 1, "year": 12}
KEYS = (
    "dues",
    "period",
    "members",
    "extra_share",
    "extra_amount",
    "subsidized",
    "reserve_months",
    "reserve_amount",
    "reserve_balance",
    "costs",
    "announce",
)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class CoopSettings:
    """The [coop] table of fedi.toml, validated."""

    dues: Decimal  # per member per period
    period: str = "year"  # month | year
    members: int = 0  # current members, subsidized ones included
    extra_share: Decimal = Decimal(0)  # 0..1: share of paying members who pay extra
    extra_amount: Decimal = Decimal(0)  # extra per period paid by each of them
    subsidized: int = 0  # memberships that pay nothing
    reserve_months: Decimal = Decimal(0)  # reserve target in months of cost (0 = none)
    reserve_amount: Decimal = Decimal(0)  # or as a fixed amount (0 = none)
    reserve_balance: Decimal = Decimal(0)  # what the reserve holds now
    costs: str = "gross"  # compare dues with gross (VAT included) or net costs
    announce: bool = False  # post the funding status on the instance from `fedi coop monthly`


def _number(raw: dict[str, Any], key: str, default: Any, *, integer: bool = False, at_most: Any = None) -> Any:
    value = raw.get(key, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        kind = "a whole number" if integer else "a number"
        raise ValidationError(f"coop/{key}", f"{value!r} must be {kind}")
    if not math.isfinite(value):  # TOML's nan and inf are floats
        raise ValidationError(f"coop/{key}", f"{value!r} must be a finite number")
    if value < 0:
        raise ValidationError(f"coop/{key}", f"{value!r} must not be negative")
    if at_most is not None and value > at_most:
        raise ValidationError(f"coop/{key}", f"{value!r} must be at most {at_most}")
    return value if integer else Decimal(str(value))


def parse_coop(raw: Any) -> CoopSettings:
    """Validate the [coop] table; every error names the bad key's path (``coop/dues: ...``)."""
    if raw is None or raw == {}:
        raise ValidationError("coop", "no [coop] table in fedi.toml; set at least coop.dues and coop.members")
    if not isinstance(raw, dict):
        raise ValidationError("coop", "must be a table")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValidationError(f"coop/{unknown[0]}", f"unknown key (known: {', '.join(KEYS)})")
    if "dues" not in raw:
        raise ValidationError("coop/dues", "is required: what one member pays per period, for example 5")
    dues = _number(raw, "dues", None)
    if dues <= 0:
        raise ValidationError("coop/dues", f"{raw['dues']!r} must be more than 0")
    period = raw.get("period", "year")
    if period not in PERIODS:
        raise ValidationError("coop/period", f"{period!r} is not one of {', '.join(PERIODS)}")
    members = _number(raw, "members", 0, integer=True)
    subsidized = _number(raw, "subsidized", 0, integer=True)
    if subsidized > members:
        raise ValidationError("coop/subsidized", f"{subsidized} is more than coop/members ({members})")
    if "reserve_months" in raw and "reserve_amount" in raw:
        raise ValidationError("coop/reserve_amount", "give the reserve target as reserve_months or reserve_amount")
    costs = raw.get("costs", "gross")
    if costs not in ("gross", "net"):
        raise ValidationError("coop/costs", f"{costs!r} is not one of gross, net")
    announce = raw.get("announce", False)
    if not isinstance(announce, bool):
        raise ValidationError("coop/announce", f"{announce!r} must be true or false")
    return CoopSettings(
        dues=dues,
        period=period,
        members=members,
        extra_share=_number(raw, "extra_share", 0, at_most=1),
        extra_amount=_number(raw, "extra_amount", raw["dues"]),
        subsidized=subsidized,
        reserve_months=_number(raw, "reserve_months", 0),
        reserve_amount=_number(raw, "reserve_amount", 0),
        reserve_balance=_number(raw, "reserve_balance", 0),
        costs=costs,
        announce=announce,
    )


@dataclass(frozen=True)
class DuesReport:
    """The co-op's funding, per month unless the name says otherwise."""

    currency: str
    costs: str  # gross | net
    period: str  # the dues period (month | year)
    cost_month: Decimal  # the instance's monthly cost
    dues_month: Decimal  # one member's dues, per month
    members: int
    subsidized: int
    paying: int  # members - subsidized
    extra_payers: int  # paying members who pay extra
    income_month: Decimal
    members_to_cover: int  # paying members (at the current extra share) the cost needs
    surplus_month: Decimal  # income - cost (negative: a shortfall)
    subsidy_capacity: int  # subsidized memberships the income carries
    subsidies_unfunded: int  # subsidized memberships beyond that
    funding_percent: Decimal  # income / cost (100 when there is nothing to pay)
    reserve_target: Decimal  # 0 = no target
    reserve_balance: Decimal
    reserve_percent: Decimal | None  # None without a target
    runway_months: Decimal | None  # months the reserve covers the shortfall; None without a shortfall
    source: str  # where the cost's prices come from
    subject: str = "The instance costs"  # "The co-op's 4 stacks cost" when dues cover a whole account

    def as_dict(self) -> dict[str, Any]:
        def money(v: Decimal) -> float:
            return float(v.quantize(CENT, rounding=ROUND_HALF_UP))

        months = PERIODS[self.period]
        return {
            "currency": self.currency,
            "costs": self.costs,
            "period": self.period,
            "cost_month": money(self.cost_month),
            "cost_per_period": money(self.cost_month * months),
            "dues_per_period": money(self.dues_month * months),
            "members": self.members,
            "subsidized": self.subsidized,
            "paying": self.paying,
            "extra_payers": self.extra_payers,
            "income_month": money(self.income_month),
            "income_per_period": money(self.income_month * months),
            "members_to_cover": self.members_to_cover,
            "surplus_month": money(self.surplus_month),
            "subsidy_capacity": self.subsidy_capacity,
            "subsidies_unfunded": self.subsidies_unfunded,
            "funding_percent": float(self.funding_percent.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)),
            "reserve_target": money(self.reserve_target),
            "reserve_balance": money(self.reserve_balance),
            "reserve_percent": None if self.reserve_percent is None else float(self.reserve_percent.quantize(CENT)),
            "runway_months": None if self.runway_months is None else float(self.runway_months.quantize(CENT)),
            "source": self.source,
        }

    def summary(self) -> str:
        """One paragraph for members: what it costs, who covers it, and how many it carries."""
        d = self.as_dict()
        cur, per = self.currency, self.period
        lines = [
            f"{self.subject} {d['cost_per_period']:.2f} {cur} a {per} ({self.costs}). "
            f"Dues of {d['dues_per_period']:.2f} {cur} a {per}: {self.members_to_cover} paying members cover it.",
            f"{self.members} members ({self.paying} paying, {self.extra_payers} of them extra; "
            f"{self.subsidized} subsidized) bring {d['income_per_period']:.2f} {cur} a {per}: "
            f"funded {d['funding_percent']:g}%.",
        ]
        if self.subsidies_unfunded:
            lines.append(f"{self.subsidies_unfunded} of the {self.subsidized} subsidized memberships are not funded.")
        else:
            lines.append(f"The dues carry {self.subsidy_capacity} subsidized memberships ({self.subsidized} in use).")
        if self.reserve_target:
            lines.append(
                f"Reserve: {d['reserve_balance']:.2f} of {d['reserve_target']:.2f} {cur} ({d['reserve_percent']:g}%)."
            )
        return "\n".join(lines)


def compute_dues(settings: CoopSettings, cost: Any) -> DuesReport:
    """``cost`` is a :class:`provision.billing.cost.CostBreakdown` or
    :class:`provision.billing.account.AccountBill` for a month.

    An account's bill is the co-op's total: every stack, the shared lines once.
    """
    cost_month = cost.total_gross if settings.costs == "gross" else cost.total_net
    months = PERIODS[settings.period]
    dues_m = settings.dues / months
    extra_m = settings.extra_amount / months
    paying = settings.members - settings.subsidized
    extra_payers = math.floor(paying * settings.extra_share)
    income = paying * dues_m + extra_payers * extra_m
    per_payer = dues_m + settings.extra_share * extra_m
    members_to_cover = math.ceil(cost_month / per_payer) if cost_month > 0 else 0
    surplus = income - cost_month
    capacity = max(0, settings.subsidized + math.floor(surplus / dues_m))
    funding = income / cost_month * 100 if cost_month > 0 else Decimal(100)
    target = settings.reserve_amount or settings.reserve_months * cost_month
    reserve_percent = settings.reserve_balance / target * 100 if target > 0 else None
    runway = settings.reserve_balance / -surplus if surplus < 0 else None
    return DuesReport(
        currency=cost.currency,
        costs=settings.costs,
        period=settings.period,
        cost_month=cost_month,
        dues_month=dues_m,
        members=settings.members,
        subsidized=settings.subsidized,
        paying=paying,
        extra_payers=extra_payers,
        income_month=income,
        members_to_cover=members_to_cover,
        surplus_month=surplus,
        subsidy_capacity=capacity,
        subsidies_unfunded=max(0, settings.subsidized - capacity),
        funding_percent=Decimal(funding),
        reserve_target=Decimal(target),
        reserve_balance=settings.reserve_balance,
        reserve_percent=reserve_percent,
        runway_months=runway,
        source=cost.source,
        subject=_subject(cost),
    )


def _subject(cost: Any) -> str:
    stacks = getattr(cost, "stacks", None)
    if stacks is None:
        return "The instance costs"
    return f"The co-op's {len(stacks)} stacks cost" if len(stacks) > 1 else "The co-op's stack costs"
