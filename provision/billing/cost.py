"""What a stack costs a month: Hetzner's live price list when a token is at hand, else a dated table.

Prices come, in this order, from:

1. Hetzner Cloud's ``GET /v1/pricing`` (with ``HCLOUD_TOKEN``), cached with its date under
   ``paths.cache_dir()`` for a day;
2. that cache, whatever its age, when no token is set or the API cannot be reached;
3. ``provision/data/prices.json``, a table in the exact shape of the API's answer that states the date
   of its prices ("offline: prices from the table of <date>").

Every resource a stack creates is priced: the server type in its location, Hetzner's own backups
(a percentage of the server) when enabled, the primary IPv4 and IPv6, the data volume per GB, and
Object Storage (a monthly base that includes 1 TB stored and 1 TB egress, then per TB). Object Storage
is not in ``/v1/pricing``; its price always comes from the table. Money is ``Decimal``: EUR, net and gross.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from provision.errors import UsageError
from provision.timestamps import epoch, utc_iso

TABLE = Path(__file__).resolve().parents[1] / "data" / "prices.json"
CACHE_NAME = "hetzner-pricing.json"
CACHE_MAX_AGE = timedelta(hours=24)
TIMEOUT_S = 10.0  # one bounded request; on failure fedi falls back, never retries in a loop
HOURS_PER_MONTH = Decimal(730)  # 8760 / 12: spreads a monthly price over hours where Hetzner gives no hourly one
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Price:
    """An amount with and without VAT, in the price list's currency."""

    net: Decimal
    gross: Decimal

    @classmethod
    def of(cls, raw: dict[str, str]) -> Price:
        return cls(Decimal(raw["net"]), Decimal(raw["gross"]))

    def __mul__(self, factor: Decimal | int) -> Price:
        f = Decimal(factor)
        return Price(self.net * f, self.gross * f)

    def __add__(self, other: Price) -> Price:
        return Price(self.net + other.net, self.gross + other.gross)

    def __sub__(self, other: Price) -> Price:
        return Price(self.net - other.net, self.gross - other.gross)

    def min(self, cap: Price) -> Price:
        return Price(min(self.net, cap.net), min(self.gross, cap.gross))


ZERO = Price(Decimal(0), Decimal(0))


@dataclass(frozen=True)
class PriceList:
    """One price list: the API's ``pricing`` object plus the Object Storage prices from the table."""

    pricing: dict[str, Any]  # the ``pricing`` object exactly as GET /v1/pricing returns it
    object_storage: dict[str, Any]  # base_monthly, included_storage_tb, price_per_tb_month (table only)
    source: str  # "hetzner-api 2026-11-28" | "table 2026-05-27"
    note: str = ""  # said to the user: "offline: prices from the table of ..."
    unconfirmed: tuple[tuple[str, str], ...] = ()  # (item, why) from the table's _unconfirmed list

    def unconfirmed_for(self, names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """``"item: why"`` for every unconfirmed figure that one of the line ``names`` uses."""
        return tuple(f"{item}: {why}" for item, why in self.unconfirmed if any(n.startswith(item) for n in names))

    @property
    def currency(self) -> str:
        return str(self.pricing["currency"])

    def server(self, server_type: str, location: str) -> tuple[Price, Price]:
        """(monthly, hourly) price of a server type in a location."""
        for entry in self.pricing["server_types"]:
            if entry["name"] != server_type:
                continue
            for price in entry["prices"]:
                if price["location"] == location:
                    return Price.of(price["price_monthly"]), Price.of(price["price_hourly"])
            offered = ", ".join(p["location"] for p in entry["prices"]) or "nowhere"
            raise UsageError(f"location: server type {server_type} is not offered in {location} (only {offered})")
        raise UsageError(f"server type {server_type} is not in the price list ({self.source})")

    def primary_ip(self, kind: str, location: str) -> tuple[Price, Price]:
        for entry in self.pricing["primary_ips"]:
            if entry["type"] == kind:
                for price in entry["prices"]:
                    if price.get("location") == location:
                        return Price.of(price["price_monthly"]), Price.of(price["price_hourly"])
        raise UsageError(f"no primary {kind} price for {location} in the price list ({self.source})")

    def volume_gb(self) -> Price:
        return Price.of(self.pricing["volume"]["price_per_gb_month"])

    def backup_share(self) -> Decimal:
        return Decimal(self.pricing["server_backup"]["percentage"]) / 100


@dataclass(frozen=True)
class CostLine:
    name: str  # what is billed: "server cx23 (fsn1)"
    quantity: Decimal  # how many units
    unit: str  # "month", "GB-month", "TB-month", "% of server"
    unit_price: Price  # per unit and month
    amount: Price  # for the breakdown's period (a month, or the hours of an ephemeral stack)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "quantity": float(self.quantity),
            "unit": self.unit,
            "unit_net": float(self.unit_price.net.quantize(Decimal("0.0001"))),
            "unit_gross": float(self.unit_price.gross.quantize(Decimal("0.0001"))),
            "net": _cents(self.amount.net),
            "gross": _cents(self.amount.gross),
        }


