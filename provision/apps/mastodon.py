"""Mastodon: what fedi deploys and how it sizes, checks and announces on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provision.apps.base import AdminAccount, App, BundleFile, CheckFailed, Cleanup, Tuning, field_of, register

# The newest release confirmed from the project itself: mastodon/mastodon PR #40517 "Bump version to
# v4.7.2" and mastodon/chart PR #248 "Update mastodon app to v4.7.2" (4.7 is the current stable line).
# Official images: ghcr.io/mastodon/mastodon and, since 4.3, ghcr.io/mastodon/mastodon-streaming.
# Checked in late November 2026. Upgrading = changing this line (after reading the release's notes).
MASTODON = "v4.7.2"


@dataclass(frozen=True)
class SidekiqProcess:
    name: str  # compose service suffix
    concurrency: int  # threads; Mastodon docs: DB_POOL must equal this
    queues: tuple[str, ...]  # empty = Mastodon's default sidekiq.yml (all queues incl. scheduler)

    def argv(self) -> list[str]:
        """This Sidekiq container's command: threads, and its queues (none = Mastodon's sidekiq.yml: all)."""
        argv = ["bundle", "exec", "sidekiq", "-c", str(self.concurrency)]
        for queue in self.queues:
            argv += ["-q", queue]
        return argv


@dataclass(frozen=True)
class MastodonTuning(Tuning):
    """docs.joinmastodon.org/admin/scaling/: WEB_CONCURRENCY x MAX_THREADS, DB_POOL, Sidekiq, streaming."""

    web_concurrency: int  # Puma worker processes (~350 MB each, Mastodon's "Resource usage" examples)
    max_threads: int  # threads per Puma worker; DB_POOL for web = MAX_THREADS
    sidekiq: tuple[SidekiqProcess, ...]  # one entry per Sidekiq container
    streaming_processes: int  # Mastodon >= 4.3: scale streaming with processes, not STREAMING_CLUSTER_NUM

    @property
    def web_db_pool(self) -> int:
        return self.max_threads

    def memory_mb(self) -> dict[str, int]:
        parts = {"mastodon-web": 350 * self.web_concurrency + 20 * self.web_concurrency * self.max_threads}
        for p in self.sidekiq:
            parts[f"mastodon-sidekiq-{p.name}"] = 300 + 12 * p.concurrency
        parts["mastodon-streaming"] = 100 * self.streaming_processes
        return parts

    def db_connections(self) -> int:
        # web: WEB_CONCURRENCY x DB_POOL(=MAX_THREADS); sidekiq: DB_POOL = concurrency; streaming: pg pool 10
        web = self.web_concurrency * self.max_threads
        return web + sum(p.concurrency for p in self.sidekiq) + 10 * self.streaming_processes

    def extra_ports(self, ports: Any) -> dict[str, Any]:
        # one streaming process per port, from the streaming port up
        return {"streaming_all": [ports["streaming"] + i for i in range(self.streaming_processes)]}


# docs.joinmastodon.org/admin/scaling (defaults WEB_CONCURRENCY=2, MAX_THREADS=5, Sidekiq -c 5; "one Sidekiq
# process with 25 threads" as a starting point for bigger instances; scheduler queue in exactly one
# process), and the memory figures of its "Resource usage" examples.
TUNING = {
    "tiny": MastodonTuning(1, 5, (SidekiqProcess("all", 10, ()),), 1),
    "small": MastodonTuning(2, 5, (SidekiqProcess("all", 15, ()),), 1),
    "medium": MastodonTuning(3, 5, (SidekiqProcess("all", 25, ()),), 1),
    "large": MastodonTuning(
        6,
        5,
        (
            SidekiqProcess("all", 25, ()),
            SidekiqProcess("federation", 25, ("ingress", "push", "pull", "default")),
        ),
        2,
    ),
}


def secrets() -> dict[str, str]:
    from provision.render.keys import rails_encryption_key, rails_secret, vapid_keypair

    vapid_private, vapid_public = vapid_keypair()
    return {
        "mastodon_secret_key_base": rails_secret(),
        "mastodon_otp_secret": rails_secret(),
        "mastodon_ar_deterministic_key": rails_encryption_key(),
        "mastodon_ar_key_derivation_salt": rails_encryption_key(),
        "mastodon_ar_primary_key": rails_encryption_key(),
        "mastodon_vapid_private_key": vapid_private,
        "mastodon_vapid_public_key": vapid_public,
    }


def api_check(get_json: Any, domain: str) -> str:
    data = get_json("/api/v2/instance")
    if not isinstance(data, dict) or data.get("domain") != domain:
        raise CheckFailed(f"/api/v2/instance names domain {field_of(data, 'domain')!r}, not {domain!r}")
    return f"/api/v2/instance: Mastodon {data.get('version', '?')}"


# ---- the funding announcement: rails runner over SSH ------------------------------------------------
# Mastodon has no API to create announcements: /api/v1/announcements only lists and dismisses them, and
# there is no /api/v1/admin/announcements; admins create them in the web admin
# (Admin::AnnouncementsController). fedi does what that controller does - Announcement.create (published
# at once when it has no scheduled_at) then PublishScheduledAnnouncementWorker - in `bin/rails runner`
# inside the web container, over SSH, and removes its previous funding announcement the way the
# controller's destroy does. No token is needed; the text travels in an environment variable of
# `docker compose exec`, never inside the Ruby code.
RUBY = (
    "text = ENV.fetch('FEDI_FUNDING'); "
    "old = Announcement.where('text LIKE ?', '%' + ENV.fetch('FEDI_FUNDING_MARKER')).to_a; "
    "a = Announcement.create!(text: text); "
    "PublishScheduledAnnouncementWorker.perform_async(a.id); "
    "old.each { |o| o.destroy!; UnpublishAnnouncementWorker.perform_async(o.id) if o.published? }; "
    "puts a.id"
)


def announce_argv(text: str, user: str, *, service: str = "web") -> list[str]:
    """The command (run as ``user`` over SSH) that publishes ``text`` as an announcement."""
    from provision.billing.funding import MARKER
    from provision.remote.commands import compose, privileged

    return privileged([
        *compose(),
        "exec", "-T",
        "-e", f"FEDI_FUNDING={text}",
        "-e", f"FEDI_FUNDING_MARKER={MARKER}",
        service, "bin/rails", "runner", RUBY,
    ], user)  # fmt: skip


def announce(
    spec: Any, report: Any, provider: Any, outputs: Any, *, base_url: str, verify: Any = True, run: Any = None
) -> str:
    """Publish the funding status as an announcement (plain text: Mastodon shows links and hashtags only)."""
    from provision.billing.funding import funding_text
    from provision.errors import HookError

    if run is None:
        from provision.remote import run
    rc, out, err = run(outputs.access, announce_argv(funding_text(report, markdown=False), outputs.access.user))
    if rc != 0:
        last = (err or out).strip().splitlines()[-1:] or [f"exit {rc}"]
        raise HookError(f"the Mastodon announcement failed: {last[0][:200]}")
    announcement_id = (out.strip().splitlines() or [""])[-1]
    return f"funding status published as Mastodon announcement {announcement_id}".rstrip()


ROLES = {"admin": "Admin", "moderator": "Moderator"}  # Mastodon's default UserRoles (db/seeds/03_roles.rb)


def admin_account(run: list[str], name: str, email: str, role: str) -> list[list[str]]:
    """tootctl makes the account confirmed and approved, with the role; the random password it prints is
    never shown (the admin sets their own through "Forgot your password?")."""
    create = ["bin/tootctl", "accounts", "create", name, "--email", email, "--confirmed", "--role", ROLES[role]]
    return [[*run, *create], [*run, "bin/tootctl", "accounts", "approve", name]]


APP = register(
    App(
        name="mastodon",
        software=("mastodon",),
        note="",
        version=MASTODON,
        pins={"mastodon": MASTODON},
        images={
            "mastodon": f"ghcr.io/mastodon/mastodon:{MASTODON}",
            "streaming": f"ghcr.io/mastodon/mastodon-streaming:{MASTODON}",
        },
        # Mastodon's defaults: Puma on 3000, streaming on 4000 (4000 + i for each further process).
        ports={"web": 3000, "streaming": 4000},
        media_path="system",
        uid="991:991",
        services=frozenset({"valkey"}),  # cache and Sidekiq's queues
        # Mastodon's own caps are 16 MB images / 99 MB video (its nginx.conf allows 99m).
        upload_limit_mb=99,
        bundle_files=(
            BundleFile("compose", "mastodon/compose.yaml.j2", "app/compose.yaml"),
            BundleFile("app-config", "mastodon/env.production.j2", "app/.env.production", private=True),
        ),
        tuning=TUNING,
        secrets=secrets,
        nodeinfo_name="mastodon",
        # config/routes.rb `resource :instance_actor, path: 'actor'`; app/controllers/instance_actors_controller.rb
        # renders Account.representative with ActivityPub::ActorSerializer, fields incl. public_key (read at
        # mastodon/mastodon 987750d, the newest stored version: v4.7.2's own tree was too large to fetch here).
        actor_path="/actor",
        api_check=api_check,
        announce=announce,
        cleanup=Cleanup(
            doc=(
                "tootctl media remove --days $FEDI_MEDIA_DAYS         (cached remote media; refetched on demand)",
                "tootctl preview_cards remove --days $FEDI_PREVIEW_CARD_DAYS   (Mastodon: keep >= 14 days)",
                "tootctl media remove-orphans, on Sundays only       (scans every stored file: slow, S3 LIST calls)",
                "Not scheduled: `tootctl statuses remove` and `accounts prune` (they delete database rows,",
                "heavy on large instances; an admin's decision, not a timer's).",
            ),
            services=""""${FEDI_CLEANUP_SERVICE:-web}" 'sidekiq*' 'web*'""",
            commands=(
                'in_app tootctl media remove --days "$FEDI_MEDIA_DAYS"',
                'in_app tootctl preview_cards remove --days "$FEDI_PREVIEW_CARD_DAYS"',
                'if [ "${FEDI_WEEKDAY:-$(date -u +%u)}" = 7 ]; then',
                "  in_app tootctl media remove-orphans",
                "fi",
            ),
        ),
        # `tootctl accounts create` validates the e-mail's domain by DNS (see provision/admin_email.py)
        resolves_admin_email=True,
        admin_account=AdminAccount(service="web", commands=admin_account),
    )
)
