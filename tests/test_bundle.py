"""The rendered bundle: every file of the contract, permissions, no secrets in the manifest, no
placeholders, media and mail settings, and atomic writing."""

from __future__ import annotations

import json
import re
import stat

import pytest
import yaml

from provision import apps
from provision.errors import UsageError
from provision.render import bundle as bundle_mod
from provision.render.secrets import generate_secrets
from provision.sizing import sizing
from provision.spec import build_spec
from tests.support.render_cases import COMBOS, DOMAIN, SMTP, SMTP_PASSWORD, STORAGE, dotenv, read, rendered

REQUIRED_ROLES = {
    "cloud-init",
    "compose",
    "app-config",
    "proxy",
    "postgres",
    "backup-service",
    "backup-timer",
    "backup-check-service",
    "backup-check-timer",
    "cleanup-service",
    "cleanup-timer",
    "backup-env",
    "ansible-vars",
    "app-secrets",
}
PRIVATE_ROLES = {
    "app-secrets",
    "cloud-init",
    "app-config",
    "backup-env",
    "ansible-vars",
    "valkey",
    "app-pictrs",
    "app-oauth-private-key",
}


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_every_manifest_file_exists_with_its_mode(software, size):
    bundle, _ = rendered(software, size)
    files = bundle.manifest["files"]
    assert set(files) >= REQUIRED_ROLES
    assert ("valkey" in files) == (software != "lemmy")  # Lemmy uses no Valkey
    on_disk = {str(p.relative_to(bundle.root)) for p in bundle.root.rglob("*") if p.is_file()}
    assert on_disk == set(files.values()) | {"manifest.json"}
    for role, rel in files.items():
        mode = stat.S_IMODE((bundle.root / rel).stat().st_mode)
        if role in PRIVATE_ROLES:
            assert mode == 0o600, (role, oct(mode))
        elif role.endswith("-script"):
            assert mode == 0o755, (role, oct(mode))
        else:
            assert mode & 0o077 in (0o044, 0o055, 0), (role, oct(mode))
    assert stat.S_IMODE(bundle.root.stat().st_mode) == 0o700


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_manifest_describes_the_bundle_without_secrets(software, size):
    bundle, secrets = rendered(software, size)
    m = json.loads((bundle.root / "manifest.json").read_text())
    assert m == bundle.manifest
    app = {"kbin": "mbin"}.get(software, software)
    assert (m["software"], m["app"], m["size"], m["domain"]) == (software, app, size, DOMAIN)
    assert m["app_version"] == apps.get(app).version
    assert m["images"] == dict(apps.get(app).images)
    text = json.dumps(m)
    for name, value in secrets.items():
        for part in value.splitlines() or [value]:
            if len(part) >= 8:
                assert part not in text, f"manifest leaks {name}"


@pytest.mark.parametrize("software", ["mastodon", "lemmy", "kbin"])
def test_secrets_json_holds_the_app_secrets_and_no_key_of_the_stack(software):
    bundle, secrets = rendered(software, "small")
    held = json.loads((bundle.root / bundle.manifest["files"]["app-secrets"]).read_text())
    assert held == {k: v for k, v in secrets.items() if not k.startswith(("ssh_", "restic_password"))}
    assert "db_password" in held and "admin_password" in held
    assert not any(k.startswith("ssh_") for k in held)  # the operator's private key never goes to the server
    assert "restic_password" not in held  # the stack's own repository password, not the data's


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_images_are_pinned_exactly(software, size):
    bundle, _ = rendered(software, size)
    compose = yaml.safe_load(read(bundle, "compose"))
    images = {svc["image"] for svc in compose["services"].values()}
    assert images == set(dict(apps.get(bundle.manifest["app"]).images).values())
    for image in images:
        tag = image.rsplit(":", 1)[1]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), image  # exact release, never latest or a major line


PLACEHOLDERS = re.compile(
    r"ChangeThis|!Change|changeme|CHANGE_ME|domain\.tld|example\.com|\bunset\b|\"string\"|TODO|FIXME|\{\{|\{%|None\b"
)


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_no_placeholders_or_template_leftovers(software, size):
    bundle, _ = rendered(software, size)
    for role, rel in bundle.manifest["files"].items():
        if role.endswith("-script"):
            continue  # shell scripts are checked by shellcheck (and use ${...} legitimately)
        text = (bundle.root / rel).read_text()
        match = PLACEHOLDERS.search(text)
        assert not match, f"{rel}: placeholder {match.group(0)!r}"


