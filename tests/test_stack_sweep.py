"""`fedi sweep` removes expired ephemeral stacks and orphans, and never anything else."""

from __future__ import annotations

import httpx
import pytest

from provision import sweep
from provision.offline import OfflineEngine
from provision.providers.hetzner import HetznerProvider
from provision.sizing import sizing
from tests.stack_fixtures import bundle_of, isolate, spec_of

CREATED = 1_800_000_000  # the fixtures' creation time


@pytest.fixture
def provider(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    return HetznerProvider(engine=OfflineEngine())


def _up(provider, domain, **flags):
    """Up a stack on the test engine, then pin its creation time (and so its expiry) to CREATED."""
    from dataclasses import replace

    spec = spec_of(domain=domain, **flags)
    provider.secrets(spec)
    provider.up(spec, sizing(spec), bundle_of(), lambda _l: None)
    stored = provider.stored_config(spec.stack_name)
    expires = CREATED + int(spec.ttl_hours * 3600) if spec.ephemeral else 0
    provider._apply(replace(stored, created=CREATED, expires=expires), lambda _l: None)
    return spec.stack_name


def test_only_expired_ephemeral_stacks_are_destroyed(provider):
    expired = _up(provider, "old.test.example.org", ephemeral=True, ttl_hours=1)
    fresh = _up(provider, "new.test.example.org", ephemeral=True, ttl_hours=48)
    prod = _up(provider, "social.example.org")
    staging = _up(provider, "staging.example.org", production=False)
    now = CREATED + 3 * 3600

    planned = sweep.sweep(provider, dry_run=True, now=now)
    assert [(i.name, i.action) for i in planned] == [(expired, "would destroy")]
    assert sorted(provider.engine.stack_names()) == sorted([expired, fresh, prod, staging])

    done = sweep.sweep(provider, now=now)
    assert [(i.name, i.action) for i in done] == [(expired, "destroyed")]
    assert sorted(provider.engine.stack_names()) == sorted([fresh, prod, staging])


def _labels(stack, ephemeral, expires=None, managed=True):
    labels = {"fedi-stack": stack, "fedi-ephemeral": "true" if ephemeral else "false"}
    if managed:
        labels["managed-by"] = "fedi"
    if expires is not None:
        labels["fedi-expires"] = str(expires)
    return labels


class FakeHetznerApi:
    """A loopback stand-in for the Hetzner API's list/delete shape; it ignores the label selector on
    purpose, so the test proves that fedi's own check protects everything without the labels."""

    def __init__(self, now):
        self.deleted: list[str] = []
        self.items = {
            "servers": [
                {"id": 1, "name": "orphan", "labels": _labels("t1-gone", True, now - 60)},
                {"id": 2, "name": "prod", "labels": _labels("social-example-org", False)},
                {"id": 3, "name": "unexpired", "labels": _labels("t2-gone", True, now + 3600)},
                {"id": 4, "name": "known", "labels": _labels("live-stack", True, now - 60)},
                {"id": 5, "name": "someone-elses", "labels": {"fedi-ephemeral": "true", "fedi-expires": "1"}},
                {"id": 6, "name": "no-labels", "labels": {}},
            ],
            "volumes": [{"id": 11, "name": "orphan-data", "labels": _labels("t1-gone", True, now - 60)}],
            "primary_ips": [{"id": 21, "name": "prod-ipv4", "labels": _labels("social-example-org", False)}],
            "firewalls": [],
            "ssh_keys": [{"id": 31, "name": "bad-expiry", "labels": _labels("t3", True, "soon")}],
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        kind = request.url.path.strip("/").split("/")[0]
        if request.method == "GET":
            assert request.url.params["label_selector"] == sweep.SELECTOR
            return httpx.Response(200, json={kind: self.items[kind], "meta": {"pagination": {"next_page": None}}})
        self.deleted.append(request.url.path)
        return httpx.Response(204)


def test_orphans_without_the_ephemeral_label_are_never_touched(provider, monkeypatch):
    monkeypatch.setenv("HCLOUD_TOKEN", "tok")
    now = CREATED
    provider.engine.write_config("live-stack", "marker", "1", secret=False)  # a stack the backend knows
    api = FakeHetznerApi(now)
    client = httpx.Client(transport=httpx.MockTransport(api), base_url="http://api")
    dry = sweep.sweep(provider, dry_run=True, now=now, client=client, base_url="http://api")
    assert {(i.kind, i.id, i.action) for i in dry} == {
        ("servers", "1", "would destroy"),
        ("volumes", "11", "would destroy"),
    }
    assert api.deleted == []
    sweep.sweep(provider, now=now, client=client, base_url="http://api")
    assert api.deleted == ["/servers/1", "/volumes/11"]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (_labels("s", True, 10), True),
        (_labels("s", True, 11), False),
        (_labels("s", False, 10), False),
        (_labels("s", True, 10, managed=False), False),
        (_labels("s", True), False),
        ({}, False),
    ],
)
def test_the_sweep_rule(labels, expected):
    assert sweep.is_sweepable(labels, now=10) is expected
