"""The Hetzner stack program under Pulumi's mocks, and the policies that must always hold.

Tests decorated with ``@pulumi.runtime.test`` return an Output whose ``apply`` holds the assertions;
the decorator waits for it, so a failing assertion fails the test (``test_a_wrong_assertion_fails``
proves it). Policy tests run the whole program through ``provision.providers.hetzner.offline.run`` (the same mocks)
and assert on every declared resource.
"""

from __future__ import annotations

import pulumi
import pytest

from provision.providers.hetzner import offline
from stacks.config import bucket_names, host_key_fingerprint, label_value, relative_name
from stacks.hetzner import declare
from tests.support.stack_fixtures import HOST_KEY_PUB, config_of


@pytest.fixture
def mocks():
    m = offline.mocks_class()()
    pulumi.runtime.set_mocks(m, project="fedi", stack="test", preview=False)
    return m


@pulumi.runtime.test
def test_server_type_image_location_and_protection_on_production(mocks):
    d = declare(config_of(size="medium", location="hel1"))

    def check(args):
        server_type, image, location, delete_p, rebuild_p, keep_disk = args
        assert (server_type, image, location) == ("cx43", "debian-13", "hel1")
        assert delete_p is True and rebuild_p is True
        assert keep_disk is True

    s = d.server
    return pulumi.Output.all(
        s.server_type, s.image, s.location, s.delete_protection, s.rebuild_protection, s.keep_disk
    ).apply(check)


@pulumi.runtime.test
def test_no_protection_on_ephemeral_stacks_and_expiry_label(mocks):
    d = declare(config_of(ephemeral=True, ttl_hours=2))

    def check(args):
        delete_p, rebuild_p, labels, ip_protect = args
        assert delete_p is False and rebuild_p is False and ip_protect is False
        assert labels["fedi-ephemeral"] == "true"
        assert int(labels["fedi-expires"]) == 1_800_000_000 + 2 * 3600

    return pulumi.Output.all(
        d.server.delete_protection, d.server.rebuild_protection, d.server.labels, d.ipv4.delete_protection
    ).apply(check)


@pulumi.runtime.test
def test_primary_ips_outlive_the_server(mocks):
    d = declare(config_of())

    def check(args):
        auto4, auto6, type4, type6 = args
        assert auto4 is False and auto6 is False
        assert (type4, type6) == ("ipv4", "ipv6")

    return pulumi.Output.all(d.ipv4.auto_delete, d.ipv6.auto_delete, d.ipv4.type, d.ipv6.type).apply(check)


@pulumi.runtime.test
def test_firewall_limits_ssh_to_the_allow_list(mocks):
    d = declare(config_of(ssh_allow=["198.51.100.0/24"]))

    def check(rules):
        ssh = [r for r in rules if r.get("port") == "22"]
        assert len(ssh) == 1 and ssh[0]["source_ips"] == ["198.51.100.0/24"]

    return d.firewall.rules.apply(check)


@pulumi.runtime.test
def test_exports_addresses_ids_device_and_fingerprint(mocks):
    d = declare(config_of())

    def check(out):
        assert out["ipv4"].startswith("203.0.113.")
        assert out["ipv6"].startswith("2001:db8:") and out["ipv6"].endswith("::1")
        assert out["server_id"] and out["volume_id"]
        assert out["volume_device"] == f"/dev/disk/by-id/scsi-0HC_Volume_{out['volume_id']}"
        assert out["host_key_fingerprint"] == host_key_fingerprint(HOST_KEY_PUB)
        assert out["media_bucket"] != out["backups_bucket"]
        assert out["s3_endpoint"] == "https://fsn1.your-objectstorage.com"

    return pulumi.Output.all(**d.exports).apply(check)


def test_a_wrong_assertion_fails():
    """The decorator really awaits the Output: an assertion that does not hold fails the test."""
    m = offline.mocks_class()()
    pulumi.runtime.set_mocks(m, project="fedi", stack="test", preview=False)

    @pulumi.runtime.test
    def wrong():
        d = declare(config_of())

        def check(server_type):
            assert server_type == "cx53"

        return d.server.server_type.apply(check)

    with pytest.raises(AssertionError):
        wrong()


# Policy tests over everything the program declares.


def _run(**kw):
    return offline.run(config_of(**kw))


