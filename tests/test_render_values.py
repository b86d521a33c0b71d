"""Every value the user gives reaches the app exactly, or is refused at the door (issue 18).

Rendered files are read back by the apps' real readers from Debian 13 (tests/support/readers.py: docker
compose, Ruby dotenv, Symfony Dotenv and Mailer's DSN parser, Rust's deser_hjson), plus caddy adapt,
ansible's YAML loader and the backup scripts' own env reader, and compared with what the user gave.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provision.errors import UsageError, ValidationError
from provision.model import ObjectStorage
from provision.render import quote
from provision.render.bundle import render_bundle
from provision.render.secrets import generate_secrets
from provision.sizing import sizing
from provision.spec import build_spec
from tests.support.readers import debian_readers
from tests.support.render_cases import DOMAIN, STORAGE, read, tool

HOSTILE = [
    "secret\\",
    "DOMAIN\\",
    "o'brien@example.org",
    "ops$X@example.org",
    "#",
    "pass #word",
    'it\'s "quoted"',
    '"',
    "'",
    " leading and trailing ",
    "a=b==",
    "ünïcødé 😀 密码",
    "$HOME ${HOME} $$",
    "`id` $(id)",
    "%kernel.project_dir%",
    "{{ lookup('env', 'HOME') }}",
    "back\\slash\\n",
]
# printable text: no control characters (those are refused), no surrogates
PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=24)
HYPOTHESIS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="session")
def readers():
    return debian_readers()


def _nothing_written(tmp_path: Path) -> bool:
    return [p.name for p in tmp_path.iterdir() if p.name != "fedi"] == []  # fedi: the test's state dirs


def _representable(value: str, *formats: str) -> bool:
    try:
        quote.check_field(value, "x", formats)
    except ValidationError:
        return False
    return True


# --- the writers, each against its reader ------------------------------------------------------


def _dotenv_file(values: list[str]) -> tuple[str, dict[str, str]]:
    want = {f"K{i}": v for i, v in enumerate(values)}
    return "".join(f"{k}={quote.dotenv(v)}\n" for k, v in want.items()), want


def _compose_env(readers, tmp_path: Path, env_text: str) -> dict[str, str]:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / ".env").write_text(env_text)
    (app / "compose.yaml").write_text("name: t\nservices:\n  a:\n    image: busybox\n    env_file: .env\n")
    return readers.compose(app)["a"]["environment"]


def _check_dotenv(readers, tmp_path: Path, values: list[str]) -> None:
    values = [v for v in values if _representable(v, "dotenv")]
    text, want = _dotenv_file(values)
    assert _compose_env(readers, tmp_path, text) == want
    assert readers.ruby_dotenv(text) == want
    assert readers.symfony_dotenv(text) == want


def test_dotenv_hostile_values_read_back_by_compose_ruby_and_symfony(readers, tmp_path):
    assert all(_representable(v, "dotenv") for v in HOSTILE[:-1])
    _check_dotenv(readers, tmp_path, HOSTILE)


@HYPOTHESIS
@given(st.lists(PRINTABLE, min_size=1, max_size=40))
def test_dotenv_any_printable_values(readers, tmp_path, values):
    _check_dotenv(readers, tmp_path, values)


@pytest.mark.parametrize("value", ["it's\\n", "'\\\"", "x'$(id", "a\\r'"])
def test_dotenv_refuses_only_what_a_reader_would_misread(readers, tmp_path, value):
    """The refused values: their plain double-quoted form is misread by at least one reader."""
    with pytest.raises(quote.Unrepresentable):
        quote.dotenv(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    text = f'K="{escaped}"\n'
    read = []
    for reader in (lambda: _compose_env(readers, tmp_path, text), lambda: readers.ruby_dotenv(text)):
        read.append(reader().get("K"))
    try:
        read.append(readers.symfony_dotenv(text).get("K"))
    except Exception:  # noqa: BLE001 - Symfony refusing the file is a misreading too
        read.append(None)
    assert any(got != value for got in read)


@HYPOTHESIS
@given(st.lists(PRINTABLE, min_size=1, max_size=40))
def test_hjson_any_printable_values(readers, values):
    doc = "{\n" + "".join(f"  k{i}: {quote.hjson(v)}\n" for i, v in enumerate(values)) + "}\n"
    assert readers.hjson(doc) == {f"k{i}": v for i, v in enumerate(values)}


@HYPOTHESIS
@given(PRINTABLE, PRINTABLE)
def test_url_part_read_back_by_symfony_mailer_dsn(readers, user, password):
    dsn = f"smtp://{quote.url_part(user)}:{quote.url_part(password)}@smtp.example.org:587"
    got = readers.symfony_mailer_dsn(dsn)
    assert got == {"scheme": "smtp", "host": "smtp.example.org", "user": user, "password": password, "port": 587}


@settings(max_examples=60, deadline=None)
@given(st.lists(PRINTABLE, min_size=1, max_size=10))
def test_yaml_any_printable_values_read_by_ansible(values):
    from ansible.parsing.yaml.loader import AnsibleLoader

    doc = "".join(f"k{i}: {quote.yaml(v)}\n" for i, v in enumerate(values))
    loaded = AnsibleLoader(doc).get_single_data()
    assert {k: str(v) for k, v in loaded.items()} == {f"k{i}": v for i, v in enumerate(values)}


def test_yaml_marks_jinja_unsafe_so_ansible_never_templates_it(tmp_path):
    """The way the app role passes fedi_admin_email to a command (argv built in a Jinja expression)."""
    value = "a%b{{ 7 * 6 }}@example.org"
    (tmp_path / "vars.yml").write_text(f"v: {quote.yaml(value)}\n")
    (tmp_path / "play.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.command:\n        argv: \"{{ ['printf', '%s', v] }}\"\n      register: out\n"
        '    - ansible.builtin.copy:\n        content: "{{ out.stdout }}"\n        dest: '
        + str(tmp_path / "got")
        + "\n"
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-c", "local", "-i", "localhost,"]
        + ["-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{tmp_path / 'vars.yml'}"]
        + [str(tmp_path / "play.yml")],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_NOCOLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "got").read_text() == value


@settings(max_examples=60, deadline=None)
@given(st.lists(PRINTABLE, min_size=1, max_size=10))
def test_compose_strings_survive_interpolation(values):
    """compose.yaml strings: $ is doubled; compose-go's interpolation (the spec's `$$`) undoes it."""
    import yaml as pyyaml

    for v in values:
        loaded = pyyaml.safe_load(f"v: {quote.compose(v)}\n")["v"]
        assert loaded.replace("$$", "$") == v


def test_envfile_read_by_the_backup_scripts_and_python(tmp_path):
    from test_backup_scripts import bash_read_env

    from provision.lifecycle.backup import parse_env

    spec = build_spec({"software": "lemmy", "size": "tiny", "domain": DOMAIN})
    bundle = render_bundle(spec, sizing(spec), generate_secrets(spec), None, tmp_path / "b")
    values = {f"K{i}": v for i, v in enumerate(HOSTILE)}
    env_file = tmp_path / "restic.env"
    env_file.write_text("".join(f"{k}={quote.envfile(v)}\n" for k, v in values.items()))
    assert parse_env(env_file.read_text()) == values
    assert bash_read_env(bundle.path("backup-script"), env_file) == values


def _caddy_email(path: Path, home: Path) -> str:
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "d"), "XDG_CONFIG_HOME": str(home / "c")}
    result = subprocess.run(
        [tool("caddy"), "adapt", "--adapter", "caddyfile", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    conf = json.loads(result.stdout)
    (policy,) = conf["apps"]["tls"]["automation"]["policies"]
    (email,) = {issuer["email"] for issuer in policy["issuers"]}  # every ACME issuer: the same contact
    return email


# --- whole bundles, every user field x every app ----------------------------------------------

SOFTWARE = ("mastodon", "lemmy", "kbin")


def _render(tmp_path: Path, software: str, smtp: dict, password: str | None, monkeypatch, **flags):
    if password is None:
        monkeypatch.delenv("FEDI_SMTP_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("FEDI_SMTP_PASSWORD", password)
    storage = flags.pop("storage", None)
    spec = build_spec({"software": software, "size": "tiny", "domain": DOMAIN, **flags}, {"smtp": smtp})
    out = tmp_path / f"b-{software}"
    return render_bundle(spec, sizing(spec), _secrets(software), storage, out)


@cache
def _secrets(software: str) -> dict[str, str]:
    """Generated once per app (mbin's 4096-bit OAuth key takes seconds); rendering never changes them."""
    return generate_secrets(build_spec({"software": software, "size": "tiny", "domain": DOMAIN}))


def _mail_as_read(readers, tmp_path: Path, software: str, bundle) -> dict:
    """What the app reads: host, port, user, password, from, admin e-mail, S3 keys (where it has them)."""
    text = read(bundle, "app-config")
    if software == "lemmy":
        conf = readers.hjson(text)
        email = conf["email"]
        pictrs = readers.compose(bundle.root / "app")["pictrs"]["environment"]
        host, _, port = email["smtp_server"].rpartition(":")
        return {
            "host": host,
            "port": int(port),
            "user": email.get("smtp_login"),
            "password": email.get("smtp_password"),
            "from": email["smtp_from_address"],
            "admin": conf["setup"]["admin_email"],
            "security": email["tls_type"],
            "s3": (pictrs.get("PICTRS__STORE__ACCESS_KEY"), pictrs.get("PICTRS__STORE__SECRET_KEY")),
        }
    compose_env = next(iter(readers.compose(bundle.root / "app").values()))["environment"]
    own = readers.ruby_dotenv(text) if software == "mastodon" else readers.symfony_dotenv(text)
    for key, value in own.items():  # compose and the app's own reader agree on every key
        assert compose_env.get(key) == value, key
    if software == "mastodon":
        return {
            "host": own["SMTP_SERVER"],
            "port": int(own["SMTP_PORT"]),
            "user": own.get("SMTP_LOGIN"),
            "password": own.get("SMTP_PASSWORD"),
            "from": own["SMTP_FROM_ADDRESS"],
            "s3": (own.get("AWS_ACCESS_KEY_ID"), own.get("AWS_SECRET_ACCESS_KEY")),
            "security": "tls"
            if own["SMTP_TLS"] == "true"
            else ("starttls" if own["SMTP_ENABLE_STARTTLS"] == "always" else "none"),
        }
    dsn = readers.symfony_mailer_dsn(own["MAILER_DSN"])
    query = urlsplit(own["MAILER_DSN"]).query
    return {
        "host": dsn["host"],
        "port": dsn["port"],
        "user": dsn["user"],
        "password": dsn["password"],
        "from": own["KBIN_SENDER_EMAIL"],
        "admin": own["KBIN_CONTACT_EMAIL"],
        "s3": (own["S3_KEY"], own["S3_SECRET"]),
        "security": "tls" if dsn["scheme"] == "smtps" else ("none" if "auto_tls=false" in query else "starttls"),
    }


def _expected(software: str, smtp: dict, password: str, admin: str, storage: ObjectStorage | None) -> dict:
    want = {
        "host": smtp["host"],
        "port": smtp.get("port", 587),
        "user": smtp.get("user"),
        "password": password,
        "from": smtp["from"],
        "security": smtp.get("security", "starttls"),
    }
    if software != "mastodon":
        want["admin"] = admin
    if storage is not None:
        want["s3"] = (storage.access_key, storage.secret_key)
    return want


def _round_trip(readers, tmp_path, monkeypatch, software, *, user, password, sender, admin, s3=("AK", "SK")):
    smtp = {"host": "smtp.example.org", "port": 587, "user": user, "from": sender}
    storage = ObjectStorage(**{**STORAGE.__dict__, "access_key": s3[0], "secret_key": s3[1]})
    bundle = _render(tmp_path, software, smtp, password, monkeypatch, admin_email=admin, storage=storage)
    got = _mail_as_read(readers, tmp_path, software, bundle)
    assert got == _expected(software, smtp, password, admin, storage)
    from ansible.parsing.yaml.loader import AnsibleLoader

    ansible_vars = AnsibleLoader(read(bundle, "ansible-vars")).get_single_data()
    assert str(ansible_vars["fedi_admin_email"]) == admin
    from provision.lifecycle.backup import parse_env

    restic = parse_env(read(bundle, "backup-env"))  # what fedi-backup's load_env reads, too
    assert (restic["AWS_ACCESS_KEY_ID"], restic["AWS_SECRET_ACCESS_KEY"]) == s3
    return bundle


@pytest.mark.parametrize("software", SOFTWARE)
@pytest.mark.parametrize("value", HOSTILE[:-1])
def test_hostile_secret_values_reach_every_app_exactly(readers, tmp_path, monkeypatch, software, value):
    """The SMTP password and user and the S3 keys: any printable value, read back exactly."""
    _round_trip(
        readers,
        tmp_path,
        monkeypatch,
        software,
        user=value,
        password=value,
        sender="social@example.org",
        admin="admin@example.org",
        s3=(value, value),
    )


ADDRESSES = [
    "o'brien@example.org",
    "ops$X@example.org",
    "a#b@example.org",
    "ünï@exämple.org",
    "x=y+z@example.org",
    "back`tick@example.org",
]


@pytest.mark.parametrize("software", SOFTWARE)
@pytest.mark.parametrize("address", ADDRESSES)
def test_hostile_addresses_reach_every_app_exactly(readers, tmp_path, monkeypatch, software, address):
    bundle = _round_trip(
        readers, tmp_path, monkeypatch, software, user="u", password="p", sender=address, admin=address
    )
    assert _caddy_email(bundle.path("proxy"), tmp_path / "home") == address


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=PRINTABLE, password=PRINTABLE, software=st.sampled_from(SOFTWARE))
def test_any_printable_user_and_password_reach_the_app_or_are_refused(
    readers, tmp_path_factory, software, user, password
):
    tmp_path = tmp_path_factory.mktemp("prop")
    with pytest.MonkeyPatch.context() as mp:
        try:
            _round_trip(
                readers,
                tmp_path,
                mp,
                software,
                user=user,
                password=password,
                sender="s@example.org",
                admin="a@example.org",
                s3=(user, password),
            )
        except ValidationError as exc:
            assert exc.path.startswith(("smtp/", "storage/")), exc.path
            assert "\n" not in str(exc)
            assert not (tmp_path / f"b-{software}").exists()


