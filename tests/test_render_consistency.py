"""Cross-file consistency: one domain everywhere, every URL/DSN pointing at something that listens
there, shared secrets equal in every file, limits that must agree agreeing."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import hjson
import pytest
import yaml

from provision.sizing import sizing
from provision.spec import build_spec
from tests.support.render_cases import COMBOS, DOMAIN, STORAGE, dotenv, read, rendered

ALL = [(sw, size, v) for sw, size in COMBOS for v in ("plain",)] + [
    (sw, "large", "storage") for sw in ("mastodon", "lemmy", "kbin")
]


def _conf_lines(text: str) -> dict[str, str]:
    """`key value` / `key = value` lines (postgres, valkey), comments dropped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = _split(line)
        out[key] = value
    return out


def _split(line: str) -> tuple[str, str, str]:
    if "=" in line.split()[0] or (len(line.split()) > 1 and line.split()[1] == "="):
        key, _, value = line.partition("=")
        return key.strip(), "=", value.strip().strip("'")
    key, _, value = line.partition(" ")
    return key.strip(), " ", value.strip()


class Net:
    """What listens where (host, port), and every (host, port) some file points at."""

    def __init__(self) -> None:
        self.listens: set[tuple[str, int]] = set()
        self.targets: list[tuple[str, tuple[str, int]]] = []

    def target(self, where: str, url: str, default_port: int | None = None) -> None:
        parts = urlsplit(url if "://" in url else f"tcp://{url}")
        host = parts.hostname or ""
        port = parts.port or default_port
        assert port, f"{where}: no port in {url!r}"
        self.targets.append((where, (host, port)))


def _listeners_and_targets(bundle, software: str) -> Net:
    net = Net()
    pg = _conf_lines(read(bundle, "postgres"))
    assert pg["listen_addresses"] == "localhost"
    net.listens.add(("127.0.0.1", int(pg["port"])))
    files = bundle.manifest["files"]
    if "valkey" in files:
        vk = _conf_lines(read(bundle, "valkey"))
        assert vk["bind"].split()[0] == "127.0.0.1"
        net.listens.add(("127.0.0.1", int(vk["port"])))
    ansible = yaml.safe_load(read(bundle, "ansible-vars"))
    if ansible["fedi_rabbitmq_enabled"]:
        net.listens.add(("127.0.0.1", 5672))  # Debian's rabbitmq-server default, bound to loopback by the playbook
    compose = yaml.safe_load(read(bundle, "compose"))
    services = compose["services"]

    if software == "mastodon":
        env = dotenv(read(bundle, "app-config"))
        for name, svc in services.items():
            e = svc.get("environment", {})
            if "PORT" in e:
                assert e["BIND"] == "127.0.0.1", name
                net.listens.add((e["BIND"], int(e["PORT"])))
        net.target(".env.production DB", f"{env['DB_HOST']}:{env['DB_PORT']}")
        net.target(".env.production REDIS", f"{env['REDIS_HOST']}:{env['REDIS_PORT']}")
    elif software == "lemmy":
        conf = hjson.loads(read(bundle, "app-config"))
        net.listens.add((conf["bind"], int(conf["port"])))
        pictrs = dotenv(read(bundle, "app-pictrs"))
        net.listens.add(tuple(_hostport(pictrs["PICTRS__SERVER__ADDRESS"])))
        ui = services["lemmy-ui"]["environment"]
        net.listens.add(tuple(_hostport(ui["LEMMY_UI_HOST"])))
        net.target("lemmy.hjson database.uri", conf["database"]["uri"], 5432)
        net.target("lemmy.hjson pictrs.url", conf["pictrs"]["url"])
        net.target("lemmy-ui LEMMY_UI_LEMMY_INTERNAL_HOST", ui["LEMMY_UI_LEMMY_INTERNAL_HOST"])
        assert ui["LEMMY_UI_LEMMY_EXTERNAL_HOST"] == DOMAIN
    else:
        env = dotenv(read(bundle, "app-config"))
        php = services["php"]["environment"]
        assert php["CADDY_SERVER_EXTRA_DIRECTIVES"] == "bind 127.0.0.1"
        port = int(env["SERVER_NAME"].lstrip(":"))
        net.listens.add(("127.0.0.1", port))
        assert php["CADDY_GLOBAL_OPTIONS"] == "auto_https off"
        net.listens.add(tuple(_hostport(php["CADDY_ADMIN"])))
        net.target(".env DATABASE_URL", env["DATABASE_URL"])
        net.target(".env REDIS_DNS", env["REDIS_DNS"])
        net.target(".env MERCURE_URL", env["MERCURE_URL"])
        if env["MESSENGER_TRANSPORT_DSN"].startswith("amqp://"):
            net.target(".env MESSENGER_TRANSPORT_DSN", env["MESSENGER_TRANSPORT_DSN"])
        else:
            assert env["MESSENGER_TRANSPORT_DSN"] == "doctrine://default"

    for name, svc in services.items():  # healthchecks probe what the service itself listens on
        test = " ".join(svc.get("healthcheck", {}).get("test", []))
        for url in re.findall(r"http://[0-9.]+:\d+[^\s'\"|]*", test):
            net.target(f"compose {name} healthcheck", url)
    for target in re.findall(r"reverse_proxy((?: [0-9.]+:\d+)+)", read(bundle, "proxy")):
        for hostport in target.split():
            net.target("Caddyfile reverse_proxy", hostport)
    return net


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


