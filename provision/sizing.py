"""Sizing: size x app -> server type, volume, Postgres/Valkey tuning, app processes, memory budget.

Every number says where it comes from. The memory budget adds up what each process is configured to
use and must fit in the server's RAM with headroom; ``tests/test_sizing.py`` checks every combination.
"""

from __future__ import annotations

from dataclasses import dataclass

from provision.spec import APPS, SIZES, InstanceSpec


@dataclass(frozen=True)
class ServerType:
    name: str  # Hetzner server type
    vcpus: int
    ram_mb: int
    disk_gb: int  # local NVMe (the OS disk); data lives on the volume


# Hetzner's cost-optimized x86 line (Oct 2025 on: cx23/cx33/cx43/cx53); x86 because every app publishes
# amd64 images, while mbin and some pict-rs builds have no arm64 image.
SERVER_TYPES: dict[str, ServerType] = {
    "cx23": ServerType("cx23", 2, 4096, 40),
    "cx33": ServerType("cx33", 4, 8192, 80),
    "cx43": ServerType("cx43", 8, 16384, 160),
    "cx53": ServerType("cx53", 16, 32768, 320),
}

# size -> (server type, data volume GB). The volume holds Postgres and, without a media bucket, media.
# Mastodon's docs: a small instance's database grows by a few GB a year; media lives in object storage.
TIERS: dict[str, tuple[str, int]] = {
    "tiny": ("cx23", 20),
    "small": ("cx33", 40),
    "medium": ("cx43", 100),
    "large": ("cx53", 250),
}

OS_RESERVE_MB = 640  # kernel, systemd, sshd, caddy, fail2ban, dockerd, containerd: measured on Debian 13
HEADROOM = 0.85  # everything configured must fit in 85% of RAM (page cache and spikes take the rest)
PG_CONN_OVERHEAD_MB = 8  # a Postgres backend's own memory before work_mem (PostgreSQL wiki, "Tuning")
# An app container's hard limits (compose mem_limit, pids_limit): ceilings that stop a leak, a runaway job
# or a fork bomb before it takes the memory Postgres is tuned for, not reservations. Memory: twice what the
# container's processes are configured to use (app_memory_mb), at least the floor (lemmy-ansible caps
# pict-rs at 690 MB; below that a runtime's own baseline plus one heavy request, an image conversion or a
# Rails boot, has no room). Processes and threads: far above what the apps start (Puma and Sidekiq
# threads, tokio's blocking pool of at most 512, FrankenPHP's PHP threads, ffmpeg/ImageMagick children).
CONTAINER_MEMORY_FACTOR = 2
CONTAINER_MEMORY_FLOOR_MB = 768
CONTAINER_PIDS_LIMIT = 1024


@dataclass(frozen=True)
class Postgres:
    """pgtune's "web application" profile (pgtune.leopard.in.ua), applied to Postgres's share of RAM."""

    max_connections: int  # the apps' pools + 10 for backups, migrations and the admin
    shared_buffers_mb: int  # pgtune: 25% of the RAM given to Postgres
    effective_cache_size_mb: int  # pgtune: 75% of that RAM, plus the OS page cache it can count on
    maintenance_work_mem_mb: int  # pgtune: RAM / 16, at most 2 GB
    work_mem_kb: int  # pgtune: (RAM - shared_buffers) / (max_connections * 3)
    wal_buffers_mb: int  # pgtune: 3% of shared_buffers, at most 16 MB
    min_wal_size_mb: int  # pgtune web profile: 1 GB
    max_wal_size_mb: int  # pgtune web profile: 4 GB
    max_worker_processes: int  # pgtune: CPU count
    max_parallel_workers_per_gather: int  # pgtune: CPU / 2, at most 4
    max_parallel_workers: int  # pgtune: CPU count
    random_page_cost: float  # pgtune: 1.1 on SSD (Hetzner volumes and local disks are SSD/NVMe)
    effective_io_concurrency: int  # pgtune: 200 on SSD

    def memory_mb(self) -> int:
        per_conn = PG_CONN_OVERHEAD_MB + self.work_mem_kb // 1024
        return self.shared_buffers_mb + self.maintenance_work_mem_mb + self.max_connections * per_conn