def _env(bundle):
    return dotenv(read(bundle, "app-config"))


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_required_app_keys_present_and_nonempty(software, size):
    bundle, secrets = rendered(software, size)
    if software == "mastodon":
        env = _env(bundle)
        required = [
            "LOCAL_DOMAIN",
            "REDIS_HOST",
            "REDIS_PORT",
            "REDIS_PASSWORD",
            "DB_HOST",
            "DB_PORT",
            "DB_NAME",
            "DB_USER",
            "DB_PASS",
            "SECRET_KEY_BASE",
            "OTP_SECRET",
            "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY",
            "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT",
            "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY",
            "VAPID_PRIVATE_KEY",
            "VAPID_PUBLIC_KEY",
            "S3_ENABLED",
            "SMTP_FROM_ADDRESS",
        ]
        assert all(env.get(k) for k in required), [k for k in required if not env.get(k)]
        assert env["SECRET_KEY_BASE"] == secrets["mastodon_secret_key_base"]
        assert env["VAPID_PUBLIC_KEY"] == secrets["mastodon_vapid_public_key"]
    elif software == "lemmy":
        import hjson

        conf = hjson.loads(read(bundle, "app-config"))
        assert conf["hostname"] == DOMAIN
        assert conf["database"]["uri"] and conf["pictrs"]["api_key"] and conf["setup"]["admin_password"]
        assert 10 <= len(conf["setup"]["admin_password"]) <= 60
    else:
        env = _env(bundle)
        keys = (pytest.importorskip("pathlib").Path(__file__).parent / "data/mbin-env-keys.txt").read_text().split()
        missing = [k for k in keys if k not in env]
        assert not missing, f"keys of mbin's .env.example missing: {missing}"
        for key in (
            "APP_SECRET",
            "DATABASE_URL",
            "REDIS_DNS",
            "MESSENGER_TRANSPORT_DSN",
            "MERCURE_JWT_SECRET",
            "OAUTH_PASSPHRASE",
            "OAUTH_ENCRYPTION_KEY",
            "OAUTH_PRIVATE_KEY",
            "KBIN_DOMAIN",
            "MAILER_DSN",
        ):
            assert env[key], key
        assert env["OAUTH_PASSPHRASE"] == secrets["mbin_oauth_passphrase"]
        assert read(bundle, "app-oauth-private-key") == secrets["mbin_oauth_private_key"]
        assert read(bundle, "app-oauth-public-key") == secrets["mbin_oauth_public_key"]


@pytest.mark.parametrize("software", ["mastodon", "lemmy", "kbin"])
def test_media_on_the_data_volume_without_a_bucket(software):
    bundle, _ = rendered(software, "small")
    assert bundle.manifest["media"] == "data-volume"
    restic = dotenv(read(bundle, "backup-env"))
    assert restic["RESTIC_REPOSITORY"] == "/var/backups/fedi/restic"
    assert restic["AWS_ACCESS_KEY_ID"] == "" and restic["AWS_SECRET_ACCESS_KEY"] == ""
    if software == "mastodon":
        assert _env(bundle)["S3_ENABLED"] == "false"
        assert "/srv/fedi/mastodon/system:/mastodon/public/system" in read(bundle, "compose")
    elif software == "lemmy":
        pictrs = dotenv(read(bundle, "app-pictrs"))
        assert pictrs["PICTRS__STORE__TYPE"] == "filesystem"
        assert "/srv/fedi/pictrs:/mnt" in read(bundle, "compose")
    else:
        env = _env(bundle)
        assert env["S3_KEY"] == "" and env["KBIN_STORAGE_URL"] == f"https://{DOMAIN}/media"


@pytest.mark.parametrize("software", ["mastodon", "lemmy", "kbin"])
def test_media_in_the_bucket_with_storage(software):
    bundle, _ = rendered(software, "medium", "storage")
    assert bundle.manifest["media"] == "object-storage"
    restic = dotenv(read(bundle, "backup-env"))
    assert restic["RESTIC_REPOSITORY"] == f"s3:{STORAGE.endpoint}/{STORAGE.backups_bucket}"
    assert restic["AWS_ACCESS_KEY_ID"] == STORAGE.access_key
    assert STORAGE.access_key not in json.dumps(bundle.manifest)
    if software == "mastodon":
        env = _env(bundle)
        assert env["S3_ENABLED"] == "true"
        assert env["S3_BUCKET"] == STORAGE.media_bucket
        assert env["S3_ENDPOINT"] == STORAGE.endpoint
        assert env["S3_REGION"] == STORAGE.region
        assert env["S3_ALIAS_HOST"] == STORAGE.public_host
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (STORAGE.access_key, STORAGE.secret_key)
    elif software == "lemmy":
        p = dotenv(read(bundle, "app-pictrs"))
        assert p["PICTRS__STORE__TYPE"] == "object_storage"
        assert (p["PICTRS__STORE__BUCKET_NAME"], p["PICTRS__STORE__ENDPOINT"]) == (
            STORAGE.media_bucket,
            STORAGE.endpoint,
        )
        assert (p["PICTRS__STORE__ACCESS_KEY"], p["PICTRS__STORE__SECRET_KEY"]) == (
            STORAGE.access_key,
            STORAGE.secret_key,
        )
    else:
        env = _env(bundle)
        assert (env["S3_KEY"], env["S3_SECRET"]) == (STORAGE.access_key, STORAGE.secret_key)
        assert (env["S3_BUCKET"], env["S3_ENDPOINT"], env["S3_REGION"]) == (
            STORAGE.media_bucket,
            STORAGE.endpoint,
            STORAGE.region,
        )
        assert env["KBIN_STORAGE_URL"] == f"https://{STORAGE.public_host}"


