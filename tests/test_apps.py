"""The app catalog (provision/apps/): every app is sized, rendered, checked against its catalog entry and
health-checked the same way, and a fourth app needs its catalog module, its templates and its start tasks,
and no edit of shared code (a made-up app is registered here and goes through the same steps)."""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_health import DOMAIN, Site, app_routes, make_ca, serving

from provision import apps
from provision.apps import AdminAccount, App, BundleFile, CheckFailed, Cleanup, Tuning, field_of
from provision.billing import coop, funding
from provision.lifecycle import health
from provision.model import HostAccess, StackOutputs
from provision.render.bundle import render_bundle
from provision.render.resources import ansible_dir, templates_dir
from provision.render.secrets import generate_secrets
from provision.sizing import HEADROOM, sizing
from provision.spec import SIZES, build_spec

PROVISION = Path(__file__).resolve().parents[1] / "provision"
APP_NAMES = [app.name for app in apps.all_apps()]


def render(app: App, size: str, out: Path) -> tuple[Any, Any, dict[str, str]]:
    spec = build_spec({"software": app.software[0], "size": size, "domain": DOMAIN, "provider": "local"})
    secrets = generate_secrets(spec)
    return spec, render_bundle(spec, sizing(spec), secrets, storage=None, out=out), secrets


def check_rendered(app: App, size: str, tmp_path: Path) -> None:
    """What every app's bundle must show of its catalog entry."""
    spec, bundle, secrets = render(app, size, tmp_path / size)
    s = sizing(spec)
    assert spec.app == app.name and s.tuning == app.tuning[size]
    assert sum(s.memory_budget().values()) <= s.server.ram_mb * HEADROOM, s.memory_budget()
    assert s.postgres.max_connections >= app.tuning[size].db_connections() + 10
    assert set(app.secrets()) <= set(secrets)
    assert ("valkey_password" in secrets) == ("valkey" in app.services)
    m = bundle.manifest
    assert (m["app"], m["app_version"], m["images"]) == (app.name, app.version, dict(app.images))
    for f in app.bundle_files:
        assert m["files"][f.role] == f.path and (bundle.root / f.path).is_file(), f
    assert ("valkey" in m["files"]) == ("valkey" in app.services)
    ansible_vars = yaml.safe_load(bundle.path("ansible-vars").read_text())
    assert ansible_vars["fedi_app"] == app.name
    assert ansible_vars["fedi_app_uid"] == app.uid
    assert ansible_vars["fedi_images"] == list(app.images.values())
    assert ansible_vars["fedi_upload_limit_mb"] == app.upload_limit_mb
    assert ansible_vars["fedi_valkey_enabled"] == ("valkey" in app.services)
    assert ansible_vars["fedi_rabbitmq_enabled"] == ("rabbitmq" in app.services)
    compose = yaml.safe_load(bundle.path("compose").read_text())
    assert set(compose["services"]) and all(isinstance(v, dict) for v in compose["services"].values())


@pytest.mark.parametrize("name", APP_NAMES)
def test_every_app_of_the_catalog_renders_what_its_entry_says(name: str, tmp_path: Path) -> None:
    for size in SIZES:
        check_rendered(apps.get(name), size, tmp_path)


@pytest.mark.parametrize("name", APP_NAMES)
def test_every_app_has_its_templates_and_start_tasks(name: str) -> None:
    app = apps.get(name)
    for f in app.bundle_files:
        assert not f.template or (templates_dir() / f.template).is_file(), f
    assert (templates_dir() / "caddy" / f"{name}.caddy.j2").is_file()
    assert (ansible_dir() / "roles" / "app" / "tasks" / f"start-{name}.yml").is_file()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = make_ca("fedi test CA")
    return {"ca": ca, "bundle": ca.pem(tmp_path / "ca.pem"), "tmp": tmp_path}


@pytest.fixture
def site(pki: dict[str, Any]) -> Iterator[Site]:
    with serving(Site(), pki) as s:
        yield s


def healthy(site: Site, pki: dict[str, Any], name: str) -> health.HealthReport:
    target = health.Target(
        DOMAIN, name, address="127.0.0.1", https_port=site.https_port, http_port=site.http_port, ca_bundle=pki["bundle"]
    )
    return health.check(target)


@pytest.mark.parametrize("name", APP_NAMES)
def test_every_app_of_the_catalog_is_health_checked_the_same_way(site: Site, pki: dict[str, Any], name: str) -> None:
    site.routes = app_routes(name)
    report = healthy(site, pki, name)
    assert report.ok, report.line()
    assert [c.name for c in report.checks] == [name for name, _ in health.CHECKS]
    details = {c.name: c.detail for c in report.checks}
    assert details["nodeinfo"].startswith(f"{apps.get(name).nodeinfo_name} ")
    assert details["actor"].startswith(f"https://{DOMAIN}{apps.get(name).actor_path} ")


