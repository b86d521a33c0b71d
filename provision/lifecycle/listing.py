"""`fedi stacks`: one row per stack, with its age and monthly cost (what the command prints, as data)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from provision.timestamps import epoch


def stack_rows(summaries: list[Any], now: float) -> list[dict[str, Any]]:
    """The rows `fedi stacks` prints for ``summaries`` (StackSummary): a local stack costs nothing."""
    from provision import apps
    from provision.billing.cost import monthly_cost

    rows = []
    for s in summaries:
        created = epoch(s.created)
        age_h = (now - created) / 3600 if created else None
        cost = None
        if s.size and s.software and s.provider != "local":
            location = getattr(s, "location", "") or "fsn1"
            cost = monthly_cost((s.size, apps.app_name(s.software), location))
        rows.append(
            {
                "stack": s.stack,
                "provider": s.provider,
                "software": s.software,
                "size": s.size,
                "domain": s.domain,
                "created": s.created,
                "age_hours": round(age_h, 1) if age_h is not None else None,
                "ephemeral": s.ephemeral,
                "expires": s.expires,
                "production": s.production,
                "monthly_gross": float(cost.total_gross.quantize(Decimal("0.01"))) if cost else 0.0,
                "currency": cost.currency if cost else "EUR",
            }
        )
    return rows


def stack_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'stack':<32} {'software':<9} {'size':<7} {'domain':<32} {'age':>7} {'EUR/month':>10}"]
    for r in rows:
        age = f"{r['age_hours']:.0f}h" if r["age_hours"] is not None else "?"
        lines.append(
            f"{r['stack']:<32} {r['software']:<9} {r['size']:<7} {r['domain']:<32} {age:>7} {r['monthly_gross']:>10.2f}"
        )
    return "\n".join(lines) if rows else "no stacks"
