"""The recovery kit: exported to two trustees' SSH ed25519 keys (made here with ssh-keygen), opened with
Debian's age in a fresh HOME and state, refused with the wrong key, and split with a threshold."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from provision.access import age, handover, kit
from provision.cli import app as cli
from provision.lifecycle.backup import parse_env
from provision.providers.local.provider import LocalProvider
from provision.spec import build_spec

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="age is not installed (scripts/test installs it)")

DOMAIN = "kit.example.org"


def keypair(tmp_path, name):
    path = tmp_path / "keys" / name
    path.parent.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)], check=True)
    return path, path.with_name(name + ".pub")


def fresh(monkeypatch, root):
    """Another computer: its own HOME, state, cache and config, no passphrase in the environment."""
    for env in ("FEDI_STATE_DIR", "FEDI_CACHE_DIR", "FEDI_CONFIG_DIR", "HOME"):
        monkeypatch.setenv(env, str(root / env.lower()))
    for env in ("FEDI_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"):
        monkeypatch.delenv(env, raising=False)


def fedi(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def local_stack(monkeypatch, tmp_path):
    """A local stack as `fedi up` records it (secrets, address, pinned host key), without its machine."""
    fresh(monkeypatch, tmp_path / "admin")
    spec = build_spec({"software": "lemmy", "size": "tiny", "domain": DOMAIN, "provider": "local"})
    prov = LocalProvider()
    secrets = prov.secrets(spec)
    prov._store().update(spec.stack_name, address="10.248.0.2", host_key=secrets["ssh_host_ed25519_key_pub"])
    return spec.stack_name, secrets


@pytest.fixture
def age_calls(monkeypatch):
    """Every age command fedi runs, with what it was given on stdin."""
    calls = []

    def run(argv, data):
        calls.append(argv)
        return age._run(argv, data)

    monkeypatch.setattr(age, "RUN", run)
    return calls


def test_export_to_two_keys_opens_in_a_fresh_home(local_stack, tmp_path, monkeypatch, capsys, age_calls):
    name, secrets = local_stack
    (alice, alice_pub), (bob, bob_pub) = keypair(tmp_path, "alice"), keypair(tmp_path, "bob")
    before = LocalProvider().outputs(name)
    from provision.state import passphrase

    admin_passphrase = passphrase()
    out = tmp_path / "kits"
    rc, o, err = fedi(capsys, "kit", "export", "--domain", DOMAIN, "--to", alice_pub, "--to", bob_pub.read_text(),
                      "--out", out, "--json")  # fmt: skip
    assert rc == 0, err
    files = [out / f"{name}.kit-1-alice-test.age", out / f"{name}.kit-2-bob-test.age"]
    assert [r["file"] for r in json.loads(o)["files"]] == [str(f) for f in files]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        text = f.read_text()
        assert text.startswith("-----BEGIN AGE ENCRYPTED FILE-----")
        assert secrets["restic_password"] not in text and admin_passphrase not in text
    # no secret in any age argv: the plaintext went in on stdin
    assert age_calls and all(argv[:2] == ["age", "--encrypt"] for argv in age_calls)
    for argv in age_calls:
        assert not any(s in " ".join(argv) for s in (secrets["restic_password"], admin_passphrase, "PRIVATE KEY"))

    for who, (key, f) in {"alice": (alice, files[0]), "bob": (bob, files[1])}.items():
        fresh(monkeypatch, tmp_path / f"new-{who}")
        age_calls.clear()
        rc, o, err = fedi(capsys, "kit", "open", f, "--identity", key, "--json")
        assert rc == 0, err
        assert age_calls == [["age", "--decrypt", "--identity", str(key)]]
        saved = json.loads(o)
        env = parse_env(Path(saved["restic_env"]).read_text())
        assert env["RESTIC_PASSWORD"] == secrets["restic_password"]
        for path in (saved["restic_env"], saved["steps"]):
            assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o600
        steps = Path(saved["steps"]).read_text()
        assert f"fedi backup list --domain {DOMAIN} --provider local" in steps
        assert secrets["restic_password"] not in steps
        after = LocalProvider().outputs(name)  # the new computer reaches the same server, same pinned key
        assert after.access.address == before.access.address and after.access.host_key == before.access.host_key
        assert after.access.client_key.read_text() == secrets["ssh_client_key"]
        assert LocalProvider().stored_secrets(name) == secrets
        assert [s.domain for s in LocalProvider().stacks()] == [DOMAIN]


def test_the_wrong_key_is_one_line_and_writes_nothing(local_stack, tmp_path, monkeypatch, capsys):
    name, _ = local_stack
    (_, alice_pub), (mallory, _) = keypair(tmp_path, "alice"), keypair(tmp_path, "mallory")
    assert fedi(capsys, "kit", "export", "--domain", DOMAIN, "--to", alice_pub, "--out", tmp_path / "k")[0] == 0
    (f,) = (tmp_path / "k").iterdir()
    new = tmp_path / "new"
    fresh(monkeypatch, new)
    rc, o, err = fedi(capsys, "kit", "open", f, "--identity", mallory)
    assert rc == 2 and o == ""
    assert err == f"fedi: {f} is not encrypted to the key {mallory} (use the key the kit was made for)\n"
    assert not [p for p in new.rglob("*") if p.is_file()]


def test_bad_input_is_refused_before_anything_is_written(local_stack, tmp_path, capsys, monkeypatch):
    _, alice_pub = keypair(tmp_path, "alice")
    rsa = tmp_path / "rsa.pub"
    rsa.write_text("ssh-rsa AAAAB3NzaC1yc2E rsa@test\n")
    out = tmp_path / "k"
    rc, _, err = fedi(capsys, "kit", "export", "--domain", DOMAIN, "--to", rsa, "--out", out)
    assert rc == 2 and "not one SSH ed25519 public key or age recipient" in err and not out.exists()
    rc, _, err = fedi(capsys, "kit", "export", "--domain", DOMAIN, "--to", alice_pub, "--threshold", "2", "--out", out)
    assert rc == 2 and "--threshold 2: needs 2 to 1" in err and not out.exists()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rc, _, err = fedi(capsys, "kit", "export", "--domain", DOMAIN, "--to", alice_pub, "--out", out)
    assert (rc, err) == (3, "fedi: age is not installed (it encrypts the kit) (run `apt-get install age`)\n")
    assert not out.exists()


def test_threshold_one_share_alone_reveals_nothing_two_open_it(local_stack, tmp_path, monkeypatch, capsys):
    name, secrets = local_stack
    keys = [keypair(tmp_path, who) for who in ("alice", "bob", "carol")]
    out = tmp_path / "kits"
    argv = ["kit", "export", "--domain", DOMAIN, "--out", out, "--threshold", "2"]
    for _, pub in keys:
        argv += ["--to", pub]
    rc, _, err = fedi(capsys, *argv)
    assert rc == 0, err
    files = sorted(out.iterdir())
    assert len(files) == 3

    # What one trustee can read alone: a share and the sealed payload, nothing of the instance.
    share = kit.read_file(age.decrypt(files[0].read_bytes(), keys[0][0], "f"), "f")
    assert set(share) == {"fedi_kit", "stack", "threshold", "trustees", "share", "sealed"}
    text = json.dumps(share)
    assert all(v not in text for v in (secrets["restic_password"], secrets["ssh_client_key"], DOMAIN))
    with pytest.raises(Exception, match="needs 2 of its 3 trustees' files; 1 given"):
        kit.combine([share])

    new = tmp_path / "alone"
    fresh(monkeypatch, new)
    rc, _, err = fedi(capsys, "kit", "open", files[0], "--identity", keys[0][0])
    assert rc == 2 and "needs 2 of its 3 trustees' files; 1 given" in err
    assert not [p for p in new.rglob("*") if p.is_file()]

    # Any two together (here the first and the third) open it.
    fresh(monkeypatch, tmp_path / "two")
    rc, o, err = fedi(capsys, "kit", "open", files[2], "--identity", keys[2][0], files[0], "--identity", keys[0][0],
                      "--json")  # fmt: skip
    assert rc == 0, err
    assert parse_env(Path(json.loads(o)["restic_env"]).read_text())["RESTIC_PASSWORD"] == secrets["restic_password"]
    assert LocalProvider().stored_secrets(name) == secrets


def test_a_share_altered_does_not_open(local_stack):
    payload = {"format": kit.FORMAT, "stack": "s", "x": 1}
    a, b = (json.loads(f) for f in kit.share_files(payload, 2, 2))
    assert kit.combine([a, b]) == payload
    b["share"]["value"] = a["share"]["value"]
    b["share"]["index"] = 3
    with pytest.raises(Exception, match="do not open this kit"):
        kit.combine([a, b])


def test_opening_where_the_stack_is_known_is_refused(local_stack, tmp_path, capsys):
    key, pub = keypair(tmp_path, "alice")
    assert fedi(capsys, "kit", "export", "--domain", DOMAIN, "--to", pub, "--out", tmp_path / "k")[0] == 0
    (f,) = (tmp_path / "k").iterdir()
    rc, _, err = fedi(capsys, "kit", "open", f, "--identity", key)
    assert rc == 2 and "already has a local stack" in err


@pytest.mark.parametrize("backend", ["s3://coop-state/fedi", "file:///root/.local/state/fedi/pulumi"])
def test_a_hetzner_kit_names_its_backend_and_its_steps_name_no_secret(backend):
    payload = kit.build_payload(
        stack="social-example-org",
        provider="hetzner",
        identity={"domain": "social.example.org", "software": "mastodon", "size": "small"},
        passphrase="correct-horse-battery",
        backend=backend,
        restic_env="RESTIC_PASSWORD=hunter2hunter2\n",
        host_key="ssh-ed25519 AAAAC3Nz host",
    )
    steps = payload["steps"]
    assert payload["state"] == {"backend": backend, "backend_env": {}, "passphrase": "correct-horse-battery",
                                "document": None, "machine": None}  # fmt: skip
    assert f"fedi status --domain social.example.org --provider hetzner --backend {backend}" in steps
    assert "correct-horse-battery" not in steps and "hunter2" not in steps
    assert ("carries its passphrase" in steps) is backend.startswith("file://")


def test_a_hetzner_kit_opened_sets_the_passphrase_and_the_backend_keys(tmp_path, monkeypatch, capsys):
    fresh(monkeypatch, tmp_path / "new")
    payload = kit.build_payload(
        stack="social-example-org",
        provider="hetzner",
        identity={"domain": "social.example.org", "software": "mastodon", "size": "small"},
        passphrase="correct-horse-battery",
        backend="s3://coop-state/fedi",
        restic_env="RESTIC_PASSWORD=hunter2hunter2\n",
        host_key="ssh-ed25519 AAAAC3Nz host",
        backend_env={"AWS_ACCESS_KEY_ID": "AKSTATE", "AWS_SECRET_ACCESS_KEY": "SKSTATE"},
    )
    assert ". ~/.local/state/fedi/kits/social-example-org/backend.env" in payload["steps"]
    saved = handover.install(payload)
    from provision.lifecycle.backup import parse_env
    from provision.state import passphrase

    assert passphrase() == "correct-horse-battery"
    assert parse_env(saved["backend_env"].read_text()) == {
        "AWS_ACCESS_KEY_ID": "AKSTATE",
        "AWS_SECRET_ACCESS_KEY": "SKSTATE",
    }
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in saved.values())
    # Another stack's kit with another passphrase is refused on this computer, nothing written.
    other = {**payload, "stack": "other", "state": {**payload["state"], "passphrase": "another"}}
    with pytest.raises(Exception, match="state passphrase is not the one"):
        handover.install(other)
    assert not (tmp_path / "new" / "fedi_state_dir" / "kits" / "other").exists()


def test_an_export_while_another_run_changes_the_stack_is_refused_and_writes_nothing(local_stack, tmp_path, capsys):
    """The export records itself with the stack (as `fedi admins` does), so it holds the stack's lock."""
    from test_stacklock import OtherRun

    name, _ = local_stack
    _, alice_pub = keypair(tmp_path, "alice")
    other = OtherRun(name, "fedi down")
    try:
        rc, _, err = fedi(capsys, "kit", "export", "--domain", DOMAIN, "--to", alice_pub, "--out", tmp_path / "k")
    finally:
        other.end()
    assert rc == 10 and err.startswith(f"fedi: stack {name} is busy: `fedi down` by ") and err.count("\n") == 1
    assert not (tmp_path / "k").exists() and not LocalProvider().outputs(name).extra.get("kits")


@pytest.mark.parametrize(("backend", "carried"), [("s3://coop-state/fedi", True), ("file:///srv/pulumi", False)])
def test_a_hetzner_kit_carries_the_backend_keys_only_for_an_s3_backend(monkeypatch, tmp_path, backend, carried):
    from provision.providers.hetzner.offline import OfflineEngine
    from provision.providers.hetzner.provider import HetznerProvider

    fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "coop-key-id")
    monkeypatch.setenv("HCLOUD_TOKEN", "not-for-the-kit")
    held = HetznerProvider(engine=OfflineEngine()).kit_state("social-example-org", backend)
    assert held["backend"] == backend and held["document"] is None and held["machine"] is None
    assert held["backend_env"] == ({"AWS_ACCESS_KEY_ID": "coop-key-id"} if carried else {})