@pytest.mark.parametrize("software", SOFTWARE)
@pytest.mark.parametrize("security", ["starttls", "tls", "none"])
def test_smtp_security_is_expressed_by_every_app(readers, tmp_path, monkeypatch, software, security):
    smtp = {"host": "smtp.example.org", "port": 2525, "user": "u", "from": "s@example.org", "security": security}
    bundle = _render(tmp_path, software, smtp, "pw", monkeypatch)
    got = _mail_as_read(readers, tmp_path, software, bundle)
    assert (got["security"], got["port"]) == (security, 2525)


@pytest.mark.parametrize("software", SOFTWARE)
def test_a_relay_without_login_needs_no_password(readers, tmp_path, monkeypatch, software):
    smtp = {"host": "relay.example.org", "port": 25, "from": "s@example.org", "auth": False, "security": "none"}
    bundle = _render(tmp_path, software, smtp, None, monkeypatch)
    got = _mail_as_read(readers, tmp_path, software, bundle)
    assert got["user"] in (None, "") and got["password"] in (None, "")
    assert got["host"] == "relay.example.org"


# --- named regressions of issue 18 ---------------------------------------------------------------


@pytest.mark.parametrize("software", SOFTWARE)
def test_regression_password_ending_in_a_backslash(readers, tmp_path, monkeypatch, software):
    _round_trip(
        readers,
        tmp_path,
        monkeypatch,
        software,
        user="DOMAIN\\",
        password="secret\\",
        sender="s@example.org",
        admin="a@example.org",
    )


