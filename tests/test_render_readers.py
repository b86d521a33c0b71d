"""Every rendered file read by the real reader that will read it on the server (or its schema).

caddy validate, the compose-spec JSON schema, cloud-init schema (+ a strict top-level key check),
systemd-analyze verify (empty stderr), shellcheck, an hjson parser; and Debian 13's own readers
(tests/support/readers.py): docker compose config, Ruby dotenv, Symfony Dotenv, deser_hjson. A missing tool
skips on a developer machine and FAILS under CI=true (render_cases.tool). User values x readers:
tests/test_render_values.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.support.readers import debian_readers
from tests.support.render_cases import COMBOS, dotenv, read, rendered, tool

VARIANTS = [(sw, size, "plain") for sw, size in COMBOS] + [
    (sw, "medium", variant) for sw in ("mastodon", "lemmy", "kbin") for variant in ("storage", "local", "ephemeral")
]
DATA = Path(__file__).parent / "data"


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


# --- Caddy -------------------------------------------------------------------------------------


def _caddy_validate(path: Path, home: Path) -> subprocess.CompletedProcess:
    # A private HOME/XDG dirs: `tls internal` provisions its CA there; validate obtains no certificate.
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "cfg")}
    return _run([tool("caddy"), "validate", "--adapter", "caddyfile", "--config", str(path)], env=env)


@pytest.mark.parametrize(("software", "size", "variant"), VARIANTS)
def test_caddy_validates(software, size, variant, tmp_path):
    bundle, _ = rendered(software, size, variant)
    result = _caddy_validate(bundle.path("proxy"), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Valid configuration" in result.stdout + result.stderr


def test_a_missing_reader_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        tool("no-such-reader-fedi")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        tool("no-such-reader-fedi")


def test_caddy_validate_can_fail(tmp_path):
    broken = tmp_path / "Caddyfile"
    broken.write_text("social.example.org {\n\tnot_a_directive 127.0.0.1:3000\n}\n")
    assert _caddy_validate(broken, tmp_path).returncode != 0


def _walk(node, key: str):
    """Every value stored under ``key`` anywhere in Caddy's adapted JSON."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def _routes_by_path(node, found: dict) -> dict:
    """path matcher -> upstream dials of the reverse_proxy under it (Mastodon's streaming route)."""
    if isinstance(node, dict):
        paths = [p for m in node.get("match", []) for p in m.get("path", [])]
        if paths and "handle" in node:
            dials = sorted(set(_walk(node["handle"], "dial")))
            for path in paths:
                found[path] = dials
        for v in node.values():
            _routes_by_path(v, found)
    elif isinstance(node, list):
        for item in node:
            _routes_by_path(item, found)
    return found


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_caddy_json_proxies_to_exactly_the_app_processes(software, size, tmp_path):
    """`caddy adapt` gives Caddy's own reading of the Caddyfile: check upstreams, limits, TLS."""
    bundle, _ = rendered(software, size)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "d")}
    result = _run([tool("caddy"), "adapt", "--adapter", "caddyfile", "--config", str(bundle.path("proxy"))], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    conf = json.loads(result.stdout)
    server = conf["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == [":443"]
    assert "automatic_https" not in server  # automatic HTTPS with its HTTP->HTTPS redirect, not disabled
    assert list(_walk(server, "host")) == [["social.example.org"]]
    dials = set(_walk(server, "dial"))
    compose = yaml.safe_load(read(bundle, "compose"))["services"]
    if software == "mastodon":
        web = {f"127.0.0.1:{compose['web']['environment']['PORT']}"}
        streaming = {f"127.0.0.1:{s['environment']['PORT']}" for n, s in compose.items() if n.startswith("streaming")}
        assert dials == web | streaming
        assert set(_routes_by_path(server, {})["/api/v1/streaming*"]) == streaming
    elif software == "lemmy":
        ui = compose["lemmy-ui"]["environment"]
        assert dials == {ui["LEMMY_UI_HOST"], ui["LEMMY_UI_LEMMY_INTERNAL_HOST"]}
        routes = _routes_by_path(server, {})
        assert routes["/api/*"] == routes["/pictrs/*"] == [ui["LEMMY_UI_LEMMY_INTERNAL_HOST"]]
    else:
        assert dials == {"127.0.0.1:" + dotenv(read(bundle, "app-config"))["SERVER_NAME"].lstrip(":")}
    (max_size,) = _walk(server, "max_size")
    limit = yaml.safe_load(read(bundle, "ansible-vars"))["fedi_upload_limit_mb"]
    assert limit * 1024 * 1024 < max_size <= (limit + 1) * 1024 * 1024
    headers = next(_walk(server, "response"))["set"]
    assert {"Strict-Transport-Security", "X-Content-Type-Options", "Referrer-Policy"} <= set(headers)


# --- Compose -----------------------------------------------------------------------------------


@cache
def _compose_validator():
    import jsonschema

    schema = json.loads((DATA / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def _compose_errors(doc) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in _compose_validator().iter_errors(doc)]


@pytest.mark.parametrize(("software", "size", "variant"), VARIANTS)
def test_compose_matches_the_compose_spec(software, size, variant):
    bundle, _ = rendered(software, size, variant)
    doc = yaml.safe_load(read(bundle, "compose"))
    assert _compose_errors(doc) == []
    assert doc["name"] == "fedi"
    for name, svc in doc["services"].items():
        assert svc["network_mode"] == "host", name
        assert "ports" not in svc, name  # host network: binding is the app's own, on 127.0.0.1
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            assert source.startswith(("/srv/fedi/", "./")), (name, vol)
            if source.startswith("./"):
                rel = "app/" + source[2:]
                assert (bundle.root / rel).exists(), f"{name} mounts {source}, which the bundle does not have"
        env_file = svc.get("env_file")
        if env_file:
            assert (bundle.root / "app" / env_file).is_file(), env_file


def test_compose_schema_can_fail():
    assert _compose_errors({"services": {"web": {"image": "x", "network_mode": 5}}})
    assert _compose_errors({"services": {"web": {"image": "x", "bogus_key": 1}}})


# --- cloud-init --------------------------------------------------------------------------------


@cache
def _cloud_config_top_level_keys() -> frozenset[str]:
    """Every top-level key cloud-init's own schema defines (from the installed cloud-init package)."""
    # the interpreter cloud-init itself runs with (its script's shebang), not this test's virtualenv
    interpreter = Path(tool("cloud-init")).read_text().splitlines()[0].removeprefix("#!").split()
    found = _run([*interpreter, "-c", "import cloudinit, os; print(os.path.dirname(cloudinit.__file__))"])
    if found.returncode != 0:
        tool("cloud-init-schema-module-missing")  # fails in CI, skips elsewhere
    path = Path(found.stdout.strip()) / "config/schemas/schema-cloud-config-v1.json"
    schema = json.loads(path.read_text())
    keys: set[str] = set(schema.get("properties", {}))
    for definition in schema.get("$defs", {}).values():
        keys |= set(definition.get("properties", {}))
    return frozenset(keys)


# what fedi's bootstrap-only user-data may contain (DESIGN.md: cloud-init bootstraps only)
BOOTSTRAP_KEYS = {
    "users",
    "disable_root",
    "ssh_pwauth",
    "ssh_deletekeys",
    "ssh_genkeytypes",
    "ssh_keys",
    "package_update",
    "packages",
}


@pytest.mark.parametrize(("software", "size", "variant"), VARIANTS)
def test_cloud_init_schema_and_strict_keys(software, size, variant):
    bundle, secrets = rendered(software, size, variant)
    path = bundle.path("cloud-init")
    result = _run([tool("cloud-init"), "schema", "--config-file", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    text = path.read_text()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    unknown = set(doc) - _cloud_config_top_level_keys()
    assert not unknown, f"cloud-init would silently ignore {unknown}"
    assert set(doc) <= BOOTSTRAP_KEYS, set(doc) - BOOTSTRAP_KEYS
    (user,) = doc["users"]
    assert user["name"] == "fedi" and user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["ssh_authorized_keys"] == [secrets["ssh_client_key_pub"]]
    assert doc["ssh_keys"]["ed25519_private"] == secrets["ssh_host_ed25519_key"]
    assert doc["ssh_keys"]["ed25519_public"] == secrets["ssh_host_ed25519_key_pub"] == bundle.host_public_key
    assert doc["packages"] == ["ansible-core", "python3-cffi-backend"]
    assert secrets["db_password"] not in text and secrets["admin_password"] not in text  # bootstrap only


def test_cloud_init_schema_can_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nusers: 5\n")
    assert _run([tool("cloud-init"), "schema", "--config-file", str(bad)]).returncode != 0
    assert "definitely_not_a_module" not in _cloud_config_top_level_keys()
    assert {"users", "packages", "ssh_keys"} <= _cloud_config_top_level_keys()


# --- systemd -----------------------------------------------------------------------------------

UNIT_ROLES = (
    "backup-service",
    "backup-timer",
    "backup-check-service",
    "backup-check-timer",
    "cleanup-service",
    "cleanup-timer",
)


def _verify_units(bundle, root: Path, with_scripts: bool = True) -> subprocess.CompletedProcess:
    """systemd-analyze verify in a private root laid out like the server (units + scripts)."""
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/local/sbin").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = []
    for role in UNIT_ROLES:
        src = bundle.path(role)
        shutil.copy(src, root / "etc/systemd/system" / src.name)
        units.append(f"/etc/systemd/system/{src.name}")
    if with_scripts:
        for name in ("fedi-backup", "fedi-cleanup"):
            script = root / "usr/local/sbin" / name
            script.write_text("#!/bin/sh\nexit 0\n")
            script.chmod(0o755)
    return _run([tool("systemd-analyze"), "verify", f"--root={root}", *units])


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_systemd_units_verify_clean(software, size, tmp_path):
    bundle, _ = rendered(software, size)
    result = _verify_units(bundle, tmp_path / "root")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_systemd_verify_can_fail(tmp_path):
    bundle, _ = rendered("lemmy", "tiny")
    result = _verify_units(bundle, tmp_path / "root", with_scripts=False)  # ExecStart= points nowhere
    assert result.returncode != 0 or result.stderr


# --- scripts and hjson -------------------------------------------------------------------------


@pytest.mark.parametrize(("software", "size"), COMBOS)
def test_scripts_pass_shellcheck(software, size):
    bundle, _ = rendered(software, size)
    scripts = [bundle.root / rel for role, rel in bundle.manifest["files"].items() if role.endswith("-script")]
    if not scripts:
        pytest.skip("templates/backup/ has no scripts yet")
    result = _run([tool("shellcheck"), "--severity=style", *map(str, scripts)])
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("variant", ["plain", "storage"])
@pytest.mark.parametrize("size", ["tiny", "small", "medium", "large"])
def test_lemmy_hjson_parses(size, variant):
    import hjson

    bundle, _ = rendered("lemmy", size, variant)
    conf = hjson.loads(read(bundle, "app-config"))
    assert set(conf) >= {"hostname", "bind", "port", "database", "pictrs", "setup"}
    # every key fedi writes is one Lemmy's config/defaults.hjson (0.19) defines
    known = {"database", "pictrs", "email", "setup", "hostname", "bind", "port", "tls_enabled", "federation"}
    known |= {"prometheus", "cors_origin", "json_logging"}
    assert set(conf) <= known
    assert set(conf["database"]) <= {"uri", "user", "password", "host", "port", "database", "pool_size"}
    assert set(conf["pictrs"]) <= {
        "url",
        "api_key",
        "cache_external_link_previews",
        "image_mode",
        "proxy_bypass_domains",
        "upload_timeout",
        "max_thumbnail_size",
    }
    assert set(conf["setup"]) <= {"admin_username", "admin_password", "site_name", "admin_email"}
    assert len(conf["setup"]["site_name"]) <= 20


# --- Debian 13's readers: every file whose header names a reader is read by it ---------------------


@pytest.fixture(scope="session")
def readers():
    return debian_readers()


@pytest.mark.parametrize("variant", ["plain", "storage"])
@pytest.mark.parametrize("software", ["mastodon", "lemmy", "kbin"])
def test_debian13_readers_read_every_app_config(readers, software, variant):
    """docker compose 2.26 reads compose.yaml with its env files; the app's own reader reads its
    config and agrees with compose on every key (the headers say both read these files)."""
    bundle, secrets = rendered(software, "small", variant)
    services = readers.compose(bundle.root / "app")
    assert services, "docker compose config found no services"
    if software == "lemmy":
        conf = readers.hjson(read(bundle, "app-config"))
        import hjson

        assert conf == json.loads(json.dumps(hjson.loads(read(bundle, "app-config"))))
        assert conf["setup"]["admin_password"] == secrets["admin_password"]
        pictrs = services["pictrs"]["environment"]
        assert pictrs == dotenv(read(bundle, "app-pictrs"))
        return
    text = read(bundle, "app-config")
    own = readers.ruby_dotenv(text) if software == "mastodon" else readers.symfony_dotenv(text)
    assert own == dotenv(text)  # fedi's own files: no key the simple parser would read differently
    env = next(iter(services.values()))["environment"]
    assert {k: env[k] for k in own} == own
    assert own["DB_PASS" if software == "mastodon" else "POSTGRES_PASSWORD"] == secrets["db_password"]
