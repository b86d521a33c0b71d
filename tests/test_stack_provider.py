"""The Hetzner provider driven by the test engine (the real stack program under Pulumi's mocks)."""

from __future__ import annotations

import stat

import httpx
import pytest

from provision.errors import ProvisionError
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider, dns_records, find_zone, wait_for_dns, zone_candidates
from provision.sizing import sizing
from tests.support.stack_fixtures import bundle_of, isolate, spec_of


@pytest.fixture
def hetzner(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    return HetznerProvider(engine=OfflineEngine())


def _up(provider, **flags):
    spec = spec_of(**flags)
    lines: list[str] = []
    provider.secrets(spec)
    out = provider.up(spec, sizing(spec), bundle_of(), lines.append)
    return spec, out, lines


def test_secrets_are_generated_once_and_kept(hetzner):
    spec = spec_of()
    first = hetzner.secrets(spec)
    assert hetzner.secrets(spec) == first
    assert {"db_password", "ssh_client_key", "ssh_client_key_pub"} <= set(first)


def test_plan_stores_nothing(hetzner):
    spec = spec_of()
    hetzner.plan(spec, sizing(spec), bundle_of())
    assert hetzner.engine.stack_names() == []


def test_up_returns_how_to_reach_the_server(hetzner):
    spec, out, lines = _up(hetzner)
    assert out.provider == "hetzner" and out.stack == "social-example-org"
    assert out.access.address == out.ipv4 and out.ipv4.startswith("203.0.113.")
    assert out.access.host_key.startswith("ssh-ed25519 ")  # the bootstrap key until the playbook rotates it
    assert stat.S_IMODE(out.access.client_key.stat().st_mode) == 0o600
    assert out.extra["volume_device"].startswith("/dev/disk/by-id/scsi-0HC_Volume_")
    assert out.storage.media_bucket != out.storage.backups_bucket
    assert any("Server server created" in line for line in lines)


def test_a_second_up_changes_nothing(hetzner):
    spec, first, _ = _up(hetzner)
    plan = hetzner.plan(spec, sizing(spec), bundle_of())
    assert {r.action for r in plan.resources} == {"same"}
    _, second, lines = _up(hetzner)
    assert lines == [] and second == first


def test_pinned_host_key_replaces_the_bootstrap_key(hetzner):
    spec, out, _ = _up(hetzner)
    hetzner.pin_host_key(out.stack, "ssh-ed25519 AAAAnew rotated\n")
    assert hetzner.outputs(out.stack).access.host_key == "ssh-ed25519 AAAAnew rotated"


def test_resize_changes_the_type_in_place_and_never_shrinks_the_volume(hetzner):
    spec, _, _ = _up(hetzner, size="medium")
    lines: list[str] = []
    small = spec_of(size="small")
    out = hetzner.resize(small, sizing(spec), sizing(small), lines.append)
    assert out.server_type == "cx33"
    assert out.extra["volume_gb"] == 100  # medium's volume stays
    assert any("powers the server off" in line for line in lines)
    assert any("volumes never shrink" in line for line in lines)
    resources = hetzner.engine.resources(out.stack)
    assert resources["hcloud:index/server:Server::server"]["keepDisk"] is True


def test_down_refuses_a_protected_production_stack(hetzner):
    _, out, _ = _up(hetzner)
    with pytest.raises(ProvisionError, match="delete protection on"):
        hetzner.down(out.stack, lambda _l: None)
    assert hetzner.engine.stack_names() == [out.stack]


def test_down_with_unprotect_lifts_protection_then_destroys_and_keeps_backups(hetzner):
    _, out, _ = _up(hetzner)
    lines: list[str] = []
    hetzner.down(out.stack, lines.append, unprotect=True)
    assert "lifting delete protection" in lines
    assert any("keeping the backups bucket" in line for line in lines)
    assert hetzner.engine.stack_names() == []
    assert not out.access.client_key.exists()


def test_down_with_purge_backups_lets_the_bucket_go(hetzner):
    _, out, _ = _up(hetzner, production=False)
    seen = {}
    original = hetzner.engine.up

    def spy(cfg, progress):
        seen["cfg"] = cfg
        return original(cfg, progress)

    hetzner.engine.up = spy
    hetzner.down(out.stack, lambda _l: None, purge_backups=True)
    assert seen["cfg"].purge_backups is True
    assert hetzner.engine.stack_names() == []


def test_stacks_lists_software_size_domain_and_age(hetzner):
    _up(hetzner)
    _up(hetzner, domain="eph.example.net", ephemeral=True, ttl_hours=2, software="mastodon", size="tiny")
    found = {s.stack: s for s in hetzner.stacks()}
    assert set(found) == {"social-example-org", "eph-example-net"}
    assert found["social-example-org"].production and not found["social-example-org"].ephemeral
    eph = found["eph-example-net"]
    assert (eph.software, eph.size, eph.ephemeral, eph.production) == ("mastodon", "tiny", True, False)
    assert eph.created.endswith("Z") and eph.expires > eph.created


def test_zone_lookup_against_the_api_shape():
    asked = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["name"])
        assert request.headers["Authorization"] == "Bearer t0k"
        zones = [{"name": "example.org", "id": 7}] if request.url.params["name"] == "example.org" else []
        return httpx.Response(200, json={"zones": zones})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    assert find_zone("a.social.example.org", "t0k", base_url="http://api", client=client) == "example.org"
    assert asked == ["a.social.example.org", "social.example.org", "example.org"]
    assert zone_candidates("example.org") == ["example.org"]