@pytest.mark.parametrize("software", SOFTWARE)
def test_regression_smtp_without_password_is_refused_and_writes_nothing(tmp_path, monkeypatch, software):
    smtp = {"host": "smtp.example.org", "user": "u", "from": "s@example.org"}
    with pytest.raises(ValidationError, match=r"^smtp/password \(\$FEDI_SMTP_PASSWORD\): is not set") as info:
        _render(tmp_path, software, smtp, None, monkeypatch)
    assert info.value.exit_code == 2
    assert not (tmp_path / f"b-{software}").exists() and _nothing_written(tmp_path)


def test_regression_smtp_without_password_via_the_cli(tmp_path, monkeypatch):
    from provision.cli.app import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDI_SMTP_PASSWORD", raising=False)
    (tmp_path / "fedi.toml").write_text('[smtp]\nhost = "smtp.example.org"\nuser = "u"\nfrom = "s@example.org"\n')
    rc = main(["render", "--software", "lemmy", "--size", "tiny", "--domain", DOMAIN, "--out", str(tmp_path / "o")])
    assert rc == 2 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("software", ["kbin"])
def test_regression_mbin_apostrophe_and_dollar_in_addresses(readers, tmp_path, monkeypatch, software):
    _round_trip(
        readers,
        tmp_path,
        monkeypatch,
        software,
        user="u",
        password="p",
        sender="o'brien@example.org",
        admin="ops$X@example.org",
        s3=("A$K", "S'K"),
    )


