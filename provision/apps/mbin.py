"""mbin (what `--software kbin` deploys): what fedi deploys and how it sizes, checks and announces on it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from provision.apps.base import AdminAccount, App, BundleFile, CheckFailed, Cleanup, Tuning, field_of, register

# github.com/MbinOrg/mbin tags (v1.10.1, August 2026); images at ghcr.io/mbinorg/mbin, whose docs say to
# pin a release tag in production instead of `latest`.
MBIN = "v1.10.1"

# kbin stopped in 2023; mbin is its maintained continuation with the same configuration lineage, so
# --software kbin deploys mbin and says so. This is the one place that says so.
KBIN_NOTE = "kbin is unmaintained since 2023; fedi deploys mbin, its maintained continuation."
TOKEN_ENV = "FEDI_MBIN_TOKEN"  # an admin OAuth2 token with the admin:instance:information:edit scope


@dataclass(frozen=True)
class MbinTuning(Tuning):
    """mbin docs (docs/02-admin/01-installation): PHP-FPM workers, Symfony Messenger workers, transport."""

    php_workers: int  # php-fpm pm.max_children (~64 MB each, mbin's FPM tuning guide)
    messenger_workers: int  # `messenger:consume` processes (~128 MB each)
    queue_transport: str  # amqp (RabbitMQ from Debian): the only transport mbin's messenger.yaml works with
    rabbitmq_mb: int  # RabbitMQ vm_memory_high_watermark in MB (0 = not deployed)

    def memory_mb(self) -> dict[str, int]:
        parts = {"mbin-php": 64 * self.php_workers + 64, "mbin-messenger": 128 * self.messenger_workers}
        if self.rabbitmq_mb:
            parts["rabbitmq"] = self.rabbitmq_mb + 150
        return parts

    def db_connections(self) -> int:
        return self.php_workers + self.messenger_workers * 2

    def queue_memory_mb(self) -> int:
        return self.rabbitmq_mb if self.queue_transport == "amqp" else 0


# docs (minimum 2 cores / 4 GB, recommended 4 cores / 8 GB), its FPM tuning guide and docker/compose example
# (php workers, messenger `--limit` workers), RabbitMQ for larger instances. RabbitMQ on every size: mbin's
# config/packages/messenger.yaml gives each transport AMQP-only options (queues, exchange), which Symfony's
# Doctrine and Redis transports reject ("Unknown option found").
TUNING = {
    "tiny": MbinTuning(8, 2, "amqp", 256),
    "small": MbinTuning(16, 3, "amqp", 384),
    "medium": MbinTuning(32, 6, "amqp", 512),
    "large": MbinTuning(64, 12, "amqp", 1024),
}


def secrets() -> dict[str, str]:
    import secrets as stdlib_secrets

    from provision.render.keys import alnum, rsa_keypair

    passphrase = alnum(32)
    oauth_private, oauth_public = rsa_keypair(passphrase)
    return {
        "rabbitmq_password": alnum(32),
        # Symfony's APP_SECRET: 32 hex characters, the form Symfony's own recipe generates.
        "mbin_app_secret": stdlib_secrets.token_hex(16),
        "mbin_oauth_passphrase": passphrase,
        "mbin_oauth_private_key": oauth_private,
        "mbin_oauth_public_key": oauth_public,
        # mbin docs: `openssl rand -hex 16`
        "mbin_oauth_encryption_key": stdlib_secrets.token_hex(16),
        # Mercure signs JWTs with HS256: at least 256 bits of key.
        "mbin_mercure_jwt_secret": stdlib_secrets.token_hex(32),
    }


def api_check(get_json: Any, domain: str) -> str:
    data = get_json("/api/info")
    if field_of(data, "websiteDomain") != domain:
        raise CheckFailed(f"/api/info names domain {field_of(data, 'websiteDomain')!r}, not {domain!r}")
    return f"/api/info: {data.get('softwareName', 'mbin')} {data.get('softwareVersion', '?')}"


# ---- the funding announcement ------------------------------------------------------------------------
# mbin keeps instance pages (about, contact, faq, terms, privacyPolicy): GET /api/instance reads them and
# PUT /api/instance/about with {"body": ...} writes one; it needs an OAuth2 token of an admin with the
# admin:instance:information:edit scope, read from $FEDI_MBIN_TOKEN.


def get_pages() -> Any:
    from provision.billing.funding import Request

    return Request("GET", "/api/instance", bearer=True)


def edit_about(current: str, text: str) -> Any:
    from provision.billing.funding import Request, replace_section

    return Request("PUT", "/api/instance/about", {"body": replace_section(current, text)}, bearer=True)


def post(base_url: str, text: str, *, token: str | None = None, verify: Any = True) -> str:
    """Put ``text`` on mbin's About page with an admin OAuth2 token."""
    import httpx

    from provision.billing.funding import TIMEOUT_S, send
    from provision.errors import MissingPrerequisite

    token = token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise MissingPrerequisite(
            f"set ${TOKEN_ENV} to an mbin admin OAuth2 token with the admin:instance:information:edit scope"
        )
    with httpx.Client(timeout=TIMEOUT_S, verify=verify, follow_redirects=False) as client:
        pages = send(client, base_url, get_pages(), token)
        send(client, base_url, edit_about(pages.get("about") or "", text), token)
    return "funding status written to the mbin About page"