@dataclass(frozen=True)
class CostBreakdown:
    """The cost of one stack, line by line, for a month (or for an ephemeral stack's hours)."""

    lines: tuple[CostLine, ...]
    currency: str  # EUR
    source: str  # "hetzner-api <date>" | "table <date>" | "local"
    note: str = ""  # e.g. "offline: prices from the table of 2026-05-27"
    hours: float | None = None  # None = a month; else the hours of an ephemeral stack
    labels: dict[str, str] = field(default_factory=dict, compare=False)  # size, app, location, server type
    unconfirmed: tuple[str, ...] = ()  # "item: why" for figures of the table no published source confirms

    @property
    def total(self) -> Price:
        return sum((line.amount for line in self.lines), ZERO)

    @property
    def total_net(self) -> Decimal:
        return self.total.net

    @property
    def total_gross(self) -> Decimal:
        return self.total.gross

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": [line.as_dict() for line in self.lines],
            "total_net": _cents(self.total_net),
            "total_gross": _cents(self.total_gross),
            "currency": self.currency,
            "source": self.source,
            "note": self.note,
            "period": "month" if self.hours is None else f"{self.hours:g} hours",
            "unconfirmed": list(self.unconfirmed),
            **self.labels,
        }

    def text(self) -> str:
        """The breakdown as a small table for people."""
        period = "a month" if self.hours is None else f"{self.hours:g} hours"
        rows = [f"{'item':<50} {'qty':>8} {'net':>10} {'gross':>10}"]
        for line in self.lines:
            qty = f"{line.quantity.normalize():f}"
            rows.append(f"{line.name:<50} {qty:>8} {_money(line.amount.net):>10} {_money(line.amount.gross):>10}")
        rows.append(
            f"{'total (' + period + ', ' + self.currency + ')':<59} "
            f"{_money(self.total_net):>10} {_money(self.total_gross):>10}"
        )
        rows.append(f"prices: {self.source}" + (f" ({self.note})" if self.note else ""))
        rows += [f"unconfirmed: {item}" for item in self.unconfirmed]
        return "\n".join(rows)


@dataclass(frozen=True)
class CostDifference:
    """What a resize changes in the monthly cost (new minus old)."""

    old: CostBreakdown
    new: CostBreakdown

    @property
    def delta(self) -> Price:
        return self.new.total - self.old.total

    def as_dict(self) -> dict[str, Any]:
        return {
            "old_total_gross": _cents(self.old.total_gross),
            "new_total_gross": _cents(self.new.total_gross),
            "difference_net": _cents(self.delta.net),
            "difference_gross": _cents(self.delta.gross),
            "currency": self.new.currency,
            "source": self.new.source,
        }

    def text(self) -> str:
        sign = "+" if self.delta.gross >= 0 else "-"
        return (
            f"monthly cost {_money(self.old.total_gross)} -> {_money(self.new.total_gross)} {self.new.currency} gross "
            f"({sign}{_money(abs(self.delta.gross))}; net {sign}{_money(abs(self.delta.net))})"
        )


def _cents(value: Decimal) -> float:
    return float(value.quantize(CENT, rounding=ROUND_HALF_UP))