@pytest.mark.parametrize(
    ("host", "hint"),
    [
        ("smtp.example.org:587", "use the port key"),
        ("smtps://smtp.example.org", 'use port = 465 and security = "tls"'),
        ("smtp.example.org extra", "not a hostname"),
        ("smtp.example.org/", "not a hostname"),
        ("[2001:db8::1]:25", "port"),
        ("2001:db8::1", "IPv6"),
        ("smtp.example.org\n", "newline"),
        ("ab--cd.example.org", "hyphens in 3rd and 4th position"),
    ],
)
def test_regression_smtp_host_is_a_hostname(host, hint):
    with pytest.raises(ValidationError, match="^smtp/host: ") as info:
        build_spec(
            {"software": "lemmy", "size": "tiny", "domain": DOMAIN},
            {"smtp": {"host": host, "user": "u", "from": "s@example.org"}},
        )
    assert hint in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("host", ["smtp.example.org", "mail", "192.0.2.25", "SMTP.Example.ORG"])
def test_smtp_hosts_accepted_as_given(host):
    spec = build_spec(
        {"software": "lemmy", "size": "tiny", "domain": DOMAIN},
        {"smtp": {"host": host, "user": "u", "from": "s@example.org"}},
    )
    assert spec.smtp.host == host


@pytest.mark.parametrize("software", SOFTWARE)
@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "\t", "\x7f", "\u2028"])
@pytest.mark.parametrize("field", ["password", "user", "from", "admin_email", "s3"])
def test_regression_control_characters_refused_for_every_app(tmp_path, monkeypatch, software, bad, field):
    smtp = {"host": "smtp.example.org", "user": "u", "from": "s@example.org"}
    password, flags = "pw", {}
    storage = STORAGE
    if field == "password":
        if bad == "\x00":
            pytest.skip("an environment variable cannot hold a NUL byte")
        password = f"secret{bad}"
    elif field in ("user", "from"):
        smtp[field] = f"x{bad}@example.org" if field == "from" else f"x{bad}"
    elif field == "admin_email":
        flags["admin_email"] = f"a@example.org{bad}"
    else:
        storage = ObjectStorage(**{**STORAGE.__dict__, "secret_key": f"s{bad}"})
    path = {"password": "smtp/password", "user": "smtp/user", "from": "smtp/from", "admin_email": "admin_email"}
    with pytest.raises(ValidationError) as info:
        _render(tmp_path, software, smtp, password, monkeypatch, storage=storage, **flags)
    assert info.value.path.startswith(path.get(field, "storage/secret_key"))
    assert "control character" in str(info.value) or "newline" in str(info.value) or "carriage" in str(info.value)
    assert bad not in str(info.value) and _nothing_written(tmp_path)


