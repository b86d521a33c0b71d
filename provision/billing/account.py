"""The bill as Hetzner sends it: one account, its stacks, and the lines billed once per account.

Hetzner bills some things per account, not per stack: Object Storage's base price (with its free quota
of 1 TB stored and 1 TB egress) is charged on the account's total usage "regardless of how many Buckets
you have" (docs.hetzner.com/storage/object-storage/overview), and storage beyond that quota is measured
over the whole account too. Pricing it on every stack overstates what a co-op of several stacks pays.

So a bill is made of:

- each stack's **own lines** (server, backups, primary IPs, volume): :func:`provision.billing.cost.monthly_cost`
  without Object Storage;
- the account's **shared lines** (Object Storage base, further TB stored), priced once;
- each stack's **share** of every shared line, by a rule the bill states: by stored bytes when every stack's
  are known (``[account] stored_gb`` in fedi.toml), else even shares. Shares are cut by the largest
  remainder method, so they add up to the shared line's cents exactly.

Every amount is in cents, net and gross per line (gross from the price list, as the single-stack view
computes it); the invoice total is the sum of the lines: net, VAT (gross - net), gross.

Which stacks share the account, and what each stores: :mod:`provision.billing.account_stacks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from provision.billing.account_stacks import GB, Member
from provision.billing.cost import CENT, ZERO, CostBreakdown, CostLine, Price, PriceList, monthly_cost
from provision.errors import ValidationError

# ---- arithmetic ---------------------------------------------------------------------------------------


def split_cents(total: Decimal, weights: list[int] | list[Decimal]) -> list[Decimal]:
    """``total`` (a whole number of cents, as Decimal EUR) cut in proportion to ``weights``.

    Largest remainder: everyone gets the floor of their quota in cents, and the cents left go one each to
    the largest fractional parts (ties to the earlier stack). The parts always add up to ``total``;
    all-zero weights mean even shares.
    """
    if not weights:
        return []
    cents = int((total / CENT).to_integral_value(rounding=ROUND_HALF_UP))
    w = [Decimal(x) for x in weights]
    if any(x < 0 for x in w):
        raise ValueError("weights must not be negative")
    if sum(w) == 0:
        w = [Decimal(1)] * len(w)
    whole = sum(w)
    quotas = [Decimal(cents) * x / whole for x in w]
    floors = [int(q.to_integral_value(rounding=ROUND_FLOOR)) for q in quotas]
    left = cents - sum(floors)
    order = sorted(range(len(w)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return [Decimal(f) * CENT for f in floors]


def _round(price: Price) -> Price:
    return Price(price.net.quantize(CENT, rounding=ROUND_HALF_UP), price.gross.quantize(CENT, rounding=ROUND_HALF_UP))


def _in_cents(line: CostLine) -> CostLine:
    return CostLine(line.name, line.quantity, line.unit, line.unit_price, _round(line.amount))


# ---- the bill -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackBill:
    """One stack: its own lines and its share of each shared line (amounts in cents)."""

    member: Member
    own: tuple[CostLine, ...]
    shares: tuple[CostLine, ...]  # one per shared line of the account, same order
    weight: Decimal  # the stack's fraction of the shared lines (0..1)

    @property
    def lines(self) -> tuple[CostLine, ...]:
        return self.own + self.shares

    @property
    def total(self) -> Price:
        return sum((line.amount for line in self.lines), ZERO)


@dataclass(frozen=True)
class AccountBill:
    """The account's month as the invoice shows it: every stack, the shared lines once, the total."""

    stacks: tuple[StackBill, ...]
    shared: tuple[CostLine, ...]
    rule: str  # how the shared lines are shared, said to the user
    currency: str
    source: str  # where the prices come from
    note: str = ""
    unconfirmed_items: tuple[tuple[str, str], ...] = ()  # the price list's (item, why) pairs

    @property
    def total(self) -> Price:
        return sum((s.total for s in self.stacks), ZERO) if self.stacks else ZERO

    def _unconfirmed(self, names: list[str]) -> tuple[str, ...]:
        return tuple(f"{i}: {why}" for i, why in self.unconfirmed_items if any(n.startswith(i) for n in names))

    @property
    def unconfirmed(self) -> tuple[str, ...]:
        """ "item: why" for every figure of the bill that no published source confirms."""
        return self._unconfirmed([x.name for s in self.stacks for x in s.own] + [x.name for x in self.shared])

    def stack_unconfirmed(self, name: str) -> tuple[str, ...]:
        return self._unconfirmed([x.name for x in self.stack(name).own] + [x.name for x in self.shared])

    @property
    def total_net(self) -> Decimal:
        return self.total.net

    @property
    def total_gross(self) -> Decimal:
        return self.total.gross

    @property
    def vat(self) -> Decimal:
        return self.total_gross - self.total_net

    def stack(self, name: str) -> StackBill:
        for s in self.stacks:
            if s.member.stack == name:
                return s
        raise KeyError(name)

    def breakdown(self, name: str) -> CostBreakdown:
        """One stack's view: its own lines and its share, as a :class:`CostBreakdown` (dues, events)."""
        s = self.stack(name)
        m = s.member
        labels = {
            "stack": m.stack,
            "size": m.size,
            "app": m.app,
            "location": m.location,
            "server_type": _server_type(m),
            "share_rule": self.rule,
            "account_stacks": str(len(self.stacks)),
        }
        unconfirmed = self.stack_unconfirmed(name)
        return CostBreakdown(s.lines, self.currency, self.source, self.note, None, labels, unconfirmed)

    def as_dict(self) -> dict[str, Any]:
        def money(v: Decimal) -> float:
            return float(v.quantize(CENT, rounding=ROUND_HALF_UP))

        return {
            "stacks": [
                {
                    "stack": s.member.stack,
                    "size": s.member.size,
                    "app": s.member.app,
                    "location": s.member.location,
                    "planned": s.member.planned,
                    "stored_bytes": s.member.stored_bytes,
                    "share": float(s.weight.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)),
                    "lines": [line.as_dict() for line in s.own],
                    "shares": [line.as_dict() for line in s.shares],
                    "total_net": money(s.total.net),
                    "total_gross": money(s.total.gross),
                }
                for s in self.stacks
            ],
            "shared": [line.as_dict() for line in self.shared],
            "share_rule": self.rule,
            "total_net": money(self.total_net),
            "vat": money(self.vat),
            "total_gross": money(self.total_gross),
            "currency": self.currency,
            "source": self.source,
            "note": self.note,
            "unconfirmed": list(self.unconfirmed),
            "period": "month",
        }

    def text(self) -> str:
        """The whole bill for people: each stack's lines, the shared lines once, the invoice total."""
        rows = [_row("item", "net", "gross")]
        for s in self.stacks:
            m = s.member
            rows.append(f"{m.stack}{' (planned)' if m.planned else ''}: {m.app} {m.size}")
            rows += [_row(f"  {line.name}", line.amount.net, line.amount.gross) for line in s.own]
        if self.shared:
            rows.append("shared by the account")
            rows += [_row(f"  {line.name}", line.amount.net, line.amount.gross) for line in self.shared]
        rows.append(_row(f"total (a month, {self.currency})", self.total_net, self.total_gross))
        rows.append(_row("  of which VAT", "", self.vat))
        if self.shared:
            rows.append(f"shared lines: {self.rule}")
        rows.append("per stack, with its share")
        rows += [_row(f"  {s.member.stack}", s.total.net, s.total.gross) for s in self.stacks]
        rows.append(f"prices: {self.source}" + (f" ({self.note})" if self.note else ""))
        rows += [f"unconfirmed: {item}" for item in self.unconfirmed]
        return "\n".join(rows)

    def stack_text(self, name: str) -> str:
        """One stack's lines and its share, with the rule and the account's total."""
        s = self.stack(name)
        rows = [_row("item", "net", "gross")]
        rows += [_row(line.name, line.amount.net, line.amount.gross) for line in s.lines]
        rows.append(_row(f"total (a month, {self.currency})", s.total.net, s.total.gross))
        if self.shared:
            rows.append(f"shared lines: {self.rule}")
        if len(self.stacks) > 1:
            rows.append(
                f"the account ({len(self.stacks)} stacks) pays {_money(self.total_net)} net, "
                f"{_money(self.total_gross)} gross a month (fedi cost --all)"
            )
        rows.append(f"prices: {self.source}" + (f" ({self.note})" if self.note else ""))
        rows += [f"unconfirmed: {item}" for item in self.stack_unconfirmed(name)]
        return "\n".join(rows)


