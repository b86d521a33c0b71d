"""More than one admin: validation, the stack's records, and the commands and vars that apply them.

Pure: nothing here connects anywhere. Each admin is a personal login on the server (own user, one
SSH key, sudo through the ``fedi-admins`` group, which sshd's ``AllowGroups`` also names); the list is
kept in the stack (provider.set_admins) and handed to the playbook as ``fedi_admins`` by every converge
and by the admins-only play (provision.access.admins_play), so a removal revokes access at once and stays
revoked. With an app role, the admin also gets an account in the app: those commands are built here as
argv lists and run on the server over the pinned channel.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

from provision import apps
from provision.errors import UsageError, ValidationError
from provision.fields import validate_email

GROUP = "fedi-admins"  # sudo and sshd's AllowGroups; the operator's login is a member too
COMMENT = "fedi admin"  # GECOS of every user fedi made for an admin: the role touches only these
OPERATOR = "fedi"  # the operator's login (cloud-init's admin user)
ROLES = ("admin", "moderator")
MIN_RSA_BITS = 3072  # sshd's RequiredRSASize (roles/base/templates/sshd-fedi.conf.j2)

# Debian's useradd accepts more; this is the portable rule (NAME_REGEX of adduser, 32 characters).
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Users of Debian's base system and of the packages the playbook installs, and the prefixes
# Debian reserves for system users: an admin can never be one of them.
SYSTEM_USERS = frozenset(
    """root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats nobody
    _apt messagebus sshd polkitd postgres caddy valkey redis rabbitmq docker dnsmasq tss uuidd ntp ntpsec
    _chrony chrony fail2ban admin administrator sudo staff adm wheel operator ubuntu debian cloud-user fedi
    restic app""".split()  # noqa: SIM905 - a word list reads better than 49 quoted words
) | {app.name for app in apps.all_apps()}  # each app's database role and name
_SYSTEM_PREFIXES = ("systemd-", "debian-", "_")
# The key types sshd accepts from clients (PubkeyAcceptedAlgorithms): ECDSA is not among them.
KEY_TYPES = ("ssh-ed25519", "ssh-rsa")


@dataclass(frozen=True)
class Admin:
    name: str  # the Linux login on the server
    key: str  # "TYPE BASE64" (no comment: the comment is not the admin's to put on the server)
    fingerprint: str  # SHA256:... as ssh-keygen -l and sshd's log print it
    app_role: str = ""  # admin | moderator | "" (server access only)
    email: str = ""  # the app account's e-mail (with app_role)
    added: str = ""  # ISO 8601 UTC


def validate_name(name: str, existing: tuple[str, ...] = ()) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            "NAME", f"{name!r} is not a login name (a lower-case letter, then up to 31 of a-z 0-9 _ -)"
        )
    if name in SYSTEM_USERS or name.startswith(_SYSTEM_PREFIXES):
        raise ValidationError("NAME", f"{name!r} is a system user's name on the server; choose another")
    if name in existing:
        raise ValidationError("NAME", f"{name!r} is already an admin of this stack")
    return name


def fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_key(text: str) -> tuple[str, str]:
    """One OpenSSH public key line -> ("TYPE BASE64", fingerprint); refused unless sshd will take it."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    if not isinstance(text, str) or not text.strip():
        raise ValidationError("--ssh-key", "empty; give the public key line (or its .pub file)")
    if len(text.strip().splitlines()) != 1:
        raise ValidationError("--ssh-key", "give exactly one public key, on one line")
    fields = text.split()
    if len(fields) < 2:
        raise ValidationError("--ssh-key", "not an OpenSSH public key (TYPE BASE64 [comment])")
    kind, data = fields[0], fields[1]
    if kind.startswith("ecdsa-"):
        raise ValidationError("--ssh-key", "ECDSA keys are not accepted by the server's sshd; use ed25519 or RSA")
    if kind not in KEY_TYPES:
        raise ValidationError("--ssh-key", f"{kind!r} is not an ed25519 or RSA public key")
    try:
        blob = base64.b64decode(data, validate=True)
        key = load_ssh_public_key(f"{kind} {data}".encode())
    except (ValueError, TypeError, base64.binascii.Error):
        raise ValidationError("--ssh-key", f"not a valid {kind} public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            need = f"the server needs {MIN_RSA_BITS} or more"
            raise ValidationError("--ssh-key", f"RSA key of {key.key_size} bits; {need}")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValidationError("--ssh-key", f"not a valid {kind} public key")
    return f"{kind} {data}", fingerprint(blob)


def check_role(software: str, app_role: str | None, email: str | None) -> tuple[str, str]:
    """(app_role, email) as recorded; refused where the app cannot give that role."""
    if not app_role:
        if email:
            raise UsageError("--email is the app account's e-mail: give it with --app-role")
        return "", ""
    if app_role not in ROLES:
        raise ValidationError("--app-role", f"{app_role!r} is not one of {', '.join(ROLES)}")
    refused = apps.get(software).admin_account.refused.get(app_role)
    if refused:
        raise ValidationError("--app-role", refused)
    if not email:
        raise UsageError("--app-role needs --email (the app account's e-mail)")
    return app_role, validate_email(email, "--email")


def make(
    name: str, key_text: str, software: str, records: list[Admin], *, app_role=None, email=None, added=""
) -> Admin:
    """A new admin from the command line, checked against the stack's others. Raises before anything is written."""
    validate_name(name, tuple(a.name for a in records))
    key, fp = parse_key(key_text)
    clash = next((a for a in records if a.fingerprint == fp), None)
    if clash:
        raise ValidationError("--ssh-key", f"this key is already {clash.name!r}'s; every admin has their own key")
    role, mail = check_role(software, app_role, email)
    return Admin(name=name, key=key, fingerprint=fp, app_role=role, email=mail, added=added)


def without(records: list[Admin], name: str) -> list[Admin]:
    if name not in {a.name for a in records}:
        known = ", ".join(a.name for a in records) or "none"
        raise UsageError(f"{name!r} is not an admin of this stack (admins: {known})")
    return [a for a in records if a.name != name]


def to_records(admins: list[Admin]) -> list[dict[str, Any]]:
    return [asdict(a) for a in admins]


def from_records(raw: Any) -> list[Admin]:
    fields = set(Admin.__dataclass_fields__)
    return [Admin(**{k: v for k, v in r.items() if k in fields}) for r in (raw or [])]


def ansible_vars(admins: list[Admin]) -> dict[str, Any]:
    """What the playbook's admins role reads: each login and its one key (nothing else leaves this computer)."""
    return {"fedi_admins": [{"name": a.name, "key": a.key} for a in admins]}


# -- the app account (commands as data, run on the server as root) --


def app_account_argvs(software: str, admin: Admin) -> list[list[str]]:
    """The commands that give ``admin`` an account with its role in the app (the app's recipe is in its
    catalog entry, ``provision/apps/<app>.py`` ``admin_account``)."""
    if not admin.app_role:
        return []
    if not _NAME.fullmatch(admin.name):
        raise ValueError(f"not a login name: {admin.name!r}")
    from provision.remote import commands

    account = apps.get(software).admin_account
    run = [*commands.compose(), "run", "--rm", "--no-deps", "-T", account.service]
    return account.commands(run, admin.name, admin.email, admin.app_role)


# -- the admins-only play (provision.access.admins_play runs it over the pinned channel) --

PLAY = "admins.yml"  # ansible/admins.yml: only the admins role
PLAY_FILES = ("admins.yml", "roles/admins")  # what the play needs from ansible/, uploaded to a staging dir


def play_argv(staging: str, user: str, layout: Any = None) -> list[str]:
    """ansible-playbook of the admins play only, as root, with the bundle's vars and the admins' file."""
    from provision.remote import commands

    layout = layout or commands.Layout()
    return commands.playbook_argv(layout, f"{staging}/ansible/{PLAY}", f"{staging}/admins.json", user, scope=False)


def login_access(access: Any, records: list[Admin], name: str | None, identity: Any) -> Any:
    """``access`` for `fedi ssh --as NAME --identity KEY`: that admin's login and private key, same pinned host."""
    from dataclasses import replace
    from pathlib import Path

    if not name or identity is None:
        raise UsageError("--as and --identity go together: the admin's name and their private key file")
    if name not in {a.name for a in records}:
        known = ", ".join(a.name for a in records) or "none"
        raise UsageError(f"{name!r} is not an admin of this stack (admins: {known})")
    path = Path(identity).expanduser()
    if not path.is_file():
        raise UsageError(f"--identity: {path} is not a file (the admin's private key)")
    return replace(access, user=name, client_key=path)