@dataclass(frozen=True)
class Valkey:
    maxmemory_mb: int  # 0 = the app does not use Valkey, so it is not deployed (Lemmy)
    maxmemory_policy: str  # volatile-lru: evict only keys with a TTL (caches), never Sidekiq's jobs


@dataclass(frozen=True)
class SidekiqProcess:
    name: str  # compose service suffix
    concurrency: int  # threads; Mastodon docs: DB_POOL must equal this
    queues: tuple[str, ...]  # empty = Mastodon's default sidekiq.yml (all queues incl. scheduler)


@dataclass(frozen=True)
class MastodonTuning:
    """docs.joinmastodon.org/admin/scaling/: WEB_CONCURRENCY x MAX_THREADS, DB_POOL, Sidekiq, streaming."""

    web_concurrency: int  # Puma worker processes (~350 MB each, Mastodon's "Resource usage" examples)
    max_threads: int  # threads per Puma worker; DB_POOL for web = MAX_THREADS
    sidekiq: tuple[SidekiqProcess, ...]  # one entry per Sidekiq container
    streaming_processes: int  # Mastodon >= 4.3: scale streaming with processes, not STREAMING_CLUSTER_NUM

    @property
    def web_db_pool(self) -> int:
        return self.max_threads


@dataclass(frozen=True)
class LemmyTuning:
    """lemmy.hjson `database.pool_size` (default 30 in Lemmy's defaults.hjson); pict-rs media limits."""

    db_pool_size: int
    pictrs_max_file_size_mb: int  # pict-rs [media] max_file_size; Caddy's body limit matches it
    pictrs_max_width: int  # pict-rs [media.image] max_width
    pictrs_max_height: int  # pict-rs [media.image] max_height
    pictrs_max_area: int  # pict-rs [media.image] max_area (pixels)
    pictrs_concurrency: int  # pict-rs [server] client_pool_size / processing concurrency


@dataclass(frozen=True)
class MbinTuning:
    """mbin docs (docs/02-admin/01-installation): PHP-FPM workers, Symfony Messenger workers, transport."""

    php_workers: int  # php-fpm pm.max_children (~64 MB each, mbin's FPM tuning guide)
    messenger_workers: int  # `messenger:consume` processes (~128 MB each)
    queue_transport: str  # amqp (RabbitMQ from Debian): the only transport mbin's messenger.yaml works with
    rabbitmq_mb: int  # RabbitMQ vm_memory_high_watermark in MB (0 = not deployed)


@dataclass(frozen=True)
class Schedule:
    backup_on_calendar: str  # systemd OnCalendar for the backup run
    keep_hourly: int  # restic forget --keep-hourly
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    check_on_calendar: str  # restic check
    cleanup_on_calendar: str  # media/cache cleanup
    media_days: int  # remote media older than this is removed (Mastodon: tootctl media remove --days)
    preview_card_days: int  # Mastodon: tootctl preview_cards remove --days (docs: keep >= 14)