def _row(name: str, net: Decimal | str, gross: Decimal | str) -> str:
    def cell(v: Decimal | str) -> str:
        return v if isinstance(v, str) else _money(v)

    return f"{name:<56} {cell(net):>10} {cell(gross):>10}"


def _money(value: Decimal) -> str:
    return f"{value.quantize(CENT, rounding=ROUND_HALF_UP):.2f}"


def _server_type(member: Member) -> str:
    from provision.sizing import TIERS

    return TIERS[member.size][0]


def shared_lines(prices: PriceList, stored_tb: Decimal) -> tuple[CostLine, ...]:
    """The lines Hetzner bills once per account: Object Storage's base and storage beyond its quota."""
    store = prices.object_storage
    vat = 1 + Decimal(prices.pricing.get("vat_rate", "0")) / 100

    def price(raw: dict[str, str]) -> Price:
        net = Decimal(raw["net"])
        return Price(net, net * vat)

    base = price(store["base_monthly"])
    included = f"{store['included_storage_tb']} TB stored, {store['included_egress_tb']} TB egress"
    name = f"object storage base (incl. {included})"
    lines = [CostLine(name, Decimal(1), "month", base, _round(base))]
    extra = stored_tb - Decimal(store["included_storage_tb"])
    if extra > 0:
        per_tb = price(store["price_per_tb_month"])
        lines.append(CostLine("object storage, further TB stored", extra, "TB-month", per_tb, _round(per_tb * extra)))
    return tuple(lines)