def test_the_registries_a_local_machine_needs_come_from_the_catalog() -> None:
    from provision.providers.local import net

    assert net.registries() == (("registry-1.docker.io", 443), ("ghcr.io", 443))


def test_kbin_resolves_to_mbin_in_the_catalog_only() -> None:
    assert apps.get("kbin") is apps.get("mbin") and apps.app_name("kbin") == "mbin"
    assert build_spec({"software": "kbin", "size": "tiny", "domain": DOMAIN}).app == "mbin"
    assert apps.software_names() == ("mastodon", "lemmy", "kbin")  # what --software accepts, in this order
    with pytest.raises(ValueError, match="unknown app"):
        apps.get("pleroma")


def _quoted_app_names(path: Path, names: set[str]) -> list[str]:
    """String constants in ``path`` that are an app's name or a software name (docstrings and comments aside)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f"{path.relative_to(path.parents[1])}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings
    ]


def test_no_shared_module_names_an_app() -> None:
    """Only the catalog knows the apps: shared code asks it, so a fourth app edits none of it."""
    names = set(APP_NAMES) | set(apps.software_names())
    shared = [p for p in sorted(PROVISION.rglob("*.py")) if (PROVISION / "apps") not in p.parents]
    assert len(shared) > 20
    found = [hit for p in shared for hit in _quoted_app_names(p, names)]
    assert not found, found


def test_the_check_finds_a_module_that_names_an_app(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""mastodon"""\n\n# "mbin"\nif app == "lemmy":\n    pass\n')
    (hit,) = _quoted_app_names(sample, {"mastodon", "lemmy", "mbin"})
    assert hit.endswith("sample.py:4: 'lemmy'")


# ---- a fourth app: one catalog module (here: this entry), its templates and its start tasks ----------


@dataclass(frozen=True)
class FourthTuning(Tuning):
    workers: int

    def memory_mb(self) -> dict[str, int]:
        return {"fourth": 200 + 50 * self.workers}

    def db_connections(self) -> int:
        return 2 * self.workers


def _fourth_api(get_json: Any, domain: str) -> str:
    data = get_json("/api/fourth/instance")
    if field_of(data, "host") != domain:
        raise CheckFailed(f"/api/fourth/instance names {field_of(data, 'host')!r}, not {domain!r}")
    return f"/api/fourth/instance: fourth {data.get('version', '?')}"


def _fourth_announce(
    spec: Any, report: Any, provider: Any, outputs: Any, *, base_url: str, verify: Any = True, run: Any = None
) -> str:
    return f"posted on {base_url} for {outputs.stack}: {funding.funding_text(report).splitlines()[0]}"


FOURTH = App(
    name="fourth",
    software=("fourth", "quatre"),
    note="quatre is what fourth was called before; fedi deploys fourth.",
    version="1.2.3",
    pins={"fourth": "1.2.3"},
    images={"fourth": "ghcr.io/example/fourth:1.2.3"},
    ports={"fourth": 7070},
    media_path="files",
    uid="1234:1234",
    services=frozenset({"valkey"}),
    upload_limit_mb=42,
    bundle_files=(
        BundleFile("compose", "fourth/compose.yaml.j2", "app/compose.yaml"),
        BundleFile("app-config", "fourth/env.j2", "app/.env", private=True),
    ),
    tuning={size: FourthTuning(n) for n, size in enumerate(SIZES, start=1)},
    secrets=lambda: {"fourth_secret": "s" * 32},
    nodeinfo_name="fourth",
    actor_path="/instance-actor",
    api_check=_fourth_api,
    announce=_fourth_announce,
    cleanup=Cleanup(
        doc=("fourth prune --older-than $FEDI_MEDIA_DAYS   (cached remote files)",),
        services="'fourth*'",
        commands=('in_app fourth prune --older-than "$FEDI_MEDIA_DAYS"',),
    ),
    admin_account=AdminAccount(
        service="fourth",
        commands=lambda run, name, email, role: [[*run, "fourth", "make-user", name, email, f"--{role}"]],
        refused={"moderator": "fourth has no moderators"},
    ),
)