def test_regression_control_characters_in_fedi_toml_name_the_key(tmp_path):
    from provision.config import load_config

    (tmp_path / "fedi.toml").write_text('domain = "social.example.org"\n[hooks]\nurls = ["https://x.example/\\r"]\n')
    with pytest.raises(ValidationError, match=r"^hooks/urls\[0\]: contains a carriage return"):
        load_config(tmp_path)


def test_regression_admin_email_with_a_trailing_newline(tmp_path):
    with pytest.raises(ValidationError, match="^admin_email: contains a newline"):
        build_spec({"software": "lemmy", "size": "tiny", "domain": DOMAIN, "admin_email": "a@example.org\n"})


def test_regression_same_value_same_answer_for_every_app(tmp_path, monkeypatch):
    """An apostrophe in the password, user and sender is accepted by all three apps alike."""
    for software in SOFTWARE:
        smtp = {"host": "smtp.example.org", "user": "o'neil", "from": "o'brien@example.org"}
        _render(tmp_path, software, smtp, "it's-secret", monkeypatch)


def test_refusals_name_the_field_not_the_password(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDI_SMTP_PASSWORD", "it's\\nsecret")  # ' and a backslash-n: no dotenv form
    spec = build_spec(
        {"software": "lemmy", "size": "tiny", "domain": DOMAIN},
        {"smtp": {"host": "h.example", "user": "u", "from": "s@example.org"}},
    )
    with pytest.raises(UsageError) as info:
        render_bundle(spec, sizing(spec), generate_secrets(spec), None, tmp_path / "b")
    assert str(info.value).startswith("smtp/password ($FEDI_SMTP_PASSWORD): cannot be used")
    assert "secret" not in str(info.value).split(":", 1)[1].replace("secrets", "")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dues", "nan"),
        ("extra_share", "nan"),
        ("reserve_balance", "inf"),
        ("extra_amount", "-inf"),
        ("reserve_months", "inf"),
    ],
)
def test_regression_coop_nan_and_inf_are_refused_with_the_key(key, value):
    import tomllib

    from provision.billing.dues import parse_coop

    raw = {"dues": 5, "members": 10, **tomllib.loads(f"{key} = {value}")}
    with pytest.raises(ValidationError, match=rf"^coop/{key}: .* must be a finite number$"):
        parse_coop(raw)