def test_zone_lookup_reports_a_refused_token():
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(401, json={})))
    with pytest.raises(ProvisionError, match="refused the token"):
        find_zone("social.example.org", "bad", base_url="http://api", client=client)


def test_records_to_create_by_hand_when_the_zone_is_elsewhere():
    records = dns_records({"ipv4": "203.0.113.9", "ipv6": "2001:db8::1"}, "social.example.org", "a@example.org")
    assert ("social.example.org", "A", "203.0.113.9") in records
    assert ("social.example.org", "CAA", '0 issue "letsencrypt.org"') in records


class Clock:
    def __init__(self):
        self.now = 0.0

    def sleep(self, seconds):
        self.now += seconds

    def __call__(self):
        return self.now


def test_dns_wait_returns_once_the_record_resolves():
    answers = iter([set(), {"198.51.100.1"}, {"203.0.113.9"}])
    lines: list[str] = []
    clock = Clock()
    wait_for_dns(
        "social.example.org",
        "203.0.113.9",
        lines.append,
        resolve=lambda _d: next(answers),
        sleep=clock.sleep,
        clock=clock,
        interval=20,
    )
    assert clock.now == 40
    assert lines[-1] == "DNS: social.example.org resolves to 203.0.113.9"


def test_dns_wait_is_bounded():
    clock = Clock()
    with pytest.raises(ProvisionError, match="does not resolve to 203.0.113.9 after 2 minutes"):
        wait_for_dns(
            "social.example.org",
            "203.0.113.9",
            lambda _l: None,
            timeout=120,
            interval=30,
            resolve=lambda _d: set(),
            sleep=clock.sleep,
            clock=clock,
        )
    assert clock.now == 120


def test_dns_resolution_of_a_local_name():
    from provision.providers.hetzner.provider import resolve_a

    assert "127.0.0.1" in resolve_a("localhost")  # /etc/hosts: no DNS server involved


def test_a_stack_with_only_its_secrets_is_not_listed_and_has_no_outputs(hetzner):
    spec = spec_of()
    hetzner.secrets(spec)
    assert hetzner.engine.stack_names() == ["social-example-org"]
    assert hetzner.stacks() == []
    with pytest.raises(ProvisionError, match="does not exist|no resources"):
        hetzner.outputs("social-example-org")
    hetzner.down("social-example-org", lambda _l: None)  # forgets it
    assert hetzner.engine.stack_names() == []


def test_adopting_another_stacks_app_secrets_keeps_its_own_keys_and_its_server(hetzner, tmp_path):
    """After `fedi backup restore --into/--from-env` the stack keeps the restored data's app secrets in its
    Pulumi config; its SSH keys and repository password stay, so the server's user-data is unchanged and
    the next `fedi up` does not replace the server."""
    from provision.render.bundle import render_bundle
    from provision.render.secrets import OWN_SECRETS, app_secrets, generate_secrets

    spec = spec_of()
    own = hetzner.secrets(spec)
    old = generate_secrets(spec)
    hetzner.adopt_secrets(spec.stack_name, old)
    now = hetzner.secrets(spec)
    assert app_secrets(now) == app_secrets(old) != app_secrets(own)
    assert {k: v for k, v in now.items() if k.startswith(OWN_SECRETS)} == {
        k: v for k, v in own.items() if k.startswith(OWN_SECRETS)
    }
    before = render_bundle(spec, sizing(spec), own, None, tmp_path / "before")
    after = render_bundle(spec, sizing(spec), now, None, tmp_path / "after")
    assert after.cloud_init == before.cloud_init