FOURTH_TEMPLATES = {
    "fourth/compose.yaml.j2": (
        "name: fedi\nservices:\n  fourth:\n    image: {{ images.fourth | compose }}\n"
        "    mem_limit: {{ sizing.container_memory_mb('fourth') }}m\n"
        '    environment:\n      PORT: "{{ ports.fourth }}"\n      WORKERS: "{{ sizing.tuning.workers }}"\n'
    ),
    "fourth/env.j2": "SECRET={{ secrets.fourth_secret | dotenv }}\nMEDIA={{ media.public_url | dotenv }}\n",
    "caddy/fourth.caddy.j2": "\thandle {\n\t\treverse_proxy {{ loopback }}:{{ ports.fourth }}\n\t}\n",
}


@pytest.fixture
def fourth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The fourth app registered, with its templates beside a copy of the shared ones."""
    root = tmp_path / "templates"
    shutil.copytree(templates_dir(), root)
    for rel, text in FOURTH_TEMPLATES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr("provision.render.bundle.templates_dir", lambda: root)
    apps.register(FOURTH)
    try:
        yield FOURTH
    finally:
        del apps.CATALOG["fourth"]


def test_a_fourth_app_is_sized_rendered_and_checked_like_the_others(fourth: App, tmp_path: Path) -> None:
    assert apps.software_names()[-2:] == ("fourth", "quatre") and apps.get("quatre") is fourth
    for size in SIZES:
        check_rendered(fourth, size, tmp_path)
    _, bundle, secrets = render(fourth, "small", tmp_path / "again")
    assert "SECRET=" + "s" * 32 in (bundle.root / "app/.env").read_text()
    assert f"https://{DOMAIN}/files" in (bundle.root / "app/.env").read_text()
    assert f"reverse_proxy 127.0.0.1:{fourth.ports['fourth']}" in bundle.path("proxy").read_text()
    assert 'WORKERS: "2"' in bundle.path("compose").read_text()
    assert secrets["fourth_secret"] == "s" * 32 and secrets["valkey_password"]
    cleanup = (bundle.root / "bin/fedi-cleanup").read_text()
    assert "#   fourth    fourth prune --older-than $FEDI_MEDIA_DAYS   (cached remote files)" in cleanup
    assert "    fourth) SERVICE=$(running_service 'fourth*') || SERVICE=\"\" ;;" in cleanup
    assert '    fourth)\n      in_app fourth prune --older-than "$FEDI_MEDIA_DAYS"\n      ;;' in cleanup


def test_a_fourth_app_is_health_checked_and_announces_through_the_catalog(
    fourth: App, site: Site, pki: dict[str, Any]
) -> None:
    routes = app_routes("mastodon")
    routes["/nodeinfo/2.1"] = lambda: (200, {"version": "2.1", "software": {"name": "fourth", "version": "1.2.3"}})
    routes.pop("/api/v2/instance")
    routes["/api/fourth/instance"] = lambda: (200, {"host": DOMAIN, "version": "1.2.3"})
    actor = routes.pop("activitypub /actor")
    site.routes = routes
    report = healthy(site, pki, "fourth")
    assert not report.ok and [c.name for c in report.failed] == ["actor"]  # not where the catalog says
    routes["activitypub /instance-actor"] = actor
    assert healthy(site, pki, "fourth").ok
    routes["/api/fourth/instance"] = lambda: (200, {"host": "elsewhere.example", "version": "1.2.3"})
    report = healthy(site, pki, "fourth")
    assert [(c.name, c.detail) for c in report.failed] == [
        ("api", f"/api/fourth/instance names 'elsewhere.example', not {DOMAIN!r}")
    ]

    class Provider:
        def outputs(self, stack: str) -> StackOutputs:
            return StackOutputs(stack, "local", HostAccess("10.0.0.2"))

    class Report:
        def summary(self) -> str:
            return "paid up"

    spec = build_spec({"software": "quatre", "size": "tiny", "domain": DOMAIN, "provider": "local"})
    said = coop.announce(spec, Report(), Provider())
    assert said.startswith(f"posted on https://{DOMAIN} for {spec.stack_name}: **Funding, ")


def test_a_fourth_apps_admin_accounts_come_from_its_catalog_entry(fourth: App) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from provision.access import admins
    from provision.errors import ValidationError

    key = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    with pytest.raises(ValidationError, match="fourth has no moderators"):
        admins.make("erin", key, "quatre", [], app_role="moderator", email="erin@example.org")
    erin = admins.make("erin", key, "quatre", [], app_role="admin", email="erin@example.org")
    compose = ["docker", "compose", "--project-directory", "/opt/fedi/app", "-f", "/opt/fedi/app/compose.yaml"]
    run = [*compose, "run", "--rm", "--no-deps", "-T", "fourth"]
    assert admins.app_account_argvs("quatre", erin) == [
        [*run, "fourth", "make-user", "erin", "erin@example.org", "--admin"]
    ]