def test_regression_coop_nan_through_the_cli_is_exit_2(tmp_path, monkeypatch, capsys):
    from provision.cli.app import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fedi.toml").write_text(
        'software = "lemmy"\nsize = "tiny"\ndomain = "social.example.org"\n[coop]\ndues = nan\nmembers = 10\n'
    )
    assert main(["coop", "dues"]) == 2
    assert "coop/dues" in capsys.readouterr().err


def test_readme_fedi_toml_example_is_accepted(tmp_path, monkeypatch):
    import textwrap

    from provision.config import load_config

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### fedi.toml", 1)[1].split("Accepted forms", 1)[0]
    block = "\n".join(line for line in section.splitlines() if line.startswith("    ") or not line.strip())
    (tmp_path / "fedi.toml").write_text(textwrap.dedent(block))
    monkeypatch.setenv("FEDI_SMTP_PASSWORD", "pw")
    spec = build_spec({}, load_config(tmp_path))
    assert spec.smtp is not None and (spec.smtp.security, spec.smtp.port, spec.smtp.auth) == ("starttls", 587, True)
    assert spec.smtp.password() == "pw"


ATEXT = "abcxyzABC0189!#$%&'*+/=?^_`{|}~-üé密"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    local=st.lists(st.text(st.sampled_from(ATEXT), min_size=1, max_size=8), min_size=1, max_size=3),
    software=st.sampled_from(SOFTWARE),
)
def test_any_address_reaches_the_app_exactly(readers, tmp_path_factory, local, software):
    address = ".".join(local) + "@example.org"
    tmp_path = tmp_path_factory.mktemp("addr")
    with pytest.MonkeyPatch.context() as mp:
        try:
            _round_trip(readers, tmp_path, mp, software, user="u", password="p", sender=address, admin=address)
        except ValidationError as exc:  # only Caddy's placeholders refuse an address: the admin's
            assert ("{" in address or "}" in address) and exc.path == "admin_email", exc


