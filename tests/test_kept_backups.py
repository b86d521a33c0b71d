"""A domain's kept backups are never orphaned: `fedi up` of a domain whose earlier stack left its backups
(`fedi down` keeps them) stops before it creates anything, and `--new-backups` moves them aside, never
deleting them. Hetzner's backups bucket is a local S3 server (moto); the local provider's is a directory.
The signing of fedi's own S3 requests is checked against botocore's signer."""

from __future__ import annotations

import calendar
import dataclasses
import time

import pytest
from test_backup_support import make_bucket, moto_s3
from test_lifecycle import Recorder

from provision.errors import UsageError
from provision.lifecycle import stack as lifecycle
from provision.providers.hetzner import s3
from provision.providers.hetzner.offline import OfflineEngine
from provision.providers.hetzner.provider import HetznerProvider
from provision.providers.local.provider import LocalProvider
from provision.spec import build_spec
from tests.support.stack_fixtures import isolate, spec_of


@pytest.mark.parametrize(
    ("method", "url", "headers"),
    [
        ("GET", "http://127.0.0.1:9000/bucket-x?list-type=2&prefix=data%2F&continuation-token=a%2Bb%3D", {}),
        ("HEAD", "https://fsn1.your-objectstorage.com/b/config", {}),
        ("PUT", "https://fsn1.your-objectstorage.com/b/restic-before-x/data/ab", {"x-amz-copy-source": "/b/data/ab"}),
        ("DELETE", "https://fsn1.your-objectstorage.com/b/keys/0a%20b", {}),
    ],
)
def test_requests_are_signed_as_botocore_signs_them(method, url, headers):
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, headers={**headers, "x-amz-content-sha256": s3.EMPTY_SHA256})
    S3SigV4Auth(Credentials("AKID", "SECRET"), "s3", "fsn1").add_auth(request)
    now = calendar.timegm(time.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    ours = s3.sign(method, url, headers, access_key="AKID", secret_key="SECRET", region="fsn1", now=now)
    assert ours["Authorization"] == request.headers["Authorization"]


@pytest.fixture(scope="module")
def endpoint():
    with moto_s3() as url:
        yield url


def _boto(endpoint: str):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )


def test_up_of_a_domain_with_a_kept_bucket_refuses_then_new_backups_moves_them_aside(endpoint, monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    spec = spec_of()
    prov = HetznerProvider(
        engine=OfflineEngine(), s3=lambda bucket: s3.S3(dataclasses.replace(bucket, endpoint=endpoint))
    )
    bucket = prov.storage(spec).backups_bucket
    make_bucket(endpoint, bucket)
    boto = _boto(endpoint)
    old = {"config": b"repo", "keys/k1": b"key", "data/0a/0a1": b"pack", "snapshots/s1": b"snap"}
    for key, body in old.items():
        boto.put_object(Bucket=bucket, Key=key, Body=body)

    rec = Recorder()
    with pytest.raises(UsageError) as refused:
        lifecycle.up(spec, prov, lambda _l: None, steps=rec.steps())
    assert refused.value.exit_code == 2
    assert f"s3://{bucket}" in refused.value.line() and "--new-backups" in refused.value.line()
    assert "--from-env" in refused.value.line()
    assert rec.calls == [] and prov.engine.stack_names() == []  # nothing was created, not even secrets

    lines: list[str] = []
    lifecycle.up(spec, prov, lines.append, steps=rec.steps(), new_backups=True)
    keys = {o["Key"] for o in boto.list_objects_v2(Bucket=bucket).get("Contents", [])}
    (prefix,) = {k.split("/", 1)[0] for k in keys}
    assert prefix.startswith("restic-before-") and keys == {f"{prefix}/{k}" for k in old}
    for key, body in old.items():  # every object is still there, whole
        assert boto.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read() == body
    moved = [line for line in lines if "moved the earlier backups aside" in line]
    assert moved and f"RESTIC_REPOSITORY=s3:{prov.storage(spec).endpoint}/{bucket}/{prefix}" in moved[0]
    # The stack exists now: a later `up` converges it, and a set-aside repository is not "kept backups".
    lifecycle.up(spec, prov, lambda _l: None, steps=Recorder().steps())


def test_an_empty_or_missing_bucket_is_no_obstacle(endpoint, monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    spec = spec_of(domain="empty.example.org")
    prov = HetznerProvider(
        engine=OfflineEngine(), s3=lambda bucket: s3.S3(dataclasses.replace(bucket, endpoint=endpoint))
    )
    assert prov.kept_backups(spec) is None  # no bucket at all
    make_bucket(endpoint, prov.storage(spec).backups_bucket)
    assert prov.kept_backups(spec) is None  # a bucket without a repository
    assert HetznerProvider(engine=OfflineEngine()).kept_backups(spec) is None  # offline: nothing is asked


def test_listing_pages_through_a_long_bucket(endpoint):
    name = "many-objects"
    make_bucket(endpoint, name)
    boto = _boto(endpoint)
    for n in range(1005):  # more than one page of 1000
        boto.put_object(Bucket=name, Key=f"data/{n:04d}", Body=b"x")
    client = s3.S3(s3.Bucket(endpoint, "us-east-1", name, "test", "test"))
    assert len(list(client.list_keys())) == 1005


def test_local_kept_backups_directory(fedi_dirs):
    from provision.providers.local import machine

    prov = LocalProvider()
    spec = build_spec({"software": "lemmy", "size": "tiny", "domain": "lemmy.localhost", "provider": "local"})
    assert prov.kept_backups(spec) is None
    repo = machine.machine_dir(spec.stack_name) / "backups" / "restic"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "config").write_text("repo")
    (repo / "snapshots" / "s1").write_text("snap")
    kept = prov.kept_backups(spec)
    assert kept is not None and kept.where == str(repo) and kept.repository == "/var/backups/fedi/restic"
    lines: list[str] = []
    moved = prov.set_aside_backups(spec, kept, lines.append)
    assert not repo.exists() and (machine.machine_dir(spec.stack_name) / "backups").is_dir()
    aside = machine.machine_dir(spec.stack_name) / "backups" / moved.repository.rsplit("/", 1)[1]
    assert str(aside) == moved.where and (aside / "snapshots" / "s1").read_text() == "snap"
    assert moved.repository.startswith("/var/backups/fedi/restic-before-") and moved.repository in lines[0]
    assert prov.kept_backups(spec) is None
    prov.secrets(spec)  # the stack exists now: its own repository is never "kept backups"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "config").write_text("repo")
    assert prov.kept_backups(spec) is None
