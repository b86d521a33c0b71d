"""The app containers' hardening, read back by Debian 13's docker compose (tests/support/readers.py).

For every app and size: no new privileges, every capability dropped and only the ones the app's image
needs added back (each template's header cites where that need comes from), a read-only root file
system where the app writes nothing outside its mounts, memory and process limits from the sizing,
nothing privileged, no Docker socket, no host PID or IPC namespace. The host network stays (every app
listens on loopback and reaches the host's Postgres, Valkey and RabbitMQ there; README, Security).
"""

from __future__ import annotations

import fnmatch

import pytest

from provision.sizing import CONTAINER_PIDS_LIMIT, size_for
from tests.support.readers import debian_readers
from tests.support.render_cases import SIZES, rendered

MB = 1024 * 1024

# Per app: the capabilities added back, the services on a read-only root (and where they may write), and
# each service's component in Sizing.app_memory_mb.
EXPECTED = {
    "mastodon": {
        "cap_add": set(),
        "read_only": {"streaming-*": {"/tmp"}},
        "memory": {"web": "mastodon-web", "streaming-*": "mastodon-streaming", "sidekiq-*": "mastodon-sidekiq-*"},
    },
    "lemmy": {
        "cap_add": set(),
        "read_only": {"lemmy": {"/tmp"}, "lemmy-ui": {"/tmp"}, "pictrs": {"/mnt", "/tmp"}},
        "memory": {"lemmy": "lemmy", "lemmy-ui": "lemmy-ui", "pictrs": "pictrs"},
    },
    "kbin": {
        "cap_add": {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "NET_BIND_SERVICE"},
        "read_only": {},
        "memory": {"php": "mbin-php", "messenger": "mbin-messenger"},
    },
}


@pytest.fixture(scope="module")
def readers():
    return debian_readers()


def _match(table: dict, service: str):
    found = [value for pattern, value in table.items() if fnmatch.fnmatchcase(service, pattern)]
    assert len(found) <= 1, service
    return found[0] if found else None


def _writable(svc: dict) -> set[str]:
    """Where a container may write: its tmpfs mounts and its read-write bind mounts."""
    places = {entry.split(":", 1)[0] for entry in svc.get("tmpfs") or []}
    places |= {v["target"] for v in svc.get("volumes") or [] if not v.get("read_only")}
    return places


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("software", ["mastodon", "lemmy", "kbin"])
def test_app_containers_are_hardened(readers, software, size):
    bundle, _ = rendered(software, size)
    services = readers.compose(bundle.root / "app")
    expected = EXPECTED[software]
    sizing = size_for(size, software)
    budget = sizing.app_memory_mb()
    for name, svc in services.items():
        where = f"{software} {size} {name}"
        assert svc.get("security_opt") == ["no-new-privileges:true"], where
        assert svc.get("cap_drop") == ["ALL"], where
        assert set(svc.get("cap_add") or []) == expected["cap_add"], where
        assert not svc.get("privileged"), where
        assert svc.get("pid") is None and svc.get("ipc") is None, where
        assert not svc.get("devices"), where
        sources = [v.get("source", "") for v in svc.get("volumes") or []]
        assert not [s for s in sources if "docker.sock" in s], where
        writable = _match(expected["read_only"], name)
        if writable is None:
            assert not svc.get("read_only"), where
        else:
            assert svc.get("read_only") is True, where
            assert _writable(svc) == writable, where
        assert svc.get("pids_limit") == CONTAINER_PIDS_LIMIT, where
        # sidekiq-<name> is budgeted as mastodon-sidekiq-<name>; streaming's budget is shared by its
        # containers, messenger's by its replicas
        component = _match(expected["memory"], name).replace("*", name.split("-", 1)[-1])
        share = (svc.get("deploy") or {}).get("replicas") or 1
        if fnmatch.fnmatchcase(name, "streaming-*"):
            share = len(fnmatch.filter(services, "streaming-*"))
        limit = int(svc["mem_limit"])
        assert limit == sizing.container_memory_mb(component, share) * MB, where
        assert limit >= budget[component] // share * MB, f"{where}: the limit is below what it is configured to use"
        assert limit < sizing.server.ram_mb * MB, where


def test_a_privileged_service_would_be_seen(readers, tmp_path):
    """The checks can fail: the real reader keeps what the assertions look at."""
    bundle, _ = rendered("lemmy", "tiny")
    app = tmp_path / "app"
    app.mkdir()
    for item in (bundle.root / "app").iterdir():
        if item.is_file():
            (app / item.name).write_text(item.read_text())
    text = (app / "compose.yaml").read_text()
    (app / "compose.yaml").write_text(text.replace("    cap_drop: [ALL]\n", "    privileged: true\n", 1))
    services = readers.compose(app)
    assert services["lemmy"].get("privileged") is True
    assert services["lemmy"].get("cap_drop") is None
