"""One record shape for every provider: ``created``/``expires`` in ISO 8601 UTC, and read-only secrets."""

from __future__ import annotations

import json
import re

import pytest

from provision.errors import ProvisionError
from provision.lifecycle import stack as lifecycle
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.providers.local.provider import LocalProvider
from provision.sizing import sizing
from provision.spec import build_spec
from provision.timestamps import as_iso, epoch, utc_iso, utc_stamp
from tests.support.stack_fixtures import bundle_of, isolate, spec_of

ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


def test_the_one_format_reads_both_recorded_shapes():
    assert utc_iso(1_800_000_000) == "2027-01-15T08:00:00Z"
    assert epoch("2027-01-15T08:00:00Z") == epoch("2027-01-15T08:00:00+00:00") == 1_800_000_000
    assert epoch(1_800_000_000) == epoch("1800000000") == 1_800_000_000
    assert epoch("") == epoch(None) == epoch(0) == 0
    assert as_iso(1_800_000_000) == "2027-01-15T08:00:00Z" and as_iso(0) == ""
    with pytest.raises(ValueError):
        epoch("yesterday")
    assert utc_stamp(1_800_000_000) == "20270115T080000Z"  # the same instant, in names


def test_the_price_cache_and_the_stack_lock_write_the_one_format(monkeypatch, tmp_path):
    from datetime import UTC, datetime

    from provision.billing import cost
    from provision.lifecycle import stacklock

    monkeypatch.setenv("FEDI_CACHE_DIR", str(tmp_path / "cache"))
    fetched = datetime.fromtimestamp(1_800_000_000, UTC)
    pricing = {k: {} for k in ("currency", "server_types", "primary_ips", "volume", "server_backup")}
    cost._write_cache(pricing, fetched)
    assert json.loads(cost._cache_path().read_text())["fetched_at"] == "2027-01-15T08:00:00Z"
    assert cost._read_cache() == (pricing, fetched)
    assert re.match(ISO, stacklock._me("up").since)


@pytest.fixture
def hetzner(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    return HetznerProvider(engine=OfflineEngine())


def test_hetzner_outputs_carry_iso_times_and_rebuild_an_ephemeral_spec(hetzner):
    spec = spec_of(domain="eph.example.net", ephemeral=True, ttl_hours=2.0)
    hetzner.secrets(spec)
    out = hetzner.up(spec, sizing(spec), bundle_of(), lambda _l: None)
    assert out.extra["created"] and out.extra["expires"]
    for key in ("created", "expires"):
        assert isinstance(out.extra[key], str)
        assert re.match(ISO, out.extra[key]), out.extra[key]
    [summary] = hetzner.stacks()
    assert (summary.created, summary.expires) == (out.extra["created"], out.extra["expires"])
    rebuilt = lifecycle.spec_of_outputs(out)
    assert rebuilt.ephemeral and rebuilt.ttl_hours == 2.0


def test_local_outputs_rebuild_an_ephemeral_spec(fedi_dirs):
    prov = LocalProvider()
    spec = build_spec(
        {"software": "lemmy", "size": "tiny", "domain": "t1.eph.localhost", "provider": "local"}
        | {"ephemeral": True, "ttl_hours": 3.0}
    )
    prov.secrets(spec)
    prov._store().update(spec.stack_name, **prov._spec_fields(spec))
    out = prov.outputs(spec.stack_name)
    assert all(re.match(ISO, out.extra[k]) for k in ("created", "expires"))
    rebuilt = lifecycle.spec_of_outputs(out)
    assert rebuilt.ephemeral and rebuilt.provider == "local"
    assert abs(rebuilt.ttl_hours - 3.0) < 0.01  # created and expires are written a moment apart
    [summary] = prov.stacks()
    assert summary.expires == out.extra["expires"]


def test_reading_secrets_creates_nothing(hetzner, fedi_dirs):
    with pytest.raises(ProvisionError, match="keeps no secrets"):
        hetzner.stored_secrets("social-example-org")
    assert hetzner.engine.stack_names() == []
    local = LocalProvider()
    with pytest.raises(ProvisionError, match="keeps no secrets"):
        local.stored_secrets("social-example-org")
    assert local._store().stacks() == []
    spec = spec_of()
    made = hetzner.secrets(spec)
    assert hetzner.stored_secrets(spec.stack_name) == made


def test_the_operators_sections_apply_to_a_stack_rebuilt_from_its_outputs(hetzner):
    spec = spec_of(production=False)
    hetzner.secrets(spec)
    out = hetzner.up(spec, sizing(spec), bundle_of(), lambda _l: None)
    config = {"domain": "other.example.org", "hooks": {"urls": ["https://books.example.coop/h"]}}
    rebuilt = lifecycle.spec_of_outputs(out, config)
    assert rebuilt.domain == "social.example.org"  # fedi.toml's instance keys never override the stack's
    assert rebuilt.extra["hooks"] == config["hooks"]
