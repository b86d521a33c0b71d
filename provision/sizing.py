"""Sizing: size x app -> server type, volume, Postgres/Valkey tuning, app processes, memory budget.

Every number says where it comes from. The memory budget adds up what each process is configured to
use and must fit in the server's RAM with headroom; ``tests/test_sizing.py`` checks every combination.
"""

from __future__ import annotations

from dataclasses import dataclass

from provision import apps
from provision.apps import Tuning
from provision.spec import SIZES, InstanceSpec


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
    rabbitmq_mb: int  # RabbitMQ's vm_memory_high_watermark (0 = not deployed)
    tuning: Tuning  # the app's own tuning for this size (its catalog module defines it)
    upload_limit_mb: int  # the largest request body the proxy accepts (matches the app's own limit)
    schedule: Schedule
    users: tuple[int, int]  # (registered, monthly active) this size is for

    def app_memory_mb(self) -> dict[str, int]:
        """What each app process is configured to use, by component (MB)."""
        return self.tuning.memory_mb()

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


# Per size; each app's own tuning per size is in its catalog module (provision/apps/<app>.py).

# Share of RAM given to Postgres: lemmy-ansible's example tunes Postgres for the whole box; on a shared
# host the apps take the rest, so the share grows with the size as app processes stop scaling linearly.
_PG_SHARE = {"tiny": 0.25, "small": 0.3, "medium": 0.35, "large": 0.4}

# Valkey maxmemory (MB), for the apps whose catalog entry uses Valkey (caches, sessions, job queues).
_VALKEY = {"tiny": 192, "small": 384, "medium": 768, "large": 1536}

# Backups: daily for small instances, more often for larger ones; retention hourly/daily/weekly/monthly.
_SCHEDULE = {
    "tiny": Schedule("*-*-* 03:30:00", 0, 7, 4, 6, "Sun *-*-* 05:00:00", "*-*-* 04:30:00", 7, 14),
    "small": Schedule("*-*-* 03:30:00", 0, 14, 4, 12, "Sun *-*-* 05:00:00", "*-*-* 04:30:00", 14, 30),
    "medium": Schedule("*-*-* 00/6:15:00", 24, 14, 8, 12, "Sun *-*-* 05:00:00", "*-*-* 04:30:00", 14, 30),
    "large": Schedule("*-*-* *:15:00", 48, 14, 8, 24, "Sun *-*-* 05:00:00", "*-*-* 04:30:00", 30, 60),
}


def size_for(size: str, software_or_app: str) -> Sizing:
    app = apps.get(software_or_app)
    tuning = app.tuning[size]
    server_name, volume_gb = TIERS[size]
    server = SERVER_TYPES[server_name]
    connections = tuning.db_connections() + 10
    return Sizing(
        size=size,
        app=app.name,
        server=server,
        volume_gb=volume_gb,
        swap_mb=min(4096, server.ram_mb // 2),
        postgres=_pgtune(server, connections, _PG_SHARE[size]),
        valkey=Valkey(_VALKEY[size] if "valkey" in app.services else 0, "volatile-lru"),
        rabbitmq_mb=tuning.queue_memory_mb() if "rabbitmq" in app.services else 0,
        tuning=tuning,
        upload_limit_mb=app.upload_limit_mb,
        schedule=_SCHEDULE[size],
        users=SIZES[size],
    )


def sizing(spec: InstanceSpec) -> Sizing:
    return size_for(spec.size, spec.app)
