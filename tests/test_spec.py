import pytest

from provision.config import load_config, state_backend
from provision.errors import ValidationError
from provision.spec import build_spec, parse_ttl, validate_domain

BASE = {"software": "lemmy", "size": "small", "domain": "social.example.org"}

# (flags, expected start of the error line): Kamal-style table of bad input
BAD = [
    ({"software": "friendica"}, "software: 'friendica' is not one of mastodon, lemmy, kbin"),
    ({"size": "huge"}, "size: 'huge' is not one of tiny, small, medium, large"),
    ({"size": "smal"}, "size: 'smal' is not one of"),
    ({"domain": "https://x.org/"}, "domain: 'https://x.org/' has a scheme"),
    ({"domain": "x.org/path"}, "domain: 'x.org/path' has a path"),
    ({"domain": "10.0.0.1"}, "domain: '10.0.0.1' is an IP address"),
    ({"domain": "[2001:db8::1]"}, "domain: '[2001:db8::1]' is an IP address"),
    ({"domain": "x.org:8443"}, "domain: 'x.org:8443' has a port"),
    ({"domain": "localhost"}, "domain: 'localhost' needs at least two labels"),
    ({"domain": "bad_label.example.org"}, "domain: 'bad_label.example.org' is not a valid hostname"),
    ({"domain": ""}, "domain: is required"),
    ({"location": "mars1"}, "location: 'mars1' is not one of"),
    ({"provider": "aws"}, "provider: 'aws' is not one of hetzner, local"),
    ({"admin_email": "nope"}, "admin_email: 'nope' is not an e-mail address"),
]


@pytest.mark.parametrize(("flags", "message"), BAD)
def test_bad_input_is_one_path_qualified_line(flags, message):
    with pytest.raises(ValidationError) as err:
        build_spec({**BASE, **flags})
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_idna_domain_is_stored_in_ascii_and_shown_in_unicode():
    spec = build_spec({**BASE, "domain": "Bücher.example.org."})
    assert spec.domain == "xn--bcher-kva.example.org"
    assert spec.domain_unicode == "bücher.example.org"
    assert spec.stack_name == "xn----bcher--kva-example-org"  # provision.names: "-" -> "--", "." -> "-"


def test_kbin_deploys_mbin():
    spec = build_spec({**BASE, "software": "kbin"})
    assert spec.app == "mbin"


def test_flags_win_over_fedi_toml(tmp_path):
    (tmp_path / "fedi.toml").write_text(
        'software = "mastodon"\nsize = "tiny"\ndomain = "a.example.org"\n'
        '[smtp]\nhost = "smtp.example.org"\nuser = "u"\nfrom = "n@example.org"\n'
    )
    config = load_config(tmp_path)
    spec = build_spec({"size": "large", "software": None}, config)
    assert (spec.software, spec.size, spec.domain) == ("mastodon", "large", "a.example.org")
    assert spec.smtp and spec.smtp.port == 587


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('sise = "tiny"\n', "fedi.toml: sise: unknown key"),
        ("software = [\n", "fedi.toml: is not valid TOML"),
        ('[smtp]\nhost = "h"\nuser = "u"\nfrom = "a@b.org"\npassword = "x"\n', "smtp/password"),
        ('[backup]\nalert_webook = "https://alerts.example.org"\n', "backup/alert_webook: unknown key"),
        ('[backup]\nalert_webhook = "alerts.example.org/x"\n', "backup/alert_webhook: 'alerts.example.org/x'"),
        ('[backup]\nalert_webhook = "https://a.example.org/$(id)"\n', "backup/alert_webhook:"),
        ("backup = 3\n", "backup: must be a table"),
        ('[state]\nbackend = "bucket/fedi"\n', "state/backend: 'bucket/fedi' is not a Pulumi backend URL"),
        ('[state]\npassphrase = "x"\n', "state/passphrase: unknown key"),
        ('[hooks]\nurls = ["ftp://x"]\n', "hooks/urls[0]"),
        ("[coop]\ndues = 0\n", "coop/dues"),
    ],
)
def test_bad_config_file(tmp_path, toml, message):
    (tmp_path / "fedi.toml").write_text(toml)
    with pytest.raises(ValidationError) as err:
        build_spec(BASE, load_config(tmp_path))
    assert str(err.value).startswith(message)


def test_ephemeral_is_never_production():
    spec = build_spec({**BASE, "ephemeral": True, "ttl_hours": 2.0})
    assert spec.ephemeral and not spec.production


@pytest.mark.parametrize(("text", "hours"), [("2h", 2.0), ("90m", 1.5), ("1d", 24.0), ("3", 3.0)])
def test_parse_ttl(text, hours):
    assert parse_ttl(text) == hours


@pytest.mark.parametrize("text", ["", "0h", "soon", "-1h"])
def test_parse_ttl_rejects(text):
    with pytest.raises(ValidationError):
        parse_ttl(text)


def test_validate_domain_lowercases():
    assert validate_domain("Social.Example.ORG") == "social.example.org"


def test_the_state_and_backup_sections_are_read(tmp_path):
    (tmp_path / "fedi.toml").write_text(
        '[state]\nbackend = "s3://coop-state/fedi"\n[backup]\nalert_webhook = "https://alerts.example.org/b"\n'
    )
    config = load_config(tmp_path)
    assert state_backend(config) == "s3://coop-state/fedi" and state_backend({}) is None
    spec = build_spec(BASE, config)
    assert spec.extra["backup"]["alert_webhook"] == "https://alerts.example.org/b"
