"""More than one admin (provision.access.admins): validation table, records, the vars and commands as data,
the admins play and sshd's AllowGroups as rendered. The server side runs in tests/test_e2e_local.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from provision.access import admins
from provision.cli import app as cli
from provision.errors import UsageError, ValidationError
from provision.lifecycle import stack as lifecycle
from provision.model import HostAccess, StackOutputs
from provision.remote import commands

ROOT = Path(__file__).resolve().parent.parent


def openssh(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {
        "ed25519": openssh(ed25519.Ed25519PrivateKey.generate()) + " alice@laptop",
        "ed25519-b": openssh(ed25519.Ed25519PrivateKey.generate()),
        "rsa3072": openssh(rsa.generate_private_key(public_exponent=65537, key_size=3072)),
        "rsa2048": openssh(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ecdsa": openssh(ec.generate_private_key(ec.SECP256R1())),
    }


BAD_NAMES = [
    ("", "is not a login name"),
    ("Alice", "is not a login name"),
    ("1alice", "is not a login name"),
    ("al ice", "is not a login name"),
    ("a" * 33, "is not a login name"),
    ("alice;rm", "is not a login name"),
    ("root", "system user"),
    ("fedi", "system user"),
    ("postgres", "system user"),
    ("www-data", "system user"),
    ("systemd-network", "system user"),
    ("debian-exim", "system user"),
]


@pytest.mark.parametrize(("name", "error"), BAD_NAMES)
def test_bad_names_are_refused_with_one_line(name, error, keys):
    with pytest.raises(ValidationError, match=error) as exc:
        admins.make(name, keys["ed25519"], "mastodon", [])
    assert exc.value.path == "NAME" and "\n" not in str(exc.value)


def test_good_names(keys):
    for name in ("alice", "bob-2", "c_d", "a" * 32):
        assert admins.make(name, keys["ed25519"], "lemmy", []).name == name


BAD_KEYS = [
    ("", "empty"),
    ("ssh-ed25519", "not an OpenSSH public key"),
    ("ssh-ed25519 AAAA-not-base64", "not a valid ssh-ed25519"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "not an ed25519 or RSA"),
]


@pytest.mark.parametrize(("text", "error"), BAD_KEYS)
def test_bad_keys_are_refused(text, error):
    with pytest.raises(ValidationError, match=error):
        admins.parse_key(text)


def test_key_rules(keys):
    with pytest.raises(ValidationError, match="2048 bits; the server needs 3072"):
        admins.parse_key(keys["rsa2048"])
    with pytest.raises(ValidationError, match="ECDSA keys are not accepted"):
        admins.parse_key(keys["ecdsa"])
    with pytest.raises(ValidationError, match="exactly one public key"):
        admins.parse_key(keys["ed25519"] + "\n" + keys["ed25519-b"])
    ed_type, ed_data = keys["ed25519"].split()[:2]
    with pytest.raises(ValidationError, match="not a valid ssh-rsa"):  # type and blob must agree
        admins.parse_key(f"ssh-rsa {ed_data}")
    key, fp = admins.parse_key(keys["ed25519"])
    assert key == f"{ed_type} {ed_data}"  # the comment is dropped
    assert admins.parse_key(keys["rsa3072"])[0].startswith("ssh-rsa ")


def test_fingerprint_is_the_one_ssh_keygen_prints(keys, tmp_path):
    pub = tmp_path / "k.pub"
    pub.write_text(keys["ed25519"] + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True).stdout
    assert admins.parse_key(keys["ed25519"])[1] == out.split()[1]


def test_records_refuse_a_second_admin_with_the_same_name_or_key(keys):
    alice = admins.make("alice", keys["ed25519"], "mastodon", [])
    with pytest.raises(ValidationError, match="already an admin"):
        admins.make("alice", keys["ed25519-b"], "mastodon", [alice])
    with pytest.raises(ValidationError, match="already 'alice'"):
        admins.make("bob", keys["ed25519"], "mastodon", [alice])
    bob = admins.make("bob", keys["ed25519-b"], "mastodon", [alice], added="2026-12-05T21:00:00Z")
    records = admins.to_records([alice, bob])
    assert admins.from_records(json.loads(json.dumps(records))) == [alice, bob]
    assert admins.without([alice, bob], "alice") == [bob]
    with pytest.raises(UsageError, match="'carol' is not an admin of this stack \\(admins: alice, bob\\)"):
        admins.without([alice, bob], "carol")


APP_ROLE_ERRORS = [
    ("mastodon", "owner", "a@example.org", "is not one of admin, moderator"),
    ("lemmy", "moderator", "a@example.org", "Lemmy has no instance moderators"),
    ("mastodon", "admin", None, "needs --email"),
    ("mastodon", "admin", "not-an-email", "is not an e-mail address"),
    ("mastodon", None, "a@example.org", "give it with --app-role"),
]


@pytest.mark.parametrize(("software", "role", "email", "error"), APP_ROLE_ERRORS)
def test_app_role_errors(software, role, email, error, keys):
    with pytest.raises(UsageError, match=error):
        admins.make("alice", keys["ed25519"], software, [], app_role=role, email=email)


def test_ansible_vars_carry_only_names_and_keys(keys):
    alice = admins.make("alice", keys["ed25519"], "mbin", [], app_role="moderator", email="a@example.org")
    assert admins.ansible_vars([alice]) == {"fedi_admins": [{"name": "alice", "key": alice.key}]}


def test_every_converge_hands_the_stack_admins_to_the_playbook(keys):
    alice = admins.make("alice", keys["ed25519"], "mbin", [])
    out = StackOutputs("s", "local", HostAccess("10.0.0.2"), extra={"admins": admins.to_records([alice])})
    assert lifecycle.runtime_vars(out)["fedi_admins"] == [{"name": "alice", "key": alice.key}]
    bare = StackOutputs("s", "local", HostAccess("10.0.0.2"))
    assert lifecycle.runtime_vars(bare)["fedi_admins"] == []


COMPOSE = ["docker", "compose", "--project-directory", "/opt/fedi/app", "-f", "/opt/fedi/app/compose.yaml"]


def test_app_account_argvs(keys):
    admin = admins.make("alice", keys["ed25519"], "mastodon", [], app_role="admin", email="a@example.org")
    assert admins.app_account_argvs("mastodon", admin) == [
        [*COMPOSE, "run", "--rm", "--no-deps", "-T", "web", "bin/tootctl", "accounts", "create", "alice",
         "--email", "a@example.org", "--confirmed", "--role", "Admin"],
        [*COMPOSE, "run", "--rm", "--no-deps", "-T", "web", "bin/tootctl", "accounts", "approve", "alice"],
    ]  # fmt: skip
    mod = admins.make("bob", keys["ed25519-b"], "mbin", [], app_role="moderator", email="b@example.org")
    assert admins.app_account_argvs("mbin", mod) == [
        ["sh", "-c", 'IFS= read -r password && exec "$@" "$password"', "sh",
         *COMPOSE, "run", "--rm", "--no-deps", "-T", "php", "bin/console", "mbin:user:create", "--moderator",
         "bob", "b@example.org"],
    ]  # fmt: skip
    lemmy_admin = admins.make("carol", keys["ed25519"], "lemmy", [], app_role="admin", email="c@example.org")
    (argv,) = admins.app_account_argvs("lemmy", lemmy_admin)
    assert argv[:11] == [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-XtAq",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        "lemmy",
        "-c",
    ]
    assert "person.name = 'carol'" in argv[11] and "SET admin = true" in argv[11]
    assert admins.app_account_argvs("lemmy", admins.make("dan", keys["ed25519"], "lemmy", [])) == []


def test_the_admins_play_argv():
    assert admins.play_argv("/tmp/fedi-upload.x", "fedi") == [
        "sudo", "-n", "-H", "--", "env", *commands.ANSIBLE_ENV, "ansible-playbook", "-c", "local", "-i", "localhost,",
        "/tmp/fedi-upload.x/ansible/admins.yml", "-e", "@/opt/fedi/bundle/ansible-vars.yml",
        "-e", "@/tmp/fedi-upload.x/admins.json",
    ]  # fmt: skip


def test_ssh_as_an_admin_uses_their_login_and_key_with_the_same_pinned_host(keys, tmp_path):
    alice = admins.make("alice", keys["ed25519"], "lemmy", [])
    key = tmp_path / "alice"
    key.write_text("private")
    access = HostAccess("10.0.0.2", host_key="ssh-ed25519 AAAA", client_key=Path("/op/key"))
    as_alice = admins.login_access(access, [alice], "alice", key)
    assert (as_alice.user, as_alice.client_key, as_alice.host_key) == ("alice", key, access.host_key)
    argv = commands.ssh_argv(as_alice, "/tmp/kh", ["whoami"])
    assert argv[argv.index("-i") + 1] == str(key) and argv[argv.index("-l") + 1] == "alice"
    with pytest.raises(UsageError, match="'bob' is not an admin"):
        admins.login_access(access, [alice], "bob", key)
    with pytest.raises(UsageError, match="go together"):
        admins.login_access(access, [alice], "alice", None)
    with pytest.raises(UsageError, match="is not a file"):
        admins.login_access(access, [alice], "alice", tmp_path / "missing")


def test_the_cli_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDI_STATE_DIR", str(tmp_path / "state"))
    rc = cli.main(
        ["admins", "add", "Root!", "--ssh-key", "ssh-ed25519 AAAA", "--provider", "local", "--domain", "x.localhost"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "is not a login name" in err, err
    assert not any((tmp_path / "state").rglob("*.json"))


def test_admins_play_and_role(tmp_path):
    play = yaml.safe_load((ROOT / "ansible" / "admins.yml").read_text())
    assert [r["role"] for r in play[0]["roles"]] == ["admins"]
    proc = subprocess.run(
        [Path(sys.executable).parent / "ansible-playbook", "--syntax-check", "-i", "localhost,",
         str(ROOT / "ansible" / "admins.yml")],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "ANSIBLE_HOME": str(tmp_path), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "t")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    defaults = yaml.safe_load((ROOT / "ansible" / "roles" / "admins" / "defaults" / "main.yml").read_text())
    assert defaults["admins_group"] == admins.GROUP and defaults["admins_comment"] == admins.COMMENT
    sshd = (ROOT / "ansible" / "roles" / "base" / "templates" / "sshd-fedi.conf.j2").read_text()
    assert f"\nAllowGroups {admins.GROUP}\n" in sshd and "\nLogLevel VERBOSE\n" in sshd