def announce(
    spec: Any, report: Any, provider: Any, outputs: Any, *, base_url: str, verify: Any = True, run: Any = None
) -> str:
    """Write the funding status onto the About page (the token from ``$FEDI_MBIN_TOKEN``)."""
    from provision.billing.funding import funding_text

    return post(base_url, funding_text(report), verify=verify)


def admin_account(run: list[str], name: str, email: str, role: str) -> list[list[str]]:
    """mbin:user:create takes a password argument (src/Command/UserCommand.php): a throwaway one, made on
    fedi's computer and sent on stdin, never shown and never in argv; the admin sets their own through
    "Forgot your password?". --admin or --moderator gives the role."""
    flag = "--admin" if role == "admin" else "--moderator"
    create = [*run, "bin/console", "mbin:user:create", flag, name, email]
    return [["sh", "-c", 'IFS= read -r password && exec "$@" "$password"', "sh", *create]]


APP = register(
    App(
        name="mbin",
        software=("kbin",),
        note=KBIN_NOTE,
        version=MBIN,
        pins={"mbin": MBIN},
        images={"mbin": f"ghcr.io/mbinorg/mbin:{MBIN}"},
        # mbin's FrankenPHP (its own Caddy) on 8080 behind the host's Caddy; its admin API moves off 2019,
        # which the host's Caddy uses.
        ports={"php": 8080, "php-admin": 2020},
        media_path="media",
        uid="1000:1000",
        services=frozenset({"valkey", "rabbitmq"}),  # cache and sessions; Symfony Messenger's queues
        upload_limit_mb=20,  # mbin's nginx example allows 20M
        bundle_files=(
            BundleFile("compose", "mbin/compose.yaml.j2", "app/compose.yaml"),
            BundleFile("app-config", "mbin/env.j2", "app/.env", private=True),
            BundleFile(
                "app-oauth-private-key", "", "app/oauth2/private.pem", private=True, verbatim="mbin_oauth_private_key"
            ),
            BundleFile("app-oauth-public-key", "", "app/oauth2/public.pem", verbatim="mbin_oauth_public_key"),
            BundleFile("app-php", "mbin/php.ini.j2", "app/php.ini"),
        ),
        tuning=TUNING,
        secrets=secrets,
        # src/Factory/ActivityPub/NodeInfoFactory.php says "mbin"
        nodeinfo_name="mbin",
        # mbin v1.10.1: GET /i/actor (config/mbin_routes/activity_pub.yaml `ap_instance`;
        # src/Factory/ActivityPub/InstanceFactory.php `publicKeyPem` from the site row's public_key, which only
        # `bin/console mbin:ap:keys:update` creates: without it the page fails and nothing can be signed).
        actor_path="/i/actor",
        api_check=api_check,
        announce=announce,
        cleanup=Cleanup(
            doc=("bin/console mbin:images:remove-remote --days $FEDI_MEDIA_DAYS  (cached remote images)",),
            services=""""${FEDI_CLEANUP_SERVICE:-php}" 'php*' 'messenger*'""",
            commands=('in_app bin/console --no-interaction mbin:images:remove-remote --days "$FEDI_MEDIA_DAYS"',),
        ),
        admin_account=AdminAccount(service="php", commands=admin_account),
    )
)
