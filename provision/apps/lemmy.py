"""Lemmy (with lemmy-ui and pict-rs): what fedi deploys and how it sizes, checks and announces on it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from provision.apps.base import AdminAccount, App, BundleFile, CheckFailed, Cleanup, Tuning, field_of, register

# github.com/LemmyNet/lemmy tags (0.19.20, July 2026, is the newest stable; 1.0.0 is still in beta) and
# lemmy-ansible's VERSION file (0.19.20), which pins lemmy and lemmy-ui to the same version.
LEMMY = "0.19.20"
LEMMY_UI = "0.19.20"
# pict-rs: git.asonix.dog/asonix/pict-rs releases; Lemmy's docker-compose tracks the 0.5 line
# (lemmy-ansible: docker.io/asonix/pictrs:0.5); 0.5.24 is the newest 0.5 patch release.
PICTRS = "0.5.24"


@dataclass(frozen=True)
class LemmyTuning(Tuning):
    """lemmy.hjson `database.pool_size` (default 30 in Lemmy's defaults.hjson); pict-rs media limits."""

    db_pool_size: int
    pictrs_max_file_size_mb: int  # pict-rs [media] max_file_size; Caddy's body limit matches it
    pictrs_max_width: int  # pict-rs [media.image] max_width
    pictrs_max_height: int  # pict-rs [media.image] max_height
    pictrs_max_area: int  # pict-rs [media.image] max_area (pixels)
    pictrs_concurrency: int  # pict-rs [server] client_pool_size / processing concurrency

    def memory_mb(self) -> dict[str, int]:
        return {"lemmy": 300, "lemmy-ui": 250, "pictrs": 150 + 50 * self.pictrs_concurrency}

    def db_connections(self) -> int:
        return self.db_pool_size + 5  # + pict-rs's Postgres repo pool


# defaults.hjson (pool_size 30), lemmy-ansible's Postgres example for the database share, pict-rs defaults
# (max_width/height 10000, max_area 40,000,000) and lemmy-ansible's 20 MB nginx body limit.
TUNING = {
    "tiny": LemmyTuning(10, 20, 10000, 10000, 40_000_000, 1),
    "small": LemmyTuning(20, 20, 10000, 10000, 40_000_000, 2),
    "medium": LemmyTuning(30, 20, 10000, 10000, 40_000_000, 4),
    "large": LemmyTuning(50, 20, 10000, 10000, 40_000_000, 8),
}


def secrets() -> dict[str, str]:
    from provision.render.keys import alnum

    # lemmy.hjson pictrs.api_key and pict-rs's PICTRS__SERVER__API_KEY: the same value.
    return {"pictrs_api_key": alnum(40)}


def api_check(get_json: Any, domain: str) -> str:
    data = get_json("/api/v3/site")  # Lemmy 0.19's API (v4 is Lemmy 1.0's)
    site = field_of(field_of(data, "site_view"), "site")
    actor = str(field_of(site, "actor_id") or "")
    from urllib.parse import urlsplit

    if not data.get("version") or urlsplit(actor).hostname != domain:
        raise CheckFailed(f"/api/v3/site does not describe {domain} (actor_id {actor!r})")
    return f"/api/v3/site: Lemmy {data['version']}"


# ---- the funding announcement ------------------------------------------------------------------------
# Lemmy (0.19) has no announcements; the site sidebar (markdown, on every front page) is the place. fedi
# logs in as the admin (POST /api/v3/user/login), reads the sidebar (GET /api/v3/site) and writes it back
# (PUT /api/v3/site) with its own section replaced between two invisible markdown comments, leaving the
# rest of the sidebar as the admins wrote it. Requests as data; :func:`post` sends them.


def login(username: str, password: str) -> Any:
    from provision.billing.funding import Request

    return Request("POST", "/api/v3/user/login", {"username_or_email": username, "password": password})


def get_site() -> Any:
    from provision.billing.funding import Request

    return Request("GET", "/api/v3/site", bearer=True)


def edit_sidebar(current: str, text: str) -> Any:
    from provision.billing.funding import Request, replace_section

    return Request("PUT", "/api/v3/site", {"sidebar": replace_section(current, text)}, bearer=True)


def post(base_url: str, username: str, password: str, text: str, *, verify: Any = True) -> str:
    """Log in as the admin and put ``text`` in the site sidebar. Returns a line saying what was done."""
    import httpx

    from provision.billing.funding import TIMEOUT_S, send
    from provision.errors import HookError

    with httpx.Client(timeout=TIMEOUT_S, verify=verify, follow_redirects=False) as client:
        jwt = send(client, base_url, login(username, password)).get("jwt")
        if not jwt:
            raise HookError("Lemmy login returned no token (is the admin's e-mail verified?)")
        site = send(client, base_url, get_site(), jwt)
        current = ((site.get("site_view") or {}).get("site") or {}).get("sidebar") or ""
        send(client, base_url, edit_sidebar(current, text), jwt)
    return "funding status written to the Lemmy site sidebar"


def announce(
    spec: Any, report: Any, provider: Any, outputs: Any, *, base_url: str, verify: Any = True, run: Any = None
) -> str:
    """Write the funding status into the site sidebar as the admin (its password from the stored secrets)."""
    from provision.billing.funding import funding_text
    from provision.errors import MissingPrerequisite

    password = provider.stored_secrets(spec.stack_name).get("admin_password", "")
    if not password:
        raise MissingPrerequisite(f"no admin password in the secrets of stack {spec.stack_name}")
    return post(base_url, spec.admin_username, password, funding_text(report), verify=verify)


_LOGIN = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def admin_account(run: list[str], name: str, email: str, role: str) -> list[list[str]]:
    """No Lemmy command creates accounts: the admin signs up on the site, then fedi makes that account an
    instance admin in Lemmy's database (local_user.admin, Lemmy 0.19); psql prints the name it changed."""
    if not _LOGIN.fullmatch(name):  # the name goes into a SQL literal: only a-z 0-9 _ -
        raise ValueError(f"not a login name: {name!r}")
    where = f"person.local AND person.name = '{name}'"
    sql = f"UPDATE local_user SET admin = true FROM person WHERE local_user.person_id = person.id AND {where} RETURNING person.name"  # noqa: E501, S608 - _LOGIN above
    return [["runuser", "-u", "postgres", "--", "psql", "-XtAq", "-v", "ON_ERROR_STOP=1", "-d", "lemmy", "-c", sql]]


APP = register(
    App(
        name="lemmy",
        software=("lemmy",),
        note="",
        version=LEMMY,
        pins={"lemmy": LEMMY, "lemmy-ui": LEMMY_UI, "pictrs": PICTRS},
        images={
            "lemmy": f"docker.io/dessalines/lemmy:{LEMMY}",
            "lemmy-ui": f"docker.io/dessalines/lemmy-ui:{LEMMY_UI}",
            "pictrs": f"docker.io/asonix/pictrs:{PICTRS}",
        },
        # Lemmy's defaults: lemmy 8536, lemmy-ui 1234, pict-rs 8080.
        ports={"lemmy": 8536, "lemmy-ui": 1234, "pictrs": 8080},
        media_path="pictrs",
        uid="991:991",
        services=frozenset(),  # no Redis/Valkey, no queue broker
        upload_limit_mb=20,  # follows pict-rs's max_file_size
        bundle_files=(
            BundleFile("compose", "lemmy/compose.yaml.j2", "app/compose.yaml"),
            BundleFile("app-config", "lemmy/lemmy.hjson.j2", "app/lemmy.hjson", private=True),
            BundleFile("app-pictrs", "lemmy/pictrs.env.j2", "app/pictrs.env", private=True),
        ),
        tuning=TUNING,
        secrets=secrets,
        nodeinfo_name="lemmy",
        # Lemmy 0.19.20: GET / with an ActivityPub Accept header (crates/apub/src/http/routes.rs routes "/" to
        # get_apub_site_http, crates/apub/src/protocol/objects/instance.rs `public_key: PublicKey`); the
        # Caddyfile sends such requests to lemmy, not lemmy-ui.
        actor_path="/",
        api_check=api_check,
        announce=announce,
        cleanup=Cleanup(
            doc=(
                "no cleanup command exists: Lemmy has none, and pict-rs removes proxied media and generated",
                "variants by itself after its [media.retention] periods (7 days by default).",
            ),
            nothing="no cleanup command; pict-rs expires proxied media and variants itself",
        ),
        admin_account=AdminAccount(
            service="lemmy",
            commands=admin_account,
            refused={
                "moderator": "Lemmy has no instance moderators, only instance admins (and moderators of single "
                "communities, which a community's own moderators appoint); use --app-role admin or none"
            },
            signup_first="sign up on the site with that name first, then run `fedi admins add` again",
        ),
    )
)
