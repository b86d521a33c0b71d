"""`fedi sweep`: destroy ephemeral stacks past their expiry, and orphaned ephemeral cloud resources.

Two sources, one rule: only what carries fedi's ephemeral labels (``managed-by=fedi``,
``fedi-ephemeral=true``) and an expiry in the past is ever touched. Stacks come from the state
backend (their outputs say ephemeral/expires/production); orphans come from the Hetzner API with a
label selector, and every item is checked again on this side before it is deleted.

Orphaned DNS records go first: an A/AAAA record left pointing at an address returned to Hetzner's
pool (with a CAA record allowing Let's Encrypt) lets whoever gets the address next take over the
name. So the labelled rrsets of every zone are deleted before anything else, and a stack's primary
IPs are kept while any of its records could not be deleted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from provision.errors import ProvisionError, StackBusy
from provision.timestamps import epoch
from stacks.config import label_value

SELECTOR = "managed-by=fedi,fedi-ephemeral=true"
RRSETS = "zone_rrsets"  # DNS records, under /zones/<zone>/rrsets
# Deletion order: DNS records first (they point at the IPs), then servers (that detaches volumes,
# unassigns primary IPs, unapplies firewalls), and the primary IPs only after their records are gone.
KINDS = ("servers", "volumes", "primary_ips", "firewalls", "ssh_keys")
ORDER = (RRSETS, *KINDS)
MAX_PAGES = 20  # 50 per page: 1000 resources of a kind is far beyond a fedi project; bounded either way
PER_PAGE = 50
GONE = (200, 201, 202, 204, 404)  # deleted (or an action started), or already gone


@dataclass(frozen=True)
class SweepItem:
    kind: str  # stack | zone_rrsets | servers | volumes | primary_ips | firewalls | ssh_keys
    name: str
    id: str  # cloud id ('' for stacks; <zone id>/<name>/<type> for DNS records)
    expires: int  # unix time
    action: str  # destroyed | would destroy | kept: <why> | failed: <why>
    stack: str = ""  # the fedi-stack label (orphans)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "id": self.id, "expires": self.expires, "action": self.action}


def is_sweepable(labels: dict[str, str], now: float) -> bool:
    """True only for fedi's ephemeral resources whose expiry has passed."""
    expires = labels.get("fedi-expires", "")
    return (
        labels.get("managed-by") == "fedi"
        and labels.get("fedi-ephemeral") == "true"
        and expires.isdigit()
        and int(expires) <= now
    )


def sweep_stacks(
    provider: Any,
    now: float,
    *,
    dry_run: bool,
    progress: Callable[[str], None],
    config: dict[str, Any] | None = None,
) -> list[SweepItem]:
    """``config`` is the operator's fedi.toml: its [hooks] hear of each stack destroyed."""
    from provision.lifecycle import stack as lifecycle

    items = []
    for s in provider.stacks():
        expires = int(epoch(s.expires))
        if not s.ephemeral or s.production or not expires or expires > now:
            continue
        if dry_run:
            items.append(SweepItem("stack", s.stack, "", expires, "would destroy"))
            continue
        try:
            lifecycle.down(s.stack, provider, progress, purge_backups=True, skip_backup=True, config=config)
            items.append(SweepItem("stack", s.stack, "", expires, "destroyed"))
        except ProvisionError as err:
            items.append(SweepItem("stack", s.stack, "", expires, f"failed: {err.line()}"))
        except StackBusy as err:  # another run is changing it: the next sweep gets it
            items.append(SweepItem("stack", s.stack, "", expires, f"skipped: {err.line()}"))
    return items


