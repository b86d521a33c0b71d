import pytest

from provision.sizing import HEADROOM, SERVER_TYPES, TIERS, size_for
from provision.spec import SIZES

APPS = ("mastodon", "lemmy", "mbin")
COMBOS = [(app, size) for app in APPS for size in SIZES]


@pytest.mark.parametrize(("app", "size"), COMBOS)
def test_memory_budget_fits_with_headroom(app, size):
    s = size_for(size, app)
    total = sum(s.memory_budget().values())
    assert total <= s.server.ram_mb * HEADROOM, s.memory_budget()


@pytest.mark.parametrize(("app", "size"), COMBOS)
def test_postgres_has_room_for_every_pool(app, size):
    s = size_for(size, app)
    pg = s.postgres
    t = s.tuning
    if app == "mastodon":
        pools = t.web_concurrency * t.web_db_pool + sum(p.concurrency for p in t.sidekiq)
    elif app == "lemmy":
        pools = t.db_pool_size
    else:
        pools = t.php_workers + t.messenger_workers
    assert pg.max_connections >= pools + 10
    assert pg.shared_buffers_mb * 4 <= s.server.ram_mb
    assert pg.max_parallel_workers_per_gather <= pg.max_parallel_workers <= s.server.vcpus


def test_sizes_grow_monotonically():
    for app in APPS:
        prev = None
        for size in SIZES:
            s = size_for(size, app)
            if prev:
                assert s.server.ram_mb > prev.server.ram_mb
                assert s.volume_gb >= prev.volume_gb
                assert s.postgres.shared_buffers_mb > prev.postgres.shared_buffers_mb
            prev = s


def test_lemmy_needs_no_valkey_and_the_others_do():
    assert size_for("small", "lemmy").valkey.maxmemory_mb == 0
    assert size_for("small", "mastodon").valkey.maxmemory_mb > 0
    assert size_for("small", "mbin").valkey.maxmemory_mb > 0


def test_every_tier_names_a_known_server_type():
    assert {t for t, _ in TIERS.values()} <= set(SERVER_TYPES)


def test_kbin_is_sized_as_mbin():
    assert size_for("tiny", "kbin") == size_for("tiny", "mbin")


def test_mastodon_scheduler_queue_runs_in_exactly_one_sidekiq():
    for size in SIZES:
        procs = size_for(size, "mastodon").tuning.sidekiq
        assert sum(1 for p in procs if not p.queues or "scheduler" in p.queues) == 1