@pytest.mark.parametrize(("software", "size", "variant"), ALL)
def test_every_url_points_at_a_listener(software, size, variant):
    bundle, _ = rendered(software, size, variant)
    net = _listeners_and_targets(bundle, software)
    assert all(host == "127.0.0.1" for host, _ in net.listens), net.listens  # loopback only
    for where, target in net.targets:
        assert target in net.listens, f"{where} points at {target}, where nothing listens ({sorted(net.listens)})"
    # and every app listener is used by the proxy or a peer
    proxied = {t for w, t in net.targets if w == "Caddyfile reverse_proxy"}
    assert proxied, "the Caddyfile proxies to nothing"


def test_consistency_check_can_fail():
    net = Net()
    net.listens.add(("127.0.0.1", 3000))
    net.target("x", "http://127.0.0.1:3001/")
    assert net.targets[0][1] not in net.listens


@pytest.mark.parametrize(("software", "size", "variant"), ALL)
def test_same_domain_everywhere(software, size, variant):
    bundle, _ = rendered(software, size, variant)
    allowed = {
        DOMAIN,
        "acme-v02.api.letsencrypt.org",
        "acme-staging-v02.api.letsencrypt.org",
        "smtp.example.net",
        "fsn1.your-objectstorage.com",
        "ghcr.io",  # image registries
        "docker.io",
        "social-example-org-media.fsn1.your-objectstorage.com",
        STORAGE.public_host,
    }
    hostname = re.compile(r"(?<![\w@.-])((?:[a-z0-9-]+\.)+(?:org|com|net|io|tld|de))\b")
    for role, rel in bundle.manifest["files"].items():
        if role.endswith("-script") or role.startswith("app-oauth"):
            continue
        text = (bundle.root / rel).read_text()
        values = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith(("#", ";")))  # not comments
        for host in hostname.findall(unquote(values)):
            assert host in allowed, f"{rel}: unexpected host {host!r}"
    assert f"\n{DOMAIN} {{\n" in read(bundle, "proxy")
    assert yaml.safe_load(read(bundle, "ansible-vars"))["fedi_domain"] == DOMAIN
    if software == "mastodon":
        assert dotenv(read(bundle, "app-config"))["LOCAL_DOMAIN"] == DOMAIN
    elif software == "lemmy":
        conf = hjson.loads(read(bundle, "app-config"))
        assert conf["hostname"] == DOMAIN and conf["cors_origin"] == f"https://{DOMAIN}"
    else:
        env = dotenv(read(bundle, "app-config"))
        assert env["KBIN_DOMAIN"] == DOMAIN
        assert urlsplit(env["MERCURE_PUBLIC_URL"]).hostname == DOMAIN


