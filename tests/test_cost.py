"""The cost model: against a recorded-shape pricing response served over loopback, and the fallback table."""

from __future__ import annotations

import copy
import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provision.billing import cost
from provision.billing.cost import load_prices, monthly_cost, resize_difference
from provision.errors import UsageError
from provision.sizing import SERVER_TYPES, TIERS
from provision.spec import build_spec

FIXTURE = json.loads((Path(__file__).parent / "data" / "hetzner_pricing.json").read_text())
TOKEN = "test-token-not-a-secret"


class PricingAPI:
    """A real HTTP server on loopback that answers GET /v1/pricing like Hetzner's API."""

    def __init__(self, body: dict, status: int = 200):
        self.body, self.status, self.requests = body, status, []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                api.requests.append((self.path, self.headers.get("Authorization")))
                if self.path != "/v1/pricing":
                    self.send_response(404)
                    self.end_headers()
                    return
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    payload, code = b'{"error": {"code": "unauthorized", "message": "unable to authenticate"}}', 401
                else:
                    payload, code = json.dumps(api.body).encode(), api.status
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FEDI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HCLOUD_TOKEN", raising=False)
    monkeypatch.delenv("FEDI_HCLOUD_API", raising=False)


def _api_body(cx23_net: str = "4.2000") -> dict:
    """The recorded response with cx23 repriced, so a test can tell API prices from the table's."""
    body = copy.deepcopy(FIXTURE)
    for entry in body["pricing"]["server_types"]:
        if entry["name"] == "cx23":
            for price in entry["prices"]:
                net = Decimal(cx23_net)
                price["price_monthly"] = {"net": f"{net:.10f}", "gross": f"{net * Decimal('1.19'):.16f}"}
    return body


def test_fixture_has_the_api_shape():
    pricing = FIXTURE["pricing"]
    assert set(pricing) >= {"currency", "vat_rate", "server_types", "primary_ips", "volume", "server_backup"}
    for entry in pricing["server_types"]:
        for price in entry["prices"]:
            assert set(price) == {
                "location",
                "price_hourly",
                "price_monthly",
                "included_traffic",
                "price_per_tb_traffic",
            }
            assert set(price["price_monthly"]) == {"net", "gross"}


def test_live_prices_from_the_api_are_used_and_cached():
    with PricingAPI(_api_body("4.20")) as api:
        prices = load_prices(token=TOKEN, base_url=api.url)
        assert prices.source == f"hetzner-api {datetime.now(UTC).date()}"
        breakdown = monthly_cost(("tiny", "mastodon", "fsn1"), prices=prices)
        assert breakdown.lines[0].amount.net == Decimal("4.20")
        assert api.requests == [("/v1/pricing", f"Bearer {TOKEN}")]
        # a second call within a day reuses the cache: no second request
        again = load_prices(token=TOKEN, base_url=api.url)
        assert len(api.requests) == 1
        assert again.pricing == prices.pricing
        assert again.note == "cached"
    # the cache is dated; a day later it is refetched
    with PricingAPI(_api_body("4.30")) as api:
        later = load_prices(token=TOKEN, base_url=api.url, now=datetime.now(UTC) + timedelta(hours=25))
        assert len(api.requests) == 1
        assert monthly_cost(("tiny", "lemmy", "fsn1"), prices=later).lines[0].amount.net == Decimal("4.30")


def test_refused_token_falls_back_to_the_table_and_says_why():
    with PricingAPI(_api_body()) as api:
        prices = load_prices(token="wrong", base_url=api.url)
    assert prices.source.startswith("table ")
    assert "401" in prices.note
    assert prices.note.startswith(f"offline: prices from the table of {prices.source.split()[1]}")


def test_unreachable_api_falls_back_to_the_stale_cache(tmp_path):
    with PricingAPI(_api_body("4.20")) as api:
        load_prices(token=TOKEN, base_url=api.url)
        url = api.url
    # the server is gone now; a day later the stale cache beats the table
    prices = load_prices(token=TOKEN, base_url=url, now=datetime.now(UTC) + timedelta(days=3))
    assert prices.source.startswith("hetzner-api ")
    assert "live prices unavailable" in prices.note
    assert monthly_cost(("tiny", "mastodon", "fsn1"), prices=prices).lines[0].amount.net == Decimal("4.20")


def test_offline_table_says_so():
    prices = load_prices()
    table_date = json.loads(cost.TABLE.read_text())["_date"]
    assert prices.source == f"table {table_date}"
    assert prices.note == f"offline: prices from the table of {table_date}"


