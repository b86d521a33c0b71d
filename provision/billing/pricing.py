"""What `fedi cost` and `fedi coop dues` price: the instance the flags and fedi.toml describe (no domain
or stack needed), one stack alone, or the account's bill with one stack's share of it."""

from __future__ import annotations

from typing import Any


def price_target(
    software: str | None, size: str | None, location: str | None, config: dict[str, Any]
) -> tuple[tuple[str, str, str], str]:
    """((size, app, location), provider) from the flags over fedi.toml, validated."""
    from provision import apps
    from provision.errors import ValidationError
    from provision.spec import CONFIG_FILE, LOCATIONS, PROVIDERS, SIZES, one_of

    merged = {k: config.get(k) for k in ("software", "size", "location", "provider")}
    merged.update({k: v for k, v in {"software": software, "size": size, "location": location}.items() if v})
    for key in ("software", "size"):
        if not merged.get(key):
            raise ValidationError(key, f"is required (pass --{key} or set {key} in {CONFIG_FILE})")
    app = apps.app_name(one_of("software", merged["software"], apps.software_names()))
    target = (
        one_of("size", merged["size"], tuple(SIZES)),
        app,
        one_of("location", merged.get("location") or "fsn1", tuple(LOCATIONS)),
    )
    return target, one_of("provider", merged.get("provider") or "hetzner", PROVIDERS)


def target_cost(target: tuple[str, str, str], provider: str, **options: Any) -> Any:
    """One instance's monthly cost: a local machine has no cloud costs."""
    from provision.billing.cost import CostBreakdown, monthly_cost

    if provider == "local":
        size, app, location = target
        labels = {"size": size, "app": app, "location": location}
        return CostBreakdown((), "EUR", "local", "a local machine: no cloud costs", None, labels)
    return monthly_cost(target, **options)


def bill(members: list[Any], backups: bool, storage_tb: float | None, no_object_storage: bool) -> Any:
    """The account's bill for ``members`` at today's (or the table's) prices."""
    from provision.billing.account import account_bill
    from provision.billing.cost import load_prices

    return account_bill(
        members, load_prices(), object_storage=not no_object_storage, stored_tb=storage_tb, hetzner_backups=backups
    )


def stack_view(account_bill: Any, name: str, why: str = "") -> tuple[dict[str, Any], str]:
    """One stack's lines and share (JSON and text), with the account's total beside them."""
    data = account_bill.breakdown(name).as_dict() | {
        "account": {
            "stacks": [s.member.stack for s in account_bill.stacks],
            "total_net": float(round(account_bill.total_net, 2)),
            "total_gross": float(round(account_bill.total_gross, 2)),
            "share_rule": account_bill.rule,
        },
        "account_note": why,
    }
    return data, account_bill.stack_text(name) + (f"\naccount: {why}" if why else "")