@pytest.mark.parametrize(("software", "size", "variant"), ALL)
def test_shared_secrets_match_across_files(software, size, variant):
    bundle, secrets = rendered(software, size, variant)
    ansible = yaml.safe_load(read(bundle, "ansible-vars"))
    restic = dotenv(read(bundle, "backup-env"))
    assert restic["RESTIC_PASSWORD"] == secrets["restic_password"]
    assert restic["RESTIC_REPOSITORY"] == ansible["fedi_backup_repository"]
    assert restic["FEDI_DB_NAME"] == ansible["fedi_db_name"]
    assert ansible["fedi_db_password"] == secrets["db_password"]
    assert ansible["fedi_admin_password"] == secrets["admin_password"]
    if "valkey" in bundle.manifest["files"]:
        requirepass = _conf_lines(read(bundle, "valkey"))["requirepass"]
        assert requirepass == ansible["fedi_valkey_password"] == secrets["valkey_password"]
    if software == "mastodon":
        env = dotenv(read(bundle, "app-config"))
        assert (env["DB_USER"], env["DB_NAME"], env["DB_PASS"]) == (
            ansible["fedi_db_user"],
            ansible["fedi_db_name"],
            secrets["db_password"],
        )
        assert env["REDIS_PASSWORD"] == secrets["valkey_password"]
    elif software == "lemmy":
        conf = hjson.loads(read(bundle, "app-config"))
        pictrs = dotenv(read(bundle, "app-pictrs"))
        assert conf["pictrs"]["api_key"] == pictrs["PICTRS__SERVER__API_KEY"] == secrets["pictrs_api_key"]
        uri = urlsplit(conf["database"]["uri"])
        assert (uri.username, unquote(uri.password), uri.path.lstrip("/")) == (
            ansible["fedi_db_user"],
            secrets["db_password"],
            ansible["fedi_db_name"],
        )
        assert conf["setup"]["admin_password"] == secrets["admin_password"]
    else:
        env = dotenv(read(bundle, "app-config"))
        db = urlsplit(env["DATABASE_URL"])
        assert (db.username, db.password, db.path.lstrip("/")) == (
            ansible["fedi_db_user"],
            secrets["db_password"],
            ansible["fedi_db_name"],
        )
        assert env["POSTGRES_PASSWORD"] == secrets["db_password"]
        assert urlsplit(env["REDIS_DNS"]).username == env["VALKEY_PASSWORD"] == secrets["valkey_password"]
        assert env["MERCURE_JWT_SECRET"] == env["MERCURE_PUBLISHER_JWT_KEY"] == env["MERCURE_SUBSCRIBER_JWT_KEY"]
        assert env["RABBITMQ_PASSWORD"] == ansible["fedi_rabbitmq_password"] == secrets["rabbitmq_password"]
        if env["MESSENGER_TRANSPORT_DSN"].startswith("amqp://"):
            assert urlsplit(env["MESSENGER_TRANSPORT_DSN"]).password == secrets["rabbitmq_password"]


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_limits_agree(software, size):
    bundle, _ = rendered(software, size)
    s = sizing(build_spec({"software": software, "size": size, "domain": DOMAIN}))
    limit = s.upload_limit_mb
    caddy_mb = int(re.search(r"max_size (\d+)MiB", read(bundle, "proxy")).group(1))
    assert limit <= caddy_mb <= limit + 1
    assert yaml.safe_load(read(bundle, "ansible-vars"))["fedi_upload_limit_mb"] == limit
    pg = _conf_lines(read(bundle, "postgres"))
    assert pg["password_encryption"] == "scram-sha-256"
    assert int(pg["max_connections"]) == s.postgres.max_connections
    assert pg["shared_buffers"] == f"{s.postgres.shared_buffers_mb}MB"
    compose = yaml.safe_load(read(bundle, "compose"))
    if software == "mastodon":
        env = dotenv(read(bundle, "app-config"))
        pools = 0
        for name, svc in compose["services"].items():
            pool = int(svc["environment"]["DB_POOL"])
            pools += pool * (int(env["WEB_CONCURRENCY"]) if name == "web" else 1)
            if name.startswith("sidekiq"):
                assert svc["command"][svc["command"].index("-c") + 1] == str(pool)  # DB_POOL = threads
        assert pools < int(pg["max_connections"])  # room for backups, migrations, the admin
    elif software == "lemmy":
        pictrs = dotenv(read(bundle, "app-pictrs"))
        assert int(pictrs["PICTRS__MEDIA__MAX_FILE_SIZE"]) == limit
        assert hjson.loads(read(bundle, "app-config"))["database"]["pool_size"] < int(pg["max_connections"])
    else:
        php = read(bundle, "app-php")
        assert f"upload_max_filesize = {limit}M" in php
        env = dotenv(read(bundle, "app-config"))
        assert int(env["MBIN_MAX_IMAGE_BYTES"]) <= limit * 1024 * 1024
        assert compose["services"]["messenger"]["deploy"]["replicas"] == s.tuning.messenger_workers
        assert (env["MESSENGER_TRANSPORT_DSN"].startswith("amqp://")) == (s.tuning.queue_transport == "amqp")
    if "valkey" in bundle.manifest["files"]:
        vk = _conf_lines(read(bundle, "valkey"))
        assert vk["maxmemory"] == f"{s.valkey.maxmemory_mb}mb"
        assert vk["maxmemory-policy"] == s.valkey.maxmemory_policy