@pytest.mark.parametrize("software", ["mastodon", "lemmy", "kbin"])
def test_smtp_password_comes_from_the_environment(software):
    with_mail, _ = rendered(software, "medium", "storage")
    without, _ = rendered(software, "medium")
    assert SMTP_PASSWORD in read(with_mail, "app-config")
    assert SMTP_PASSWORD not in read(without, "app-config")
    text = read(without, "app-config")
    assert "Mail is OFF" in text
    if software == "mastodon":
        assert _env(without)["SMTP_DELIVERY_METHOD"] == "file"
        assert _env(with_mail)["SMTP_SERVER"] == "smtp.example.net"
    elif software == "kbin":
        assert _env(without)["MAILER_DSN"] == "null://null"
        assert _env(with_mail)["MAILER_DSN"].startswith("smtp://postmaster%40social.example.org:")
    else:
        import hjson

        assert "email" not in hjson.loads(text)
        assert hjson.loads(read(with_mail, "app-config"))["email"]["smtp_password"] == SMTP_PASSWORD


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_timers_follow_the_size_schedule(software, size):
    bundle, _ = rendered(software, size)
    sched = sizing(build_spec({"software": software, "size": size, "domain": DOMAIN})).schedule
    for role, calendar in (
        ("backup-timer", sched.backup_on_calendar),
        ("backup-check-timer", sched.check_on_calendar),
        ("cleanup-timer", sched.cleanup_on_calendar),
    ):
        assert f"\nOnCalendar={calendar}\n" in read(bundle, role)
    assert "ExecStart=/usr/local/sbin/fedi-backup\n" in read(bundle, "backup-service")
    assert "ExecStart=/usr/local/sbin/fedi-backup check\n" in read(bundle, "backup-check-service")
    assert "ExecStart=/usr/local/sbin/fedi-cleanup\n" in read(bundle, "cleanup-service")
    for role in ("backup-service", "backup-check-service", "cleanup-service"):
        assert "\nType=oneshot\n" in read(bundle, role)
    restic = dotenv(read(bundle, "backup-env"))
    assert restic["FEDI_KEEP_DAILY"] == str(sched.keep_daily)
    assert restic["FEDI_MEDIA_DAYS"] == str(sched.media_days)


def test_caddy_tls_modes():
    prod, _ = rendered("mastodon", "tiny")
    local, _ = rendered("mastodon", "tiny", "local")
    ephemeral, _ = rendered("mastodon", "tiny", "ephemeral")
    assert "email admin@social.example.org" in read(prod, "proxy")
    assert "acme-v02.api.letsencrypt.org" in read(prod, "proxy") and "tls internal" not in read(prod, "proxy")
    assert "acme-staging-v02.api.letsencrypt.org" in read(ephemeral, "proxy")
    assert "tls internal" in read(local, "proxy") and "acme" not in read(local, "proxy")


def test_ansible_vars_contract():
    bundle, secrets = rendered("kbin", "large")
    v = yaml.safe_load(read(bundle, "ansible-vars"))
    expected = {
        "fedi_app", "fedi_software", "fedi_domain", "fedi_size", "fedi_provider", "fedi_admin_user",
        "fedi_admin_username", "fedi_admin_email", "fedi_admin_password", "fedi_registrations", "fedi_data_dir",
        "fedi_swap_mb", "fedi_ssh_allow", "fedi_db_name", "fedi_db_user", "fedi_db_password", "fedi_valkey_enabled",
        "fedi_valkey_password", "fedi_rabbitmq_enabled", "fedi_rabbitmq_password", "fedi_images",
        "fedi_upload_limit_mb", "fedi_backup_repository",
    }  # fmt: skip
    assert expected <= set(v)
    assert v["fedi_app"] == "mbin" and v["fedi_software"] == "kbin" and v["fedi_admin_user"] == "fedi"
    assert v["fedi_data_dir"] == "/srv/fedi" and v["fedi_ssh_allow"] == []
    assert v["fedi_db_password"] == secrets["db_password"]
    assert v["fedi_images"] == list(dict(apps.get("mbin").images).values())
    assert v["fedi_rabbitmq_enabled"] is True and v["fedi_valkey_enabled"] is True
    lemmy, _ = rendered("lemmy", "tiny")
    lv = yaml.safe_load(read(lemmy, "ansible-vars"))
    assert lv["fedi_valkey_enabled"] is False and lv["fedi_valkey_password"] == ""


