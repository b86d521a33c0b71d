"""`fedi sweep` removes expired ephemeral stacks and orphans, and never anything else."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from provision.cli import app as cli
from provision.lifecycle import sweep
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.providers.local.provider import LocalProvider
from provision.sizing import sizing
from tests.support.stack_fixtures import bundle_of, fake_cli, isolate, spec_of

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


def test_a_stack_another_run_is_changing_is_skipped_not_destroyed(provider):
    """An expired stack that a `fedi up` (another process) holds right now: left for the next sweep."""
    import os
    import subprocess
    import sys

    expired = _up(provider, "old.test.example.org", ephemeral=True, ttl_hours=1)
    holder = "import sys\nfrom provision.lifecycle import stacklock\nwith stacklock.hold(sys.argv[1], 'fedi up'):\n"
    holder += "    print('held', flush=True)\n    sys.stdin.read()\n"
    other = subprocess.Popen(
        [sys.executable, "-c", holder, expired], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=os.environ.copy(),
    )  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "held"
        done = sweep.sweep(provider, now=CREATED + 3 * 3600)
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert [(i.name, i.action.split(":")[0]) for i in done] == [(expired, "skipped")]
    assert "`fedi up` by " in done[0].action
    assert expired in provider.engine.stack_names()


def _labels(stack, ephemeral, expires=None, managed=True):
    labels = {"fedi-stack": stack, "fedi-ephemeral": "true" if ephemeral else "false"}
    if managed:
        labels["managed-by"] = "fedi"
    if expires is not None:
        labels["fedi-expires"] = str(expires)
    return labels


ZONE = {  # the shape of a zone in GET /v1/zones (Hetzner Cloud API, DNS)
    "id": 4711,
    "name": "example.org",
    "mode": "primary",
    "ttl": 3600,
    "labels": {},
    "protection": {"delete": False},
    "status": "ok",
    "record_count": 9,
    "registrar": "other",
    "primary_nameservers": [],
    "authoritative_nameservers": {
        "assigned": ["hydrogen.ns.hetzner.com."],
        "delegated": [],
        "delegation_status": "valid",
    },
}


def _rrset(name, rtype, labels, value="203.0.113.10"):
    """The shape of an rrset in GET /v1/zones/<zone>/rrsets."""
    return {
        "id": f"{name}/{rtype}",
        "name": name,
        "type": rtype,
        "ttl": 300,
        "labels": labels,
        "protection": {"change": False},
        "records": [{"value": value, "comment": ""}],
        "zone": 4711,
    }


def _page(key, items, next_page=None):
    return {key: items, "meta": {"pagination": {"page": 1, "per_page": 50, "next_page": next_page}}}


class FakeHetznerApi:
    """A real HTTP server on loopback answering the Hetzner API's list/delete calls in their recorded
    shapes. It ignores the label selector on purpose, so the tests prove that fedi's own check protects
    everything without the labels. ``fail`` holds paths whose DELETE answers 500."""

    def __init__(self, now, fail=()):
        self.log: list[tuple[str, str]] = []
        self.fail = set(fail)
        gone = _labels("t1-gone", True, now - 60)
        self.zones = [
            [ZONE, {**ZONE, "id": 4712, "name": "example.net", "mode": "secondary"}],
            [{**ZONE, "id": 4713, "name": "example.com"}],
        ]
        self.rrsets = {
            "4711": [
                _rrset("t1.test", "A", gone),
                _rrset("t1.test", "AAAA", gone, "2001:db8::1"),
                _rrset("t1.test", "CAA", gone, '0 issue "letsencrypt.org"'),
                _rrset("social", "A", _labels("social-example-org", False)),
                _rrset("t2.test", "A", _labels("t2-gone", True, now + 3600)),
                _rrset("live", "A", _labels("live-stack", True, now - 60)),
                _rrset("www", "A", {}),
            ],
            "4713": [_rrset("@", "A", _labels("t4-gone", True, now - 60))],
        }
        self.items = {
            "servers": [
                {"id": 1, "name": "orphan", "labels": gone},
                {"id": 2, "name": "prod", "labels": _labels("social-example-org", False)},
                {"id": 3, "name": "unexpired", "labels": _labels("t2-gone", True, now + 3600)},
                {"id": 4, "name": "known", "labels": _labels("live-stack", True, now - 60)},
                {"id": 5, "name": "someone-elses", "labels": {"fedi-ephemeral": "true", "fedi-expires": "1"}},
                {"id": 6, "name": "no-labels", "labels": {}},
            ],
            "volumes": [{"id": 11, "name": "orphan-data", "labels": gone}],
            "primary_ips": [
                {"id": 21, "name": "prod-ipv4", "labels": _labels("social-example-org", False)},
                {"id": 22, "name": "orphan-ipv4", "labels": gone},
                {"id": 23, "name": "t4-ipv4", "labels": _labels("t4-gone", True, now - 60)},
            ],
            "firewalls": [],
            "ssh_keys": [{"id": 31, "name": "bad-expiry", "labels": _labels("t3", True, "soon")}],
        }
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code, body):
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):  # noqa: N802 - http.server's naming
                url = urlsplit(self.path)
                params = dict(parse_qsl(url.query))
                api.log.append(("GET", url.path))
                assert self.headers["Authorization"] == "Bearer tok"
                parts = url.path.removeprefix("/v1/").split("/")
                page = int(params.get("page", "1"))
                if parts == ["zones"]:
                    pages = api.zones
                    next_page = page + 1 if page < len(pages) else None
                    return self._answer(200, _page("zones", pages[page - 1], next_page))
                assert params["label_selector"] == sweep.SELECTOR
                if parts[0] == "zones":
                    if parts[1] == "4712":
                        body = {"error": {"code": "incorrect_zone_mode", "message": "not supported for this mode"}}
                        return self._answer(422, body)
                    return self._answer(200, _page("rrsets", api.rrsets[parts[1]]))
                return self._answer(200, _page(parts[0], api.items[parts[0]]))

            def do_DELETE(self):  # noqa: N802
                api.log.append(("DELETE", self.path))
                if self.path in api.fail:
                    return self._answer(500, {"error": {"code": "server_error", "message": "try again"}})
                action = {"id": len(api.log), "command": "delete", "status": "running", "progress": 0}
                return self._answer(201 if "/rrsets/" in self.path else 200, {"action": action})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def deleted(self) -> list[str]:
        return [path.removeprefix("/v1") for method, path in self.log if method == "DELETE"]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


ORPHAN_RECORDS = [
    "/zones/4711/rrsets/t1.test/A",
    "/zones/4711/rrsets/t1.test/AAAA",
    "/zones/4711/rrsets/t1.test/CAA",
    "/zones/4713/rrsets/@/A",
]


def test_orphans_without_the_ephemeral_label_are_never_touched(provider, monkeypatch):
    monkeypatch.setenv("HCLOUD_TOKEN", "tok")
    now = CREATED
    provider.engine.write_config("live-stack", "marker", "1", secret=False)  # a stack the backend knows
    with FakeHetznerApi(now) as api, httpx.Client(timeout=10) as client:
        dry = sweep.sweep(provider, dry_run=True, now=now, client=client, base_url=api.url)
        assert {(i.kind, i.id, i.action) for i in dry} == {
            ("zone_rrsets", "4711/t1.test/A", "would destroy"),
            ("zone_rrsets", "4711/t1.test/AAAA", "would destroy"),
            ("zone_rrsets", "4711/t1.test/CAA", "would destroy"),
            ("zone_rrsets", "4713/@/A", "would destroy"),
            ("servers", "1", "would destroy"),
            ("volumes", "11", "would destroy"),
            ("primary_ips", "22", "would destroy"),
            ("primary_ips", "23", "would destroy"),
        }
        assert {i.name for i in dry if i.kind == "zone_rrsets"} == {
            "t1.test.example.org A",
            "t1.test.example.org AAAA",
            "t1.test.example.org CAA",
            "example.com A",
        }
        assert api.deleted == []
        assert ("GET", "/v1/zones/4712/rrsets") not in api.log  # a secondary zone has no rrsets to list
        done = sweep.sweep(provider, now=now, client=client, base_url=api.url)
    assert {i.action for i in done} == {"destroyed"}
    # every orphaned DNS record goes before anything else, above all before the addresses it points at
    assert api.deleted == [*ORPHAN_RECORDS, "/servers/1", "/volumes/11", "/primary_ips/22", "/primary_ips/23"]


def test_a_stack_keeps_its_addresses_while_its_dns_records_remain(provider, monkeypatch):
    monkeypatch.setenv("HCLOUD_TOKEN", "tok")
    with FakeHetznerApi(CREATED, fail={"/v1/zones/4711/rrsets/t1.test/AAAA"}) as api, httpx.Client() as client:
        done = sweep.sweep(provider, now=CREATED, client=client, base_url=api.url)
    by_id = {(i.kind, i.id): i.action for i in done}
    assert by_id[("zone_rrsets", "4711/t1.test/AAAA")] == "failed: HTTP 500"
    assert by_id[("primary_ips", "22")].startswith("kept: ")  # t1-gone's AAAA record still points at it
    assert by_id[("primary_ips", "23")] == "destroyed"  # t4-gone's record is gone
    assert "/primary_ips/22" not in api.deleted and "/primary_ips/23" in api.deleted


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


def test_sweep_without_provider_asks_every_provider_and_skips_one_it_cannot_ask(monkeypatch, tmp_path, capsys):
    bindir = isolate(monkeypatch, tmp_path)
    fake_cli(bindir)  # the Pulumi CLI is there, HCLOUD_TOKEN is not
    monkeypatch.chdir(tmp_path)
    local = LocalProvider()
    spec = spec_of(domain="t1.smoke.example.org", provider="local", ephemeral=True, ttl_hours=1)
    local.secrets(spec)
    local._store().update(spec.stack_name, expires="2020-01-01T00:00:00Z")  # long expired
    code = cli.main(["sweep", "--dry-run", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert [(i["kind"], i["name"], i["action"]) for i in json.loads(out.out)] == [
        ("stack", spec.stack_name, "would destroy")
    ]
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hetzner not swept: HCLOUD_TOKEN is not set")
    # named explicitly, a provider that cannot be asked is the error
    assert cli.main(["sweep", "--provider", "hetzner", "--dry-run"]) == 3
    assert "HCLOUD_TOKEN is not set" in capsys.readouterr().err
