"""One change to a stack at a time across computers (issue 20, item 2): a stack kept in a shared s3://
state backend is locked by a conditional write in that bucket (provision/lifecycle/s3lock.py).

The bucket is a real local S3 server (moto). "Another computer" is another process with its own fedi
state directory (so this computer's flock does not see it) and its own user-visible identity line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_backup_support import free_port, make_bucket, moto_s3

from provision.cli import app as cli
from provision.cli import target as cli_target
from provision.errors import MissingPrerequisite, ProvisionError, StackBusy
from provision.lifecycle import s3lock, stacklock
from provision.providers.hetzner.s3 import S3, Bucket

BUCKET = "coop-state"
STACK = "social-example-org"
KEY = f"fedi/.fedi/locks/{STACK}.json"
SECRET = "test-secret-key-never-shown"

OTHER = """
import os, sys
from provision.lifecycle import s3lock, stacklock
s3lock.LEASE = float(os.environ.get("LEASE", s3lock.LEASE))
with stacklock.hold(sys.argv[1], sys.argv[2], sys.argv[3]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin or signals it
"""


@pytest.fixture
def shared(fedi_dirs, monkeypatch):
    """(backend URL, a client of its bucket): a moto server with the state bucket, keys in the env."""
    monkeypatch.setattr(s3lock, "_checked", set())
    with moto_s3() as endpoint:
        make_bucket(endpoint, BUCKET)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        yield f"s3://{BUCKET}/fedi", S3(Bucket(endpoint, "us-east-1", BUCKET, "test", SECRET))


class OtherComputer:
    """A fedi run on another computer holding ``stack``'s lock in the shared backend."""

    def __init__(self, tmp: Path, backend: str, command: str = "fedi up", lease: float | None = None):
        env = {**os.environ, "FEDI_STATE_DIR": str(tmp / "other-computer")}
        if lease is not None:
            env["LEASE"] = str(lease)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OTHER, STACK, command, backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout.readline().strip() == "held", self.proc.stderr.read()

    def end(self) -> int:
        self.proc.stdin.close()
        code = self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def test_a_run_on_another_computer_is_refused_with_who_holds_it(shared, tmp_path) -> None:
    backend, s3 = shared
    other = OtherComputer(tmp_path, backend)
    try:
        content, etag, _ = s3.get(KEY)
        record = json.loads(content)
        assert record["pid"] == other.proc.pid and record["command"] == "fedi up"
        assert record["lease"] == s3lock.LEASE and SECRET not in content.decode()
        with pytest.raises(StackBusy) as refused, stacklock.hold(STACK, "fedi down", backend):
            raise AssertionError("the second run got in")
        line = refused.value.line()
        since = record["since"]
        assert line == (
            f"stack {STACK} is busy: `fedi up` by {record['user']}@{record['host']} (pid {other.proc.pid}) "
            f"since {since}; nothing was changed, try again when it is done"
        )
        assert refused.value.exit_code == 10
        assert s3.get(KEY)[1] == etag  # the holder's lock untouched
        with stacklock.hold("other-example-org", "fedi up", backend):  # another stack is free
            pass
    finally:
        assert other.end() == 0
    assert s3.get(KEY) is None  # released when its run ended
    with stacklock.hold(STACK, "fedi down", backend):
        assert json.loads(s3.get(KEY)[0])["command"] == "fedi down"
    assert list(s3.list_keys("fedi/")) == []  # nothing left behind, not even the probe


@pytest.mark.parametrize("how", ["success", "failure", "ctrl-c"])
def test_the_lock_is_released_on_every_way_out(shared, how) -> None:
    backend, s3 = shared
    error = {"success": None, "failure": ProvisionError("the cloud refused"), "ctrl-c": KeyboardInterrupt()}[how]
    try:
        with stacklock.hold(STACK, "fedi up", backend):
            assert s3.get(KEY) is not None
            if error is not None:
                raise error
    except (ProvisionError, KeyboardInterrupt) as seen:
        assert seen is error
    assert s3.get(KEY) is None


def test_ctrl_c_of_a_real_run_releases_it(shared, tmp_path) -> None:
    backend, s3 = shared
    other = OtherComputer(tmp_path, backend)
    assert s3.get(KEY) is not None
    other.signal(signal.SIGINT)  # KeyboardInterrupt in the holder: its `finally` releases
    assert s3.get(KEY) is None


def test_a_crashed_holders_lock_goes_stale_and_is_taken_over_in_one_line(shared, tmp_path) -> None:
    backend, s3 = shared
    other = OtherComputer(tmp_path, backend, lease=1)  # renews every 0.25 s while it runs
    pid = other.proc.pid
    other.signal(signal.SIGKILL)  # no cleanup runs: the lock stays until it is stale
    notes: list[str] = []
    refused = 0
    for _ in range(100):  # bounded: about 10 s; the lease is 1 s by the store's clock
        try:
            with s3lock.hold(backend, STACK, stacklock._me("fedi up"), note=notes.append):
                assert json.loads(s3.get(KEY)[0])["pid"] == os.getpid()
            break
        except StackBusy as busy:
            assert f"(pid {pid})" in busy.line()
            refused += 1
            time.sleep(0.1)
    else:
        raise AssertionError("the stale lock was never taken over")
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"stack {STACK}: took over a stale lock in {backend}: `fedi up` by ")
    assert f"(pid {pid}) since " in notes[0] and "lease 1 s" in notes[0]
    assert s3.get(KEY) is None