@pytest.mark.parametrize("ssh_allow", [[], ["198.51.100.7/32", "2001:db8:5::/48"]])
def test_policy_only_ssh_http_https_http3_icmp_are_open(ssh_allow):
    run = _run(ssh_allow=ssh_allow)
    rules = run.one("firewall:Firewall").inputs["rules"]
    assert all(r["direction"] == "in" for r in rules)
    opened = sorted((r["protocol"], r.get("port", "")) for r in rules)
    assert opened == [("icmp", ""), ("tcp", "22"), ("tcp", "443"), ("tcp", "80"), ("udp", "443")]
    for r in rules:
        expected = (ssh_allow or ["0.0.0.0/0", "::/0"]) if r.get("port") == "22" else ["0.0.0.0/0", "::/0"]
        assert r["sourceIps"] == expected
    # and the server is behind that firewall
    fw = run.one("firewall:Firewall")
    assert run.one("server:Server").inputs["firewallIds"] == [float(fw.id)]


@pytest.mark.parametrize("production", [True, False])
def test_policy_protection_follows_production(production):
    run = _run(production=production)
    server = run.one("server:Server").inputs
    assert server["deleteProtection"] is production and server["rebuildProtection"] is production
    assert run.one("volume:Volume").inputs["deleteProtection"] is production
    assert all(ip.inputs["deleteProtection"] is production for ip in run.of_type("primaryIp:PrimaryIp"))


def test_policy_every_hetzner_resource_is_labelled():
    run = _run(ephemeral=True, ttl_hours=1)
    labelled = [r for r in run.resources if r.type.startswith("hcloud:") and "labels" in r.inputs]
    assert {r.type.split(":")[-1] for r in labelled} >= {"Server", "Firewall", "PrimaryIp", "Volume", "SshKey"}
    for r in labelled:
        labels = r.inputs["labels"]
        assert labels["managed-by"] == "fedi"
        assert labels["fedi-stack"] == "social-example-org"
        assert labels["fedi-software"] == "lemmy" and labels["fedi-size"] == "small"
        assert labels["fedi-ephemeral"] == "true" and labels["fedi-expires"].isdigit()


def test_policy_dns_a_aaaa_and_caa_only_lets_encrypt():
    run = _run()
    rrsets = {r.inputs["type"]: r.inputs for r in run.of_type("zoneRrset:ZoneRrset")}
    assert set(rrsets) == {"A", "AAAA", "CAA"}
    assert all(r["zone"] == "example.org" and r["name"] == "social" for r in rrsets.values())
    assert rrsets["A"]["records"] == [{"value": run.outputs["ipv4"]}]
    assert rrsets["AAAA"]["records"] == [{"value": run.outputs["ipv6"]}]
    caa = [rec["value"] for rec in rrsets["CAA"]["records"]]
    issuers = [v for v in caa if " issue " in v]
    assert issuers == ['0 issue "letsencrypt.org"']
    assert '0 issuewild ";"' in caa


def test_no_dns_records_when_the_zone_is_elsewhere():
    run = _run(zone="")
    assert run.of_type("zoneRrset:ZoneRrset") == []


def test_policy_buckets_are_distinct_and_backups_are_kept():
    run = _run()
    buckets = {r.name: r.inputs for r in run.of_type("s3Bucket:S3Bucket")}
    assert buckets["media-bucket"]["bucket"] != buckets["backups-bucket"]["bucket"]
    assert buckets["backups-bucket"]["forceDestroy"] is False
    assert all("acl" not in b for b in buckets.values())  # Hetzner answers 403 to the ACL calls
    provider = run.one("pulumi:providers:minio")
    assert provider.inputs["minioServer"] == "fsn1.your-objectstorage.com"
    assert provider.inputs["minioPassword"] == "[secret]"


def test_secrets_are_not_recorded():
    run = _run()
    server = run.one("server:Server").inputs
    assert server["userData"] == "[secret]"
    assert "SKEXAMPLE" not in repr(run.resources)


def test_no_buckets_without_object_storage():
    assert _run(storage=False).of_type("s3Bucket:S3Bucket") == []


def test_volume_never_shrinks():
    from provision.sizing import sizing
    from stacks.config import build_config
    from tests.support.stack_fixtures import bundle_of, spec_of

    spec = spec_of(size="tiny")
    cfg = build_config(
        spec, sizing(spec), bundle_of(), stack="s", ssh_public_key="k", storage=None, dns_zone="", volume_gb=100
    )
    assert cfg.volume_gb == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [("social-example-org", "social-example-org"), ("a.b", "a.b"), ("x" * 80, "x" * 54 + "-")],
)
def test_label_values_fit_hetzner_rules(text, expected):
    value = label_value(text)
    assert len(value) <= 63
    assert value.startswith(expected.rstrip("-"))


def test_bucket_names_and_relative_names():
    media, backups = bucket_names("a" * 80, "social.example.org")
    assert len(media) <= 63 and len(backups) <= 63 and media != backups
    assert relative_name("social.example.org", "example.org") == "social"
    assert relative_name("example.org", "example.org") == "@"
    with pytest.raises(ValueError):
        relative_name("social.example.net", "example.org")