def test_refuses_a_non_empty_out_and_leaves_it_alone(tmp_path):
    spec = build_spec({"software": "lemmy", "size": "tiny", "domain": DOMAIN})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        bundle_mod.render_bundle(spec, sizing(spec), generate_secrets(spec), None, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failure_mid_render_leaves_nothing(tmp_path, monkeypatch):
    spec = build_spec({"software": "lemmy", "size": "tiny", "domain": DOMAIN})
    secrets = generate_secrets(spec)
    del secrets["pictrs_api_key"]  # a template needs it: rendering fails part-way through
    parent = tmp_path / "bundles"
    parent.mkdir()
    import jinja2

    with pytest.raises(jinja2.UndefinedError):  # StrictUndefined refuses to render
        bundle_mod.render_bundle(spec, sizing(spec), secrets, None, parent / "out")
    assert list(parent.iterdir()) == []  # neither out nor a temporary directory


@pytest.mark.parametrize("software", ["mastodon", "kbin"])
def test_awkward_smtp_password_survives_compose_env_parsing(software, tmp_path, monkeypatch):
    password = "pa ss#word$HOME\\x/y:z@w"  # space, comment sign, interpolation, backslash, URL syntax
    monkeypatch.setenv("FEDI_SMTP_PASSWORD", password)
    spec = build_spec({"software": software, "size": "tiny", "domain": DOMAIN}, {"smtp": SMTP})
    bundle = bundle_mod.render_bundle(spec, sizing(spec), generate_secrets(spec), None, tmp_path / "b")
    env = dotenv(read(bundle, "app-config"))
    if software == "mastodon":
        assert env["SMTP_PASSWORD"] == password  # single-quoted: compose takes it literally
    else:
        from urllib.parse import unquote, urlsplit

        assert unquote(urlsplit(env["MAILER_DSN"]).password) == password


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"endpoint": "fsn1.your-objectstorage.com"}, "storage/endpoint"),
        ({"endpoint": "http://fsn1.your-objectstorage.com"}, "storage/endpoint"),
        ({"backups_bucket": STORAGE.media_bucket}, "storage/backups_bucket"),
        ({"secret_key": ""}, "storage/secret_key"),
    ],
)
def test_bad_storage_is_refused_before_writing(change, path, tmp_path):
    import dataclasses

    spec = build_spec({"software": "mastodon", "size": "tiny", "domain": DOMAIN})
    storage = dataclasses.replace(STORAGE, **change)
    with pytest.raises(UsageError, match=f"^{path}:") as info:
        bundle_mod.render_bundle(spec, sizing(spec), generate_secrets(spec), storage, tmp_path / "out")
    assert STORAGE.secret_key not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("mode", "enabled", "approval"),
    [("open", "true", "false"), ("approval", "true", "true"), ("closed", "false", "false")],
)
def test_registrations_mode(mode, enabled, approval, tmp_path):
    spec = build_spec({"software": "kbin", "size": "tiny", "domain": DOMAIN}, {"registrations": mode})
    bundle = bundle_mod.render_bundle(spec, sizing(spec), generate_secrets(spec), None, tmp_path / "b")
    env = dotenv(read(bundle, "app-config"))
    assert (env["KBIN_REGISTRATIONS_ENABLED"], env["MBIN_NEW_USERS_NEED_APPROVAL"]) == (enabled, approval)
    # Mastodon and Lemmy keep it in the database: the playbook applies fedi_registrations
    assert yaml.safe_load(read(bundle, "ansible-vars"))["fedi_registrations"] == mode


def test_unicode_domain_is_rendered_in_its_ascii_form(tmp_path):
    spec = build_spec({"software": "mastodon", "size": "tiny", "domain": "Bücher.Example.org"})
    bundle = bundle_mod.render_bundle(spec, sizing(spec), generate_secrets(spec), None, tmp_path / "b")
    assert bundle.manifest["domain"] == "xn--bcher-kva.example.org"
    assert dotenv(read(bundle, "app-config"))["LOCAL_DOMAIN"] == "xn--bcher-kva.example.org"
    assert "\nxn--bcher-kva.example.org {\n" in read(bundle, "proxy")
    assert "ü" not in "".join((bundle.root / rel).read_text() for rel in bundle.manifest["files"].values())