def test_a_live_holder_renews_its_lease_and_is_never_taken_over(shared, tmp_path) -> None:
    backend, s3 = shared
    other = OtherComputer(tmp_path, backend, lease=2)  # renews every 0.5 s
    try:
        first = s3.get(KEY)[1]
        for _ in range(7):  # 3.5 s, past its lease: every attempt is refused
            with pytest.raises(StackBusy), stacklock.hold(STACK, "fedi down", backend):
                pass
            time.sleep(0.5)
        content, etag, _ = s3.get(KEY)
        assert etag != first and json.loads(content)["renewals"] > 0 and json.loads(content)["pid"] == other.proc.pid
    finally:
        assert other.end() == 0
    assert s3.get(KEY) is None


CONTENDER = """
import os, sys, time
from provision.lifecycle import stacklock
from provision.errors import StackBusy
marker, backend, held = sys.argv[1], sys.argv[2], 0
for _ in range(8):
    try:
        with stacklock.hold("contended", "fedi up", backend):
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
            os.close(fd)
            time.sleep(0.05)  # a change takes a while: a second holder would find the marker
            os.unlink(marker)
            held += 1
    except StackBusy:
        pass
print(held)
"""


def test_computers_changing_one_stack_at_once_never_overlap(shared, tmp_path) -> None:
    """Three computers (three state dirs, so no flock between them) race for one stack's lock."""
    backend, s3 = shared
    marker = tmp_path / "inside"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(marker), backend],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "FEDI_STATE_DIR": str(tmp_path / f"computer-{n}")},
        )
        for n in range(3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode()[-1500:] for _, err in results]
    assert sum(int(out) for out, _ in results) > 0
    assert list(s3.list_keys("fedi/")) == []


@pytest.fixture
def stack_in_shared_backend(shared, tmp_path, monkeypatch):
    """A Hetzner stack (the real program under Pulumi's mocks) whose backend is the shared bucket."""
    from provision.providers.hetzner.offline import OfflineEngine
    from provision.providers.hetzner.provider import HetznerProvider
    from provision.providers.local.provider import LocalProvider
    from provision.sizing import sizing
    from tests.support.stack_fixtures import bundle_of, spec_of

    backend, s3 = shared
    engine = OfflineEngine(tmp_path / "shared-state")

    def make(name, backend=None, **_):
        return HetznerProvider(engine=engine, backend=backend) if name == "hetzner" else LocalProvider()

    monkeypatch.setattr(cli_target, "make_provider", make)
    monkeypatch.setenv("FEDI_PASSPHRASE", "a passphrase for the tests")
    prov = make("hetzner", backend)
    spec = spec_of(domain="social.example.org")
    prov.secrets(spec)
    prov.up(spec, sizing(spec), bundle_of(), lambda _line: None)
    return backend, s3, engine


def _state(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "argv",
    [
        ["down", "--yes"],
        ["resize", "--size", "medium", "--yes"],
        ["backup", "restore", "--yes"],
        ["admins", "remove", "alice"],
    ],
    ids=["down", "resize", "backup-restore", "admins-remove"],
)
def test_the_cli_refuses_a_stack_busy_on_another_computer_with_exit_10(
    stack_in_shared_backend, tmp_path, capsys, argv
) -> None:
    backend, s3, engine = stack_in_shared_backend
    before = _state(tmp_path / "shared-state")
    other = OtherComputer(tmp_path, backend)
    try:
        code = cli.main([*argv, "--domain", "social.example.org", "--backend", backend])
    finally:
        assert other.end() == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 10, err
    assert len(err) == 1 and err[0].startswith(f"fedi: stack {STACK} is busy: `fedi up` by "), err
    assert f"(pid {other.proc.pid}) since " in err[0]
    assert _state(tmp_path / "shared-state") == before  # nothing changed


def test_read_only_commands_do_not_take_the_shared_lock(stack_in_shared_backend, tmp_path, capsys) -> None:
    backend, s3, engine = stack_in_shared_backend
    other = OtherComputer(tmp_path, backend)
    try:
        assert cli.main(["stacks", "--provider", "hetzner", "--backend", backend, "--json"]) == 0
        assert STACK in capsys.readouterr().out
        assert json.loads(s3.get(KEY)[0])["pid"] == other.proc.pid  # still the other computer's
    finally:
        assert other.end() == 0


class IgnoresConditions:
    """A WSGI layer in front of moto that drops the given conditional headers, as a store that does
    not implement conditional writes would."""

    def __init__(self, app, headers: tuple[str, ...]):
        self.app, self.headers = app, headers

    def __call__(self, environ, start_response):
        for header in self.headers:
            environ.pop(header, None)
        return self.app(environ, start_response)


