"""`fedi cost --all/--stack`, `fedi coop dues` and `fedi coop monthly` over an account of several stacks.

In-process through the real CLI entry point, with the Hetzner provider on the test engine (the real
stack program under Pulumi's mocks) handed in through ``provision.cli.target.make_provider``, as test_cli_stack does.
"""

from __future__ import annotations

import json

import pytest
from test_hooks import SECRET, Receiver

from provision.cli import app as cli
from provision.cli import target as cli_target
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.sizing import sizing
from tests.support.stack_fixtures import bundle_of, isolate, spec_of


@pytest.fixture
def engine(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDI_WEBHOOK_SECRET", SECRET)
    eng = OfflineEngine()
    monkeypatch.setattr(cli_target, "make_provider", lambda name, backend=None, **_: HetznerProvider(engine=eng))
    return eng


def provision_stack(engine, **flags) -> None:
    provider = HetznerProvider(engine=engine)
    spec = spec_of(**flags)
    provider.secrets(spec)
    provider.up(spec, sizing(spec), bundle_of(), lambda _l: None)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


TWO = [
    {"domain": "a.example.org", "software": "mastodon", "size": "tiny"},
    {"domain": "b.example.org", "software": "lemmy", "size": "small"},
]
FOUR = [
    *TWO,
    {"domain": "c.example.org", "software": "kbin", "size": "medium", "location": "hel1"},
    {"domain": "d.example.org", "software": "mastodon", "size": "large"},
]


def test_all_shows_every_stack_the_shared_lines_once_and_the_invoice_total(engine, capsys):
    for flags in FOUR:
        provision_stack(engine, **flags)
    bill = run_json(capsys, "cost", "--all")
    assert [s["stack"] for s in bill["stacks"]] == ["a-example-org", "b-example-org", "c-example-org", "d-example-org"]
    assert [line["name"] for line in bill["shared"]] == ["object storage base (incl. 1 TB stored, 1 TB egress)"]
    assert bill["share_rule"] == "even shares, 1/4 each"
    own = sum(line["net"] for s in bill["stacks"] for line in s["lines"])
    assert bill["total_net"] == pytest.approx(own + bill["shared"][0]["net"], abs=1e-9)
    assert bill["total_net"] == pytest.approx(sum(s["total_net"] for s in bill["stacks"]), abs=1e-9)
    assert bill["vat"] == pytest.approx(bill["total_gross"] - bill["total_net"], abs=1e-9)
    assert sum(s["shares"][0]["net"] for s in bill["stacks"]) == pytest.approx(bill["shared"][0]["net"], abs=1e-9)
    assert not any(line["name"].startswith("object storage") for s in bill["stacks"] for line in s["lines"])
    c = bill["stacks"][2]
    assert (c["app"], c["size"], c["location"]) == ("mbin", "medium", "hel1")
    assert c["lines"][0]["name"] == "server cx43 (hel1)"
    # one stack of it: its own lines, its share, and the account's total beside them
    one = run_json(capsys, "cost", "--stack", "c-example-org")
    assert [line["name"] for line in one["lines"]][-1] == "share of object storage base"
    assert one["total_gross"] == c["total_gross"] and one["share_rule"] == "even shares, 1/4 each"
    assert one["account"]["total_gross"] == bill["total_gross"]
    code, out, _ = run(capsys, "cost", "--all")
    assert code == 0 and "shared by the account" in out and "of which VAT" in out
    assert out.count("object storage base") == 1 and "unconfirmed: server cx23" in out


def test_a_new_stack_joins_the_account_or_stands_alone(engine, capsys):
    for flags in FOUR:
        provision_stack(engine, **flags)
    joined = run_json(capsys, "cost", "--software", "lemmy", "--size", "tiny", "--domain", "e.example.org")
    assert joined["stack"] == "e-example-org" and len(joined["account"]["stacks"]) == 5
    assert joined["share_rule"] == "even shares, 1/5 each"
    alone = run_json(capsys, "cost", "--software", "lemmy", "--size", "tiny", "--domain", "e.example.org", "--alone")
    assert alone["account"]["stacks"] == ["e-example-org"] and alone["share_rule"] == "one stack: all of it"
    base = next(line for line in alone["lines"] if line["name"] == "share of object storage base")
    joined_base = next(line for line in joined["lines"] if line["name"] == "share of object storage base")
    # 499 cents / 5 = 99.8 each: four spare cents go to the first four stacks, the newcomer (last) pays 0.99
    assert base["net"] == 4.99 and joined_base["net"] == 0.99
    assert alone["total_net"] - joined["total_net"] == pytest.approx(4.00, abs=1e-9)
    # an existing stack asked about at another size: what it would cost, still in the account of four
    bigger = run_json(capsys, "cost", "--software", "mastodon", "--size", "small", "--domain", "a.example.org")
    assert len(bigger["account"]["stacks"]) == 4 and bigger["lines"][0]["name"] == "server cx33 (fsn1)"


def test_stored_bytes_from_fedi_toml_set_the_shares(engine, capsys, tmp_path):
    for flags in TWO:
        provision_stack(engine, **flags)
    (tmp_path / "fedi.toml").write_text('[account]\nstored_gb = { "a-example-org" = 1500, "b-example-org" = 500 }\n')
    bill = run_json(capsys, "cost", "--all")
    assert bill["share_rule"] == "by stored bytes (a-example-org 1500 GB, b-example-org 500 GB)"
    further = bill["shared"][1]
    assert further["name"] == "object storage, further TB stored" and further["quantity"] == 1
    assert [s["share"] for s in bill["stacks"]] == [0.75, 0.25]
    (tmp_path / "fedi.toml").write_text('[account]\nstacks = ["b-example-org"]\n')
    assert [s["stack"] for s in run_json(capsys, "cost", "--all")["stacks"]] == ["b-example-org"]
    (tmp_path / "fedi.toml").write_text("[account]\nstored_gb = 3\n")
    code, _, err = run(capsys, "cost", "--all")
    assert code == 2 and err.startswith("fedi: account/stored_gb: must be a table")


def test_account_errors_are_one_line(engine, capsys):
    code, _, err = run(capsys, "cost", "--all")
    assert code == 3 and err == "fedi: the account has no Hetzner stacks to price\n"
    provision_stack(engine, **TWO[0])
    code, _, err = run(capsys, "cost", "--stack", "nope")
    assert code == 2 and "'nope' is not a Hetzner stack of the account" in err
    code, _, err = run(capsys, "cost", "--all", "--hours", "3")
    assert code == 2 and err == "fedi: hours: prices one ephemeral stack alone; not with --all or --stack\n"


# The co-op of TWO, by hand from the table (net; gross as the table gives it, each line to the cent):
#   a (mastodon tiny):  cx23 4.75 + IPv4 0.60 + IPv6 0.00 + 20 GB x 0.068068 = 1.36  -> 6.71
#   b (lemmy small):    cx33 7.72 + IPv4 0.60 + IPv6 0.00 + 40 GB x 0.068068 = 2.72  -> 11.04
#   object storage base 5.9381 -> 5.94, once, 2.97 each
#   co-op: 6.71 + 11.04 + 5.94 = 23.69 gross a month; a with its share 9.68
DUES = [
    # (argv extra, dues settings) -> expected report figures
    pytest.param(
        [],
        'dues = 3\nperiod = "month"\nmembers = 10\nsubsidized = 2\n',
        {"cost_month": 23.69, "members_to_cover": 8, "income_month": 24.0, "surplus_month": 0.31,
         "subsidy_capacity": 2, "funding_percent": 101.3},
        id="the co-op's total",
    ),
    pytest.param(
        [],
        "dues = 12\nmembers = 30\n",
        {"cost_month": 23.69, "cost_per_period": 284.28, "members_to_cover": 24, "income_month": 30.0,
         "surplus_month": 6.31, "subsidy_capacity": 6, "funding_percent": 126.6},
        id="yearly dues",
    ),
    pytest.param(
        ["--stack", "a-example-org"],
        'dues = 3\nperiod = "month"\nmembers = 10\nsubsidized = 2\n',
        {"cost_month": 9.68, "members_to_cover": 4, "surplus_month": 14.32, "subsidy_capacity": 6},
        id="one stack with its share",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "coop", "expected"), DUES)
def test_coop_dues_for_a_coop_of_several_stacks(engine, capsys, tmp_path, extra, coop, expected):
    for flags in TWO:
        provision_stack(engine, **flags)
    (tmp_path / "fedi.toml").write_text(f"[coop]\n{coop}")
    data = run_json(capsys, "coop", "dues", *extra)
    assert {k: data[k] for k in expected} == expected
    code, out, _ = run(capsys, "coop", "dues", *extra)
    assert code == 0
    if not extra:
        assert out.startswith("Costs of the co-op's 2 stacks (a-example-org, b-example-org).")
        assert "The co-op's 2 stacks cost" in out


def test_monthly_event_carries_the_stacks_lines_and_the_account_total(engine, capsys, tmp_path):
    for flags in TWO:
        provision_stack(engine, **flags)
    receiver = Receiver()
    try:
        (tmp_path / "fedi.toml").write_text(
            'software = "lemmy"\nsize = "small"\ndomain = "b.example.org"\n'
            f'[coop]\ndues = 3\nperiod = "month"\nmembers = 10\n[hooks]\nurls = ["{receiver.url}"]\n'
        )
        data = run_json(capsys, "coop", "monthly", "--no-announce")
        [(msg_id, payload)] = receiver.accepted
    finally:
        receiver.stop()
    assert msg_id == data["events"][0] and payload["type"] == "cost.monthly"
    event = payload["data"]
    assert event["stack"] == "b-example-org" and event["dues_basis"] == "account"
    lines = [line["name"] for line in event["cost"]["lines"]]
    assert lines[0] == "server cx33 (fsn1)" and lines[-1] == "share of object storage base"
    assert event["cost"]["total_gross"] == pytest.approx(11.04 + 2.97, abs=1e-9)
    assert event["account"]["total_gross"] == 23.69 and len(event["account"]["stacks"]) == 2
    assert event["dues"]["cost_month"] == 23.69 == data["dues"]["cost_month"]
    assert data["account"]["total_net"] == event["account"]["total_net"]


def test_a_local_coop_has_no_hetzner_account(engine, capsys, tmp_path):
    provision_stack(engine, **TWO[0])
    (tmp_path / "fedi.toml").write_text(
        'provider = "local"\nsoftware = "lemmy"\nsize = "tiny"\n[coop]\ndues = 3\nperiod = "month"\nmembers = 5\n'
    )
    data = run_json(capsys, "coop", "dues")
    assert data["basis"] == "one stack alone" and data["cost_month"] == 0 and data["members_to_cover"] == 0