def _money(value: Decimal) -> str:
    return f"{value.quantize(CENT, rounding=ROUND_HALF_UP):.2f}"


# ---- where the prices come from -------------------------------------------------------------------


def _table() -> dict[str, Any]:
    return json.loads(TABLE.read_text(encoding="utf-8"))


def _unconfirmed(table: dict[str, Any], *, only_object_storage: bool = False) -> tuple[tuple[str, str], ...]:
    """The table's ``_unconfirmed`` list; with live prices only Object Storage still comes from the table."""
    items = tuple((str(e["item"]), str(e["why"])) for e in table.get("_unconfirmed", []))
    return tuple(i for i in items if i[0].startswith("object storage")) if only_object_storage else items


def table_prices(note: str = "") -> PriceList:
    table = _table()
    date = table["_date"]
    return PriceList(
        table["pricing"],
        table["object_storage"],
        f"table {date}",
        note or f"offline: prices from the table of {date}",
        _unconfirmed(table),
    )


def _check_pricing(data: Any) -> dict[str, Any]:
    pricing = data.get("pricing") if isinstance(data, dict) else None
    needed = ("currency", "server_types", "primary_ips", "volume", "server_backup")
    if not isinstance(pricing, dict) or any(k not in pricing for k in needed):
        raise ValueError("the answer has no pricing object with server_types, primary_ips, volume, server_backup")
    return pricing