@pytest.mark.parametrize("size", list(TIERS))
@pytest.mark.parametrize("app", ["mastodon", "lemmy", "mbin"])
def test_every_size_is_priced_from_the_table(size, app):
    b = monthly_cost((size, app, "nbg1"))
    server_type, volume_gb = TIERS[size]
    names = [line.name for line in b.lines]
    assert names[0] == f"server {server_type} (nbg1)"
    assert f"volume {volume_gb} GB" in names
    assert {"primary IPv4", "primary IPv6"} <= set(names)
    assert b.total_net == sum(line.amount.net for line in b.lines)
    assert b.total_gross > b.total_net
    assert b.currency == "EUR"
    assert SERVER_TYPES[server_type].name == b.as_dict()["server_type"]


def test_line_arithmetic():
    b = monthly_cost(("small", "mastodon", "fsn1"), hetzner_backups=True, object_storage_tb=3)
    lines = {line.name: line for line in b.lines}
    server = lines["server cx33 (fsn1)"].amount
    backups = lines["Hetzner backups (20% of server)"].amount
    assert backups.net == server.net * Decimal("0.2")
    volume = lines["volume 40 GB"]
    assert volume.amount.net == volume.unit_price.net * 40
    extra = lines["object storage, further TB stored"]
    assert extra.quantity == 2 and extra.amount.net == extra.unit_price.net * 2
    d = b.as_dict()
    assert d["total_net"] == pytest.approx(float(b.total_net), abs=0.005)
    assert d["source"] == b.source and d["period"] == "month"


def test_ephemeral_hours_are_billed_by_started_hour_and_capped_at_a_month():
    month = monthly_cost(("tiny", "mastodon", "fsn1"))
    two = monthly_cost(("tiny", "mastodon", "fsn1"), ephemeral_hours=1.5)
    server_hour = Decimal(FIXTURE["pricing"]["server_types"][1]["prices"][0]["price_hourly"]["net"])
    assert two.lines[0].amount.net == server_hour * 2
    assert two.total_net < month.total_net
    long = monthly_cost(("tiny", "mastodon", "fsn1"), ephemeral_hours=2000)
    assert long.total_net == month.total_net
    assert two.as_dict()["period"] == "1.5 hours"


def test_spec_input_and_local_provider():
    spec = build_spec({"software": "kbin", "size": "medium", "domain": "mbin.example.org", "location": "hel1"})
    b = monthly_cost(spec)
    assert b.lines[0].name == "server cx43 (hel1)" and b.as_dict()["app"] == "mbin"
    local = build_spec({"software": "lemmy", "size": "tiny", "domain": "l.example.org", "provider": "local"})
    free = monthly_cost(local)
    assert free.lines == () and free.total_gross == 0 and free.source == "local"


def test_cx_types_are_not_offered_in_the_us():
    with pytest.raises(UsageError, match="cx23 is not offered in ash"):
        monthly_cost(("tiny", "mastodon", "ash"))


def test_resize_difference():
    prices = load_prices()
    old = monthly_cost(("tiny", "mastodon", "fsn1"), prices=prices)
    new = monthly_cost(("medium", "mastodon", "fsn1"), prices=prices)
    diff = resize_difference(old, new)
    assert diff.delta.net == new.total_net - old.total_net > 0
    srv = {line.name: line.amount.net for line in old.lines + new.lines}
    vol = Decimal(FIXTURE["pricing"]["volume"]["price_per_gb_month"]["net"])
    assert diff.delta.net == srv["server cx43 (fsn1)"] - srv["server cx23 (fsn1)"] + vol * (100 - 20)
    assert diff.as_dict()["difference_net"] == pytest.approx(float(diff.delta.net), abs=0.005)
    assert "+" in diff.text()
    assert resize_difference(new, old).delta.net == -diff.delta.net


def test_unconfirmed_figures_are_named_beside_the_lines_they_touch():
    b = monthly_cost(("tiny", "mastodon", "fsn1"))
    items = [u.split(":")[0] for u in b.unconfirmed]
    assert items == ["server cx23", "primary IPv4", "object storage"]
    assert "unconfirmed: server cx23: derived" in b.text() and b.as_dict()["unconfirmed"] == list(b.unconfirmed)
    assert not any(u.startswith("server cx43") for u in b.unconfirmed)
    # with the live price list only Object Storage (not in /v1/pricing) still comes from the table
    with PricingAPI(_api_body()) as api:
        live = monthly_cost(("tiny", "mastodon", "fsn1"), prices=load_prices(token=TOKEN, base_url=api.url))
    assert [u.split(":")[0] for u in live.unconfirmed] == ["object storage"]