def account_bill(
    members: list[Member],
    prices: PriceList,
    *,
    object_storage: bool = True,
    stored_tb: float | Decimal | None = None,
    hetzner_backups: bool = False,
) -> AccountBill:
    """Price ``members`` as one Hetzner account: own lines per stack, shared lines once, shares exact.

    ``stored_tb``: the account's Object Storage use when the stacks' stored bytes are not all known
    (default: within the included quota).
    """
    if not members:
        raise ValidationError("account", "has no Hetzner stacks to price")
    names = [m.stack for m in members]
    if len(set(names)) != len(names):
        raise ValidationError("account/stacks", "names a stack twice")
    own: list[tuple[CostLine, ...]] = []
    for m in members:
        b = monthly_cost(
            (m.size, m.app, m.location), object_storage=False, hetzner_backups=hetzner_backups, prices=prices
        )
        own.append(tuple(_in_cents(line) for line in b.lines))
    known = all(m.stored_bytes is not None for m in members)
    stored_total = sum(m.stored_bytes or 0 for m in members)
    if known and stored_total > 0:
        weights: list[int] = [m.stored_bytes or 0 for m in members]
        rule = "by stored bytes (" + ", ".join(f"{m.stack} {(m.stored_bytes or 0) / GB:g} GB" for m in members) + ")"
        total_tb = Decimal(stored_total) / Decimal(10**12)
    else:
        weights = [1] * len(members)
        rule = f"even shares, 1/{len(members)} each" if len(members) > 1 else "one stack: all of it"
        total_tb = Decimal(str(stored_tb)) if stored_tb is not None else Decimal(0)
    shared = shared_lines(prices, total_tb) if object_storage else ()
    cut: list[list[CostLine]] = [[] for _ in members]
    for line in shared:
        nets = split_cents(line.amount.net, weights)
        grosses = split_cents(line.amount.gross, weights)
        for i in range(len(members)):
            cut[i].append(
                CostLine(
                    f"share of {line.name.split(' (')[0]}",
                    line.quantity,
                    "share",
                    line.unit_price,
                    Price(nets[i], grosses[i]),
                )
            )
    whole = Decimal(sum(weights))
    stacks = tuple(StackBill(m, own[i], tuple(cut[i]), Decimal(weights[i]) / whole) for i, m in enumerate(members))
    return AccountBill(stacks, shared, rule, prices.currency, prices.source, prices.note, prices.unconfirmed)