@pytest.mark.parametrize(
    ("dropped", "named"),
    [(("HTTP_IF_NONE_MATCH",), "If-None-Match"), (("HTTP_IF_MATCH",), "If-Match")],
    ids=["if-none-match", "if-match"],
)
def test_a_store_that_ignores_conditional_writes_is_refused(fedi_dirs, monkeypatch, dropped, named) -> None:
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    monkeypatch.setattr(s3lock, "_checked", set())
    port = free_port()
    server = make_server("127.0.0.1", port, IgnoresConditions(DomainDispatcherApplication(create_backend_app), dropped))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        make_bucket(endpoint, BUCKET)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        backend = f"s3://{BUCKET}/fedi?endpoint=127.0.0.1:{port}&disableSSL=true&region=us-east-1"
        with pytest.raises(ProvisionError) as refused, stacklock.hold(STACK, "fedi up", backend):
            raise AssertionError("a lock was taken in a store that cannot lock")
        line = refused.value.line()
        assert f"ignores conditional writes ({named})" in line and "changes nothing" in line
        assert refused.value.exit_code == 4 and SECRET not in line
        s3 = S3(Bucket(endpoint, "us-east-1", BUCKET, "test", SECRET))
        assert list(s3.list_keys()) == []  # the probe is gone, no lock was written
    finally:
        server.shutdown()
        thread.join(timeout=30)


def test_the_backend_url_and_the_environment_name_the_bucket(monkeypatch) -> None:
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": "tok"}
    where = s3lock.state_bucket("s3://coop-state/fedi/prod?endpoint=minio.lan:9000&disableSSL=true&region=x", env)
    assert (where.bucket.endpoint, where.bucket.region, where.bucket.name) == ("http://minio.lan:9000", "x", BUCKET)
    assert where.lock_key(STACK) == f"fedi/prod/.fedi/locks/{STACK}.json" and where.url == "s3://coop-state/fedi/prod"
    assert where.bucket.session_token == "tok" and SECRET not in repr(where)
    env["AWS_ENDPOINT_URL_S3"] = "https://fsn1.your-objectstorage.com"
    env["AWS_REGION"] = "fsn1"
    where = s3lock.state_bucket("s3://coop-state", env)
    assert (where.bucket.endpoint, where.bucket.region) == ("https://fsn1.your-objectstorage.com", "fsn1")
    assert where.lock_key(STACK) == f".fedi/locks/{STACK}.json"
    aws = s3lock.state_bucket(
        "s3://coop-state/fedi?region=eu-central-1", {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    )
    assert aws.bucket.endpoint == "https://s3.eu-central-1.amazonaws.com"
    with pytest.raises(MissingPrerequisite) as missing:
        s3lock.state_bucket("s3://coop-state/fedi", {})
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in missing.value.line()
    assert not s3lock.shared(None) and not s3lock.shared("file:///x") and s3lock.shared("s3://b/p")


def test_up_in_the_shared_backend_is_refused_while_another_computer_changes_the_stack(
    stack_in_shared_backend, tmp_path
) -> None:
    from provision.lifecycle import stack as lifecycle
    from provision.providers.hetzner.provider import HetznerProvider
    from tests.support.stack_fixtures import spec_of

    backend, s3, engine = stack_in_shared_backend
    before = _state(tmp_path / "shared-state")
    other = OtherComputer(tmp_path, backend, command="fedi resize")
    try:
        with pytest.raises(StackBusy) as refused:
            lifecycle.up(spec_of(domain="social.example.org"), HetznerProvider(engine=engine, backend=backend), print)
    finally:
        assert other.end() == 0
    assert refused.value.line().startswith(f"stack {STACK} is busy: `fedi resize` by ")
    assert _state(tmp_path / "shared-state") == before


def test_a_holder_that_was_taken_over_says_so_and_leaves_the_new_lock_alone(shared, tmp_path) -> None:
    """A holder frozen past its lease (SIGSTOP: a laptop put to sleep) is taken over; when it wakes,
    its renewal fails, it says so in one line, and its release does not remove the new holder's lock."""
    backend, s3 = shared
    other = OtherComputer(tmp_path, backend, lease=1)
    other.proc.send_signal(signal.SIGSTOP)
    notes: list[str] = []
    try:
        for _ in range(100):  # bounded: about 10 s
            try:
                taken = s3lock.hold(backend, STACK, stacklock._me("fedi up"), note=notes.append)
                taken.__enter__()
                break
            except StackBusy:
                time.sleep(0.1)
        else:
            raise AssertionError("the frozen holder's lock was never taken over")
        assert len(notes) == 1 and "took over a stale lock" in notes[0]
        mine = json.loads(s3.get(KEY)[0])
        other.proc.send_signal(signal.SIGCONT)
        assert other.proc.stderr.readline().startswith(f"fedi: stack {STACK}: another run took over this run's lock")
        assert other.end() == 0
        assert json.loads(s3.get(KEY)[0])["token"] == mine["token"]  # still this run's
    finally:
        other.proc.send_signal(signal.SIGCONT)
    taken.__exit__(None, None, None)
    assert s3.get(KEY) is None