@pytest.mark.parametrize("address", ["{env.HOME}@example.org", "{$HOME}@example.org", "a}@example.org"])
def test_admin_address_with_caddy_placeholders_is_refused(address):
    with pytest.raises(ValidationError, match="^admin_email: cannot be used: .*placeholder"):
        build_spec({"software": "lemmy", "size": "tiny", "domain": DOMAIN, "admin_email": address})
    # the sender never reaches Caddy: accepted
    build_spec(
        {"software": "lemmy", "size": "tiny", "domain": DOMAIN},
        {"smtp": {"host": "h.example", "auth": False, "from": address}},
    )


@pytest.mark.parametrize("software", SOFTWARE)
def test_the_log_redactor_finds_quoted_secrets_and_reads_unsafe_vars(tmp_path, monkeypatch, software):
    """fedi up reads the bundle back to redact its secrets from the playbook log: escaped values and
    ansible's !unsafe strings included (an admin e-mail with % is written !unsafe)."""
    from provision.remote.configure import secret_values

    password = 'o\'brien "$X" secret\\'
    smtp = {"host": "smtp.example.org", "user": "u", "from": "s@example.org"}
    bundle = _render(tmp_path, software, smtp, password, monkeypatch, admin_email="a%b@example.org")
    assert "!unsafe" in read(bundle, "ansible-vars")
    found = secret_values(bundle)
    assert password in found  # mbin: from MAILER_DSN, decoded
    assert software != "kbin" or quote.url_part(password) in found  # and as written there
    assert _secrets(software)["db_password"] in found


def test_backup_env_written_by_fedi_keeps_quote_shaped_values(tmp_path):
    """`fedi backup env` writes with the same envfile writer: a key that looks quoted survives."""
    from provision.lifecycle.backup import parse_env, render_env

    values = {"AWS_SECRET_ACCESS_KEY": "'quoted'", "RESTIC_PASSWORD": '"both"', "AWS_ACCESS_KEY_ID": "x\\"}
    assert parse_env(render_env(values)) == values


@pytest.mark.parametrize("command", ["up", "resize"])
def test_regression_up_refuses_smtp_without_password_before_touching_the_provider(monkeypatch, command):
    from provision.lifecycle import stack as lifecycle

    monkeypatch.delenv("FEDI_SMTP_PASSWORD", raising=False)
    spec = build_spec(
        {"software": "lemmy", "size": "tiny", "domain": DOMAIN},
        {"smtp": {"host": "smtp.example.org", "user": "u", "from": "s@example.org"}},
    )

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"up touched the provider ({name}) before refusing")

    with pytest.raises(ValidationError, match=r"^smtp/password"):
        getattr(lifecycle, command)(spec, Untouchable(), lambda _line: None)


@pytest.mark.parametrize(
    ("address", "hint"),
    [
        ("Social <social@example.org>", "without a display name"),
        ('"john doe"@example.org', "quoted local part"),
        ("john doe@example.org", "part before @"),
        ("social@example", "needs a dot"),
        ("social@@example.org", "part before @"),
        ("social", "such as admin@example.org"),
    ],
)
def test_sender_address_forms(address, hint):
    with pytest.raises(ValidationError, match="^smtp/from: ") as info:
        build_spec(
            {"software": "mastodon", "size": "tiny", "domain": DOMAIN},
            {"smtp": {"host": "h.example", "auth": False, "from": address}},
        )
    assert hint in str(info.value)


# A label with "--" in its third and fourth places is reserved for IDNA (RFC 5891 4.2.3.1): fedi refuses
# it like any IDNA2008 reader would, so the hosts drawn here never have one.
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(lambda s: s[2:4] != "--")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=st.lists(LABEL, min_size=1, max_size=4),
    port=st.integers(1, 65535),
    security=st.sampled_from(["starttls", "tls", "none"]),
    software=st.sampled_from(SOFTWARE),
)
def test_any_smtp_host_and_port_reach_the_app_exactly(readers, tmp_path_factory, labels, port, security, software):
    host = ".".join(labels)
    smtp = {"host": host, "port": port, "user": "u", "from": "s@example.org", "security": security}
    with pytest.MonkeyPatch.context() as mp:
        bundle = _render(tmp_path_factory.mktemp("host"), software, smtp, "pw", mp)
    got = _mail_as_read(readers, tmp_path_factory.mktemp("read"), software, bundle)
    assert (got["host"], got["port"], got["security"]) == (host, port, security)