def test_the_pin_follows_the_server_id(hetzner):
    _, out, _ = _up(hetzner)
    bootstrap = out.access.host_key
    hetzner.pin_host_key(out.stack, "ssh-ed25519 AAAAnew rotated")
    assert hetzner.engine.read_config(out.stack, "host_key_server") == out.server_id
    # a server with another id (re-created outside fedi) is not trusted with the lost one's key
    hetzner.engine.write_config(out.stack, "host_key_server", "999999", secret=False)
    assert hetzner.outputs(out.stack).access.host_key == bootstrap


def test_a_lost_server_is_re_created_with_a_fresh_bootstrap_key(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    gone: set[str] = set()
    asked: list[str] = []

    def exists(server_id: str) -> bool:
        asked.append(server_id)
        return server_id not in gone

    class Engine(OfflineEngine):
        refreshed = 0

        def up(self, cfg, progress, *, refresh=False):
            Engine.refreshed += refresh
            return super().up(cfg, progress, refresh=refresh)

    prov = HetznerProvider(engine=Engine(), exists=exists)
    spec, out, _ = _up(prov)
    lines: list[str] = []
    assert prov.renew_bootstrap_key(spec, lines.append) is False  # never configured: nothing pinned yet
    prov.pin_host_key(out.stack, "ssh-ed25519 AAAAnew rotated")
    before = prov.secrets(spec)
    assert prov.renew_bootstrap_key(spec, lines.append) is False and asked == [out.server_id]
    gone.add(out.server_id)
    assert prov.renew_bootstrap_key(spec, lines.append) is True
    after = prov.secrets(spec)
    assert after["ssh_host_ed25519_key_pub"] != before["ssh_host_ed25519_key_pub"]
    assert after["ssh_client_key"] == before["ssh_client_key"] and after["db_password"] == before["db_password"]
    assert prov.outputs(out.stack).access.host_key != "ssh-ed25519 AAAAnew rotated"
    assert lines == [
        f"server {out.server_id} of {out.stack} is gone: a new one is created with a fresh one-time host key"
    ]
    prov.up(spec, sizing(spec), bundle_of(), lambda _line: None)
    prov.up(spec, sizing(spec), bundle_of(), lambda _line: None)
    assert Engine.refreshed == 1  # only the up right after the loss refreshes


@pytest.mark.parametrize(
    ("status", "expected"), [(200, True), (404, False), (401, ProvisionError), (500, ProvisionError)]
)
def test_server_exists_asks_the_api_and_only_a_404_means_gone(status, expected):
    from provision.providers.hetzner.provider import server_exists

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.path} {request.headers['Authorization']}")
        return httpx.Response(status, json={})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        if expected is ProvisionError:
            with pytest.raises(ProvisionError):
                server_exists("42", "tok", base_url="http://api.test/v1", client=client)
        else:
            assert server_exists("42", "tok", base_url="http://api.test/v1", client=client) is expected
    assert seen == ["/v1/servers/42 Bearer tok"]


def test_the_stack_keeps_its_admins(hetzner):
    """`fedi admins` records live in the stack's config; outputs (and so every converge) read them back."""
    spec, out, _ = _up(hetzner)
    assert hetzner.outputs(out.stack).extra["admins"] == []
    records = [{"name": "alice", "key": "ssh-ed25519 AAAA", "fingerprint": "SHA256:x"}]
    hetzner.set_admins(out.stack, records)
    assert hetzner.outputs(out.stack).extra["admins"] == records
    # the record of exported recovery kits is kept the same way (`fedi kit export`, read by `fedi covenant`)
    assert hetzner.outputs(out.stack).extra["kits"] == []
    kits = [
        {"exported": "2026-12-06T00:00:00Z", "threshold": 1, "trustees": [{"fingerprint": "SHA256:y", "own": False}]}
    ]
    hetzner.set_kits(out.stack, kits)
    assert hetzner.outputs(out.stack).extra["kits"] == kits and hetzner.outputs(out.stack).extra["admins"] == records