def fetch_pricing(token: str, base_url: str | None = None, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """One GET of ``{base_url}/pricing`` with the token as a Bearer header. Returns the ``pricing`` object."""
    from provision.providers.hetzner.api import Api

    with Api(token, url=base_url, timeout=timeout) as api:
        response = api.get("/pricing")
    if response.status_code == 401:
        raise ValueError("the API refused HCLOUD_TOKEN (401 Unauthorized)")
    if response.status_code != 200:
        raise ValueError(f"the API answered {response.status_code}")
    return _check_pricing(response.json())


def _cache_path() -> Path:
    from provision.paths import cache_dir

    return cache_dir() / CACHE_NAME


def _read_cache() -> tuple[dict[str, Any], datetime] | None:
    path = _cache_path()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        return _check_pricing(cached), datetime.fromtimestamp(epoch(cached["fetched_at"]), UTC)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(pricing: dict[str, Any], fetched_at: datetime) -> None:
    from provision.paths import write_atomic

    path = _cache_path()
    write_atomic(path, json.dumps({"fetched_at": utc_iso(fetched_at.timestamp()), "pricing": pricing}), mode=0o644)


def load_prices(
    *,
    token: str | None = None,
    base_url: str | None = None,
    now: datetime | None = None,
    max_age: timedelta = CACHE_MAX_AGE,
) -> PriceList:
    """The best price list at hand: fresh cache, live API (then cached), stale cache, the table.

    ``token`` defaults to $HCLOUD_TOKEN and ``base_url`` to $FEDI_HCLOUD_API or Hetzner's API.
    Never raises for a network problem: the answer says where its prices come from instead.
    """
    token = token if token is not None else os.environ.get("HCLOUD_TOKEN", "")
    now = now or datetime.now(UTC)
    table = _table()
    live_unconfirmed = _unconfirmed(table, only_object_storage=True)
    cached = _read_cache()
    if cached and now - cached[1] < max_age:
        api = f"hetzner-api {cached[1].date()}"
        return PriceList(cached[0], table["object_storage"], api, "cached", live_unconfirmed)
    reason = "no HCLOUD_TOKEN"
    if token:
        try:
            pricing = fetch_pricing(token, base_url)
        except Exception as exc:  # noqa: BLE001 - any failure here means "use what we have"
            reason = f"live prices unavailable: {_reason(exc)}"
        else:
            _write_cache(pricing, now)
            return PriceList(pricing, table["object_storage"], f"hetzner-api {now.date()}", "", live_unconfirmed)
    if cached:
        return PriceList(
            cached[0], table["object_storage"], f"hetzner-api {cached[1].date()}", f"cached; {reason}", live_unconfirmed
        )
    return table_prices(f"offline: prices from the table of {table['_date']}" + ("" if not token else f"; {reason}"))


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


# ---- the model ----------------------------------------------------------------------------------------


def _period(monthly: Price, hourly: Price | None, hours: float | None) -> Price:
    """A month, or ``hours`` billed hourly (each started hour counts) and capped at the monthly price."""
    if hours is None:
        return monthly
    started = Decimal(math.ceil(hours))
    per_hour = hourly if hourly is not None else Price(monthly.net / HOURS_PER_MONTH, monthly.gross / HOURS_PER_MONTH)
    return (per_hour * started).min(monthly)


def _gross(prices: PriceList, net: Decimal) -> Price:
    return Price(net, net * (1 + Decimal(prices.pricing.get("vat_rate", "0")) / 100))


def monthly_cost(
    target: Any,
    sizing: Any = None,
    *,
    ephemeral_hours: float | None = None,
    object_storage: bool = True,
    object_storage_tb: float = 1.0,
    hetzner_backups: bool = False,
    prices: PriceList | None = None,
) -> CostBreakdown:
    """The monthly cost of a stack: ``target`` is an InstanceSpec or a (size, app, location) tuple.

    ``ephemeral_hours``: price that many hours instead of a month (Hetzner bills started hours, capped
    at the monthly price). A spec on the local provider costs nothing and says so.
    """
    from provision.sizing import size_for

    if isinstance(target, tuple):
        size, app, location = target
        provider = "hetzner"
    else:
        size, app, location, provider = target.size, target.app, target.location, target.provider
        if ephemeral_hours is None and target.ephemeral:
            ephemeral_hours = target.ttl_hours
    sizing = sizing or size_for(size, app)
    labels = {"size": size, "app": app, "location": location, "server_type": sizing.server.name}
    if provider == "local":
        return CostBreakdown((), "EUR", "local", "a local machine: no cloud costs", ephemeral_hours, labels)
    if ephemeral_hours is not None and ephemeral_hours <= 0:
        raise UsageError("ttl: an ephemeral stack's hours must be positive")
    prices = prices or load_prices()
    lines: list[CostLine] = []

    def add(name: str, qty: Decimal | int, unit: str, unit_price: Price, hourly: Price | None = None) -> None:
        q = Decimal(qty)
        lines.append(
            CostLine(name, q, unit, unit_price, _period(unit_price * q, hourly and hourly * q, ephemeral_hours))
        )

    server_month, server_hour = prices.server(sizing.server.name, location)
    add(f"server {sizing.server.name} ({location})", 1, "month", server_month, server_hour)
    if hetzner_backups:
        share = prices.backup_share()
        name = f"Hetzner backups ({(share * 100).normalize():f}% of server)"
        add(name, 1, "month", server_month * share, server_hour * share)
    for kind in ("ipv4", "ipv6"):
        ip_month, ip_hour = prices.primary_ip(kind, location)
        add(f"primary {'IPv4' if kind == 'ipv4' else 'IPv6'}", 1, "month", ip_month, ip_hour)
    add(f"volume {sizing.volume_gb} GB", sizing.volume_gb, "GB-month", prices.volume_gb())
    if object_storage:
        store = prices.object_storage
        add(
            f"object storage (incl. {store['included_storage_tb']} TB stored, {store['included_egress_tb']} TB egress)",
            1,
            "month",
            _gross(prices, Decimal(store["base_monthly"]["net"])),
        )
        extra_tb = Decimal(str(object_storage_tb)) - Decimal(store["included_storage_tb"])
        if extra_tb > 0:
            add(
                "object storage, further TB stored",
                extra_tb,
                "TB-month",
                _gross(prices, Decimal(store["price_per_tb_month"]["net"])),
            )
    unconfirmed = prices.unconfirmed_for([line.name for line in lines])
    return CostBreakdown(
        tuple(lines), prices.currency, prices.source, prices.note, ephemeral_hours, labels, unconfirmed
    )


def resize_difference(old: CostBreakdown, new: CostBreakdown) -> CostDifference:
    """What a resize from ``old`` to ``new`` changes a month (both from the same price list)."""
    if old.currency != new.currency:
        raise UsageError(f"cannot compare costs in {old.currency} and {new.currency}")
    return CostDifference(old, new)