@dataclass(frozen=True)
class Sizing:
    size: str
    app: str
    server: ServerType
    volume_gb: int
    swap_mb: int  # swap file on the OS disk: a safety net, not capacity (RAM/2, at most 4 GB)
    postgres: Postgres
    valkey: Valkey
    mastodon: MastodonTuning | None
    lemmy: LemmyTuning | None
    mbin: MbinTuning | None
    upload_limit_mb: int  # the largest request body the proxy accepts (matches the app's own limit)
    schedule: Schedule
    users: tuple[int, int]  # (registered, monthly active) this size is for

    def app_memory_mb(self) -> dict[str, int]:
        """What each app process is configured to use, by component (MB)."""
        if self.mastodon:
            m = self.mastodon
            parts = {"mastodon-web": 350 * m.web_concurrency + 20 * m.web_concurrency * m.max_threads}
            for p in m.sidekiq:
                parts[f"mastodon-sidekiq-{p.name}"] = 300 + 12 * p.concurrency
            parts["mastodon-streaming"] = 100 * m.streaming_processes
            return parts
        if self.lemmy:
            return {"lemmy": 300, "lemmy-ui": 250, "pictrs": 150 + 50 * self.lemmy.pictrs_concurrency}
        assert self.mbin
        b = self.mbin
        parts = {"mbin-php": 64 * b.php_workers + 64, "mbin-messenger": 128 * b.messenger_workers}
        if b.rabbitmq_mb:
            parts["rabbitmq"] = b.rabbitmq_mb + 150
        return parts

    @property
    def container_pids_limit(self) -> int:
        return CONTAINER_PIDS_LIMIT

    def container_memory_mb(self, component: str, replicas: int = 1) -> int:
        """The hard memory limit of one container of ``component`` (an app_memory_mb key) run as ``replicas``."""
        return max(CONTAINER_MEMORY_FLOOR_MB, CONTAINER_MEMORY_FACTOR * self.app_memory_mb()[component] // replicas)

    def memory_budget(self) -> dict[str, int]:
        budget = {"os": OS_RESERVE_MB, "postgres": self.postgres.memory_mb()}
        if self.valkey.maxmemory_mb:
            budget["valkey"] = int(self.valkey.maxmemory_mb * 1.2)  # allocator overhead
        budget.update(self.app_memory_mb())
        return budget


def _pgtune(server: ServerType, max_connections: int, share: float) -> Postgres:
    pg_ram = int(server.ram_mb * share)
    shared = pg_ram // 4
    work_mem_kb = max(4096, (pg_ram - shared) * 1024 // (max_connections * 3))
    return Postgres(
        max_connections=max_connections,
        shared_buffers_mb=shared,
        effective_cache_size_mb=pg_ram * 3 // 4 + server.ram_mb // 8,
        maintenance_work_mem_mb=min(2048, pg_ram // 16),
        work_mem_kb=work_mem_kb,
        wal_buffers_mb=min(16, max(1, shared * 3 // 100)),
        min_wal_size_mb=1024,
        max_wal_size_mb=4096,
        max_worker_processes=server.vcpus,
        max_parallel_workers_per_gather=min(4, max(1, server.vcpus // 2)),
        max_parallel_workers=server.vcpus,
        random_page_cost=1.1,
        effective_io_concurrency=200,
    )


# Per size, for each app. Sources are named at each table.

# Mastodon: docs.joinmastodon.org/admin/scaling (defaults WEB_CONCURRENCY=2, MAX_THREADS=5, Sidekiq -c 5;
# "one Sidekiq process with 25 threads" as a starting point for bigger instances; scheduler queue in
# exactly one process), and the memory figures of its "Resource usage" examples.
_MASTODON = {
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

# Lemmy: defaults.hjson (pool_size 30), lemmy-ansible's Postgres example for the database share,
# pict-rs defaults (max_width/height 10000, max_area 40,000,000) and lemmy-ansible's 20 MB nginx body limit.
_LEMMY = {
    "tiny": LemmyTuning(10, 20, 10000, 10000, 40_000_000, 1),
    "small": LemmyTuning(20, 20, 10000, 10000, 40_000_000, 2),
    "medium": LemmyTuning(30, 20, 10000, 10000, 40_000_000, 4),
    "large": LemmyTuning(50, 20, 10000, 10000, 40_000_000, 8),
}

# mbin: docs (minimum 2 cores / 4 GB, recommended 4 cores / 8 GB), its FPM tuning guide and
# docker/compose example (php workers, messenger `--limit` workers), RabbitMQ for larger instances.
# RabbitMQ on every size: mbin's config/packages/messenger.yaml gives each transport AMQP-only options
# (queues, exchange), which Symfony's Doctrine and Redis transports reject ("Unknown option found").
_MBIN = {
    "tiny": MbinTuning(8, 2, "amqp", 256),
    "small": MbinTuning(16, 3, "amqp", 384),
    "medium": MbinTuning(32, 6, "amqp", 512),
    "large": MbinTuning(64, 12, "amqp", 1024),
}

# Share of RAM given to Postgres: lemmy-ansible's example tunes Postgres for the whole box; on a shared
# host the apps take the rest, so the share grows with the size as app processes stop scaling linearly.
_PG_SHARE = {"tiny": 0.25, "small": 0.3, "medium": 0.35, "large": 0.4}

# Valkey maxmemory (MB): Mastodon's cache + Sidekiq queues; mbin's cache and sessions; Lemmy uses none.
_VALKEY = {"tiny": 192, "small": 384, "medium": 768, "large": 1536}

# Backups: daily for small instances, more often for larger ones; retention hourly/daily/weekly/monthly.
_SCHEDULE = {
    "tiny": Schedule("*-*-* 03:30:00", 0, 7, 4, 6, "Sun *-*-* 05:00:00", "*-*-* 04:30:00", 7, 14),
    "small": Schedule("*-*-* 03:30:00", 0, 14, 4, 12, "Sun *-*-* 05:00:00", "*-*-* 04:30:00", 14, 30),
    "medium": Schedule("*-*-* 00/6:15:00", 24, 14, 8, 12, "Sun *-*-* 05:00:00", "*-*-* 04:30:00", 14, 30),
    "large": Schedule("*-*-* *:15:00", 48, 14, 8, 24, "Sun *-*-* 05:00:00", "*-*-* 04:30:00", 30, 60),
}

# Upload limits (MB): Mastodon's own caps are 16 MB images / 99 MB video (its nginx.conf allows 99m);
# Lemmy follows pict-rs's max_file_size; mbin's nginx example allows 20M.
_UPLOAD = {"mastodon": 99, "lemmy": 20, "mbin": 20}


def _pool_connections(size: str, app: str) -> int:
    if app == "mastodon":
        m = _MASTODON[size]
        # web: WEB_CONCURRENCY x DB_POOL(=MAX_THREADS); sidekiq: DB_POOL = concurrency; streaming: pg pool 10
        return m.web_concurrency * m.max_threads + sum(p.concurrency for p in m.sidekiq) + 10 * (m.streaming_processes)
    if app == "lemmy":
        return _LEMMY[size].db_pool_size + 5  # + pict-rs's Postgres repo pool
    b = _MBIN[size]
    return b.php_workers + b.messenger_workers * 2


def size_for(size: str, software_or_app: str) -> Sizing:
    app = APPS.get(software_or_app, software_or_app)
    server_name, volume_gb = TIERS[size]
    server = SERVER_TYPES[server_name]
    connections = _pool_connections(size, app) + 10
    return Sizing(
        size=size,
        app=app,
        server=server,
        volume_gb=volume_gb,
        swap_mb=min(4096, server.ram_mb // 2),
        postgres=_pgtune(server, connections, _PG_SHARE[size]),
        valkey=Valkey(0 if app == "lemmy" else _VALKEY[size], "volatile-lru"),
        mastodon=_MASTODON[size] if app == "mastodon" else None,
        lemmy=_LEMMY[size] if app == "lemmy" else None,
        mbin=_MBIN[size] if app == "mbin" else None,
        upload_limit_mb=_UPLOAD[app],
        schedule=_SCHEDULE[size],
        users=SIZES[size],
    )


def sizing(spec: InstanceSpec) -> Sizing:
    return size_for(spec.size, spec.app)
