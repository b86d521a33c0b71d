"""The data of a billing event: what the co-op's books hear of a stack (see provision.billing.hooks)."""

from __future__ import annotations

from typing import Any


def event_data(
    spec: Any, outputs: Any = None, cost: Any = None, *, previous_size: str | None = None, account: Any = None
) -> dict[str, Any]:
    """The ``data`` of a billing event: the stack, its size, the cost breakdown and the dues figures.

    Holds nothing secret: names, sizes, prices and public addresses only. The dues figures need a
    monthly cost and a valid [coop] table; otherwise ``dues`` is null and ``dues_error`` says why.
    With ``account`` (an :class:`provision.billing.account.AccountBill`; the cost.monthly event), ``cost`` is the
    stack's own lines plus its share of the shared lines, ``account`` the account's whole bill, and the
    dues are figured on the account's total (``dues_basis``: "account"), as `fedi coop dues` does.
    """
    from provision.billing.dues import compute_dues, parse_coop
    from provision.errors import FediError

    data: dict[str, Any] = {
        "stack": spec.stack_name,
        "domain": spec.domain,
        "software": spec.software,
        "app": spec.app,
        "size": spec.size,
        "location": spec.location,
        "provider": spec.provider,
        "ephemeral": spec.ephemeral,
    }
    if previous_size:
        data["previous_size"] = previous_size
    if outputs is not None:
        data["server_type"] = outputs.server_type
        data["ipv4"], data["ipv6"] = outputs.ipv4, outputs.ipv6
    data["cost"] = cost.as_dict() if cost is not None else None
    data["dues"] = None
    if account is not None:
        data["account"] = account.as_dict()
        data["dues_basis"] = "account"
    coop = (spec.extra or {}).get("coop")
    if coop and cost is not None and getattr(cost, "hours", None) is None:
        try:
            data["dues"] = compute_dues(parse_coop(coop), account if account is not None else cost).as_dict()
        except FediError as err:
            data["dues_error"] = err.line()
    return data