def _pages(client: Any, url: str, token: str, key: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every item of a paginated Hetzner list (bounded by MAX_PAGES)."""
    for page in range(1, MAX_PAGES + 1):
        reply = client.get(
            url, params={**params, "page": page, "per_page": PER_PAGE}, headers={"Authorization": f"Bearer {token}"}
        )
        if reply.status_code != 200:
            raise ProvisionError(f"the Hetzner API answered {reply.status_code} listing {key}")
        body = reply.json()
        yield from body.get(key) or []
        if not ((body.get("meta") or {}).get("pagination") or {}).get("next_page"):
            return


def _orphan(labels: dict[str, str], known: set[str], now: float) -> bool:
    return is_sweepable(labels, now) and labels.get("fedi-stack") not in known


def find_orphans(client: Any, base: str, token: str, known_stacks: set[str], now: float) -> list[SweepItem]:
    """Expired ephemeral resources at Hetzner whose stack is not in the backend any more, DNS records first."""
    known = {label_value(s) for s in known_stacks}
    found = []
    for zone in _pages(client, f"{base}/zones", token, "zones", {}):
        if zone.get("mode") == "secondary":  # no rrsets of its own: the API refuses to list them
            continue
        url = f"{base}/zones/{zone['id']}/rrsets"
        for rrset in _pages(client, url, token, "rrsets", {"label_selector": SELECTOR}):
            labels = rrset.get("labels") or {}
            if not _orphan(labels, known, now):
                continue
            name, rtype = rrset["name"], rrset["type"]
            fqdn = zone["name"] if name == "@" else f"{name}.{zone['name']}"
            item_id = f"{zone['id']}/{name}/{rtype}"
            found.append(
                SweepItem(RRSETS, f"{fqdn} {rtype}", item_id, int(labels["fedi-expires"]), "", labels["fedi-stack"])
            )
    for kind in KINDS:
        for item in _pages(client, f"{base}/{kind}", token, kind, {"label_selector": SELECTOR}):
            labels = item.get("labels") or {}
            if not _orphan(labels, known, now):
                continue
            expires = int(labels["fedi-expires"])
            found.append(SweepItem(kind, item.get("name", ""), str(item["id"]), expires, "", labels["fedi-stack"]))
    return sorted(found, key=lambda o: ORDER.index(o.kind))


def _path(base: str, item: SweepItem) -> str:
    if item.kind == RRSETS:
        zone, name, rtype = item.id.split("/")
        return f"{base}/zones/{zone}/rrsets/{name}/{rtype}"
    return f"{base}/{item.kind}/{item.id}"


def delete_orphans(client: Any, base: str, token: str, orphans: list[SweepItem], *, dry_run: bool) -> list[SweepItem]:
    """Delete in ORDER; a stack whose DNS records could not all be deleted keeps its primary IPs."""
    done: list[SweepItem] = []
    dns_left: set[str] = set()
    for o in sorted(orphans, key=lambda o: ORDER.index(o.kind)):
        if dry_run:
            action = "would destroy"
        elif o.kind == "primary_ips" and o.stack in dns_left:
            action = "kept: DNS records of its stack could not be deleted"
        else:
            reply = client.delete(_path(base, o), headers={"Authorization": f"Bearer {token}"})
            action = "destroyed" if reply.status_code in GONE else f"failed: HTTP {reply.status_code}"
            if o.kind == RRSETS and action != "destroyed":
                dns_left.add(o.stack)
        done.append(SweepItem(o.kind, o.name, o.id, o.expires, action, o.stack))
    return done


def sweep(
    provider: Any,
    *,
    dry_run: bool = False,
    now: float | None = None,
    progress: Callable[[str], None] = lambda _l: None,
    client: Any = None,
    base_url: str | None = None,
    config: dict[str, Any] | None = None,
) -> list[SweepItem]:
    """Expired ephemeral stacks, then (with HCLOUD_TOKEN, for the Hetzner provider) orphaned resources."""
    now = time.time() if now is None else now
    if provider.name == "hetzner":  # the Pulumi CLI and the token, or this provider cannot be asked
        provider.engine.preflight()
    items = sweep_stacks(provider, now, dry_run=dry_run, progress=progress, config=config)
    token = os.environ.get("HCLOUD_TOKEN", "")
    if provider.name != "hetzner" or not (token or client):
        return items
    import httpx

    from provision.providers.hetzner import api

    base = api.base_url(base_url)
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
