"""`fedi sweep`: destroy ephemeral stacks past their expiry, and orphaned ephemeral cloud resources.

Two sources, one rule: only what carries fedi's ephemeral labels (``managed-by=fedi``,
``fedi-ephemeral=true``) and an expiry in the past is ever touched. Stacks come from the state
backend (their outputs say ephemeral/expires/production); orphans come from the Hetzner API with a
label selector, and every item is checked again on this side before it is deleted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from provision.errors import ProvisionError
from stacks.config import label_value

SELECTOR = "managed-by=fedi,fedi-ephemeral=true"
# Deletion order: servers first (that detaches volumes, unassigns primary IPs, unapplies firewalls).
KINDS = ("servers", "volumes", "primary_ips", "firewalls", "ssh_keys")
MAX_PAGES = 20  # 50 per page: 1000 resources of a kind is far beyond a fedi project; bounded either way


@dataclass(frozen=True)
class SweepItem:
    kind: str  # stack | servers | volumes | primary_ips | firewalls | ssh_keys
    name: str
    id: str  # cloud id ('' for stacks)
    expires: int  # unix time
    action: str  # destroyed | would destroy | failed: <why>

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "id": self.id, "expires": self.expires, "action": self.action}


def _epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()) if iso else 0


def is_sweepable(labels: dict[str, str], now: float) -> bool:
    """True only for fedi's ephemeral resources whose expiry has passed."""
    expires = labels.get("fedi-expires", "")
    return (
        labels.get("managed-by") == "fedi"
        and labels.get("fedi-ephemeral") == "true"
        and expires.isdigit()
        and int(expires) <= now
    )


def sweep_stacks(provider: Any, now: float, *, dry_run: bool, progress: Callable[[str], None]) -> list[SweepItem]:
    from provision import lifecycle

    items = []
    for s in provider.stacks():
        expires = _epoch(s.expires)
        if not s.ephemeral or s.production or not expires or expires > now:
            continue
        if dry_run:
            items.append(SweepItem("stack", s.stack, "", expires, "would destroy"))
            continue
        try:
            lifecycle.down(s.stack, provider, progress, purge_backups=True, skip_backup=True)
            items.append(SweepItem("stack", s.stack, "", expires, "destroyed"))
        except ProvisionError as err:
            items.append(SweepItem("stack", s.stack, "", expires, f"failed: {err.line()}"))
    return items


def find_orphans(client: Any, base: str, token: str, known_stacks: set[str], now: float) -> list[SweepItem]:
    """Expired ephemeral resources at Hetzner whose stack is not in the backend any more."""
    known = {label_value(s) for s in known_stacks}
    found = []
    for kind in KINDS:
        for page in range(1, MAX_PAGES + 1):
            reply = client.get(
                f"{base}/{kind}",
                params={"label_selector": SELECTOR, "page": page, "per_page": 50},
                headers={"Authorization": f"Bearer {token}"},
            )
            if reply.status_code != 200:
                raise ProvisionError(f"the Hetzner API answered {reply.status_code} listing {kind}")
            body = reply.json()
            for item in body.get(kind, []):
                labels = item.get("labels") or {}
                if not is_sweepable(labels, now) or labels.get("fedi-stack") in known:
                    continue
                found.append(SweepItem(kind, item.get("name", ""), str(item["id"]), int(labels["fedi-expires"]), ""))
            if not (body.get("meta", {}).get("pagination", {}) or {}).get("next_page"):
                break
    return found


def delete_orphans(client: Any, base: str, token: str, orphans: list[SweepItem], *, dry_run: bool) -> list[SweepItem]:
    done = []
    for o in orphans:
        if dry_run:
            done.append(SweepItem(o.kind, o.name, o.id, o.expires, "would destroy"))
            continue
        reply = client.delete(f"{base}/{o.kind}/{o.id}", headers={"Authorization": f"Bearer {token}"})
        ok = reply.status_code in (200, 202, 204, 404)
        action = "destroyed" if ok else f"failed: HTTP {reply.status_code}"
        done.append(SweepItem(o.kind, o.name, o.id, o.expires, action))
    return done


def sweep(
    provider: Any,
    *,
    dry_run: bool = False,
    now: float | None = None,
    progress: Callable[[str], None] = lambda _l: None,
    client: Any = None,
    base_url: str | None = None,
) -> list[SweepItem]:
    """Expired ephemeral stacks, then (with HCLOUD_TOKEN, for the Hetzner provider) orphaned resources."""
    now = time.time() if now is None else now
    items = sweep_stacks(provider, now, dry_run=dry_run, progress=progress)
    token = os.environ.get("HCLOUD_TOKEN", "")
    if provider.name != "hetzner" or not (token or client):
        return items
    import httpx

    from provision.providers.hetzner import API_URL

    base = base_url or os.environ.get("FEDI_HCLOUD_API") or API_URL
    own = client is None
    client = client or httpx.Client(timeout=15.0)
    try:
        known = set(provider.engine.stack_names())
        orphans = find_orphans(client, base, token, known, now)
        items += delete_orphans(client, base, token, orphans, dry_run=dry_run)
    except httpx.HTTPError as exc:
        raise ProvisionError(f"cannot reach the Hetzner API to look for orphaned resources: {exc}") from None
    finally:
        if own:
            client.close()
    return items
