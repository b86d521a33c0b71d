"""One writer per configuration format the bundle writes: each quotes a value so that the format's real
reader returns it unchanged, or refuses it (``Unrepresentable``) when the format cannot carry it.

Every template writes every user-given or generated value through one of these (Jinja filters of the
same names, registered by provision/render/bundle.py); no template quotes by hand. ``check_field`` runs a
user's value at the edge (fedi.toml, the environment) through the writers of every format that field
reaches in any app, so a value one app's format cannot carry is refused for every app, naming the
field, before anything is written.

The readers, and what each writer was checked against (tests/test_render_values.py reads the rendered
files back with Debian 13's real readers):

- ``dotenv``: Mastodon's .env.production and mbin's .env, read by docker compose (compose-go's dotenv,
  env_file) and by the app's own reader (Ruby dotenv, Symfony Dotenv). Bare when the value is a plain
  token; single-quoted (literal in all three) when it has no ``'`` and does not end in ``\\``;
  otherwise double-quoted with ``\\``, ``"`` and ``$`` escaped, which all three unescape the same way
  except a backslash before ``n``, ``r`` or ``"`` (Symfony's and Ruby's own escapes) and ``$(`` (Ruby's
  command substitution when its parentheses do not balance): those are refused.
- ``hjson``: Lemmy's lemmy.hjson (Rust deser_hjson): a JSON string.
- ``yaml``: ansible-vars.yml and compose files (PyYAML/ansible): a JSON string, YAML's line breaks
  escaped; ``!unsafe`` when it holds ``{`` or ``%`` (Jinja's markers), so ansible never templates it.
- ``compose``: a value in compose.yaml: ``$`` doubled (compose interpolation), then ``yaml``.
- ``caddy``: a Caddyfile token: bare, `backquoted` or "double-quoted"; ``{`` and ``}`` are refused
  (Caddy replaces ``{$VAR}`` before parsing, and expands ``{env.X}`` in the ACME e-mail, refusing an
  unknown ``{x}``).
- ``systemd``: a unit setting's value: ``%`` doubled (specifiers); no trailing backslash.
- ``valkey``: an argument in Valkey's configuration file: only plain tokens (the generated password).
- ``envfile``: restic.env, KEY="value" lines that fedi-backup's load_env and provision.lifecycle.backup read
  literally (one layer of quotes removed).
- ``url_part``: a user name or password inside a URL/DSN (Symfony Mailer's DSN, database URLs):
  percent-encoded, every reserved character included.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from provision.errors import ValidationError


class Unrepresentable(ValueError):
    """The format cannot carry this value. The message names the problem, never the value."""


# Unicode line and paragraph separators are line breaks for YAML and for several dotenv readers.
_BREAKS = {"\u2028", "\u2029", "\x85"}


def control_characters(text: str) -> list[str]:
    """The control characters (Unicode category Cc, line/paragraph separators, surrogates) in text."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BREAKS]


def describe(chars: list[str]) -> str:
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte"}
    first = chars[0]
    return names.get(first, f"a control character (U+{ord(first):04X})")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    bad = control_characters(text)
    if bad:
        raise Unrepresentable(f"it contains {describe(bad)}")
    return text


# Characters every dotenv reader (compose, Ruby dotenv, Symfony Dotenv) takes literally in a bare value.
_BARE = re.compile(r"[A-Za-z0-9_.:/@%+,=-]+")


def dotenv(value: Any) -> str:
    """A value for KEY=<here> in a file read by docker compose and Ruby dotenv or Symfony Dotenv."""
    text = _text(value)
    if _BARE.fullmatch(text):
        return text
    if "'" not in text and not text.endswith("\\"):
        return f"'{text}'"
    # Double quotes: each reader unescapes \\ \" \$, but Symfony turns \n and \r into line breaks
    # before it unescapes \\, ends the string at \\\", and Ruby leaves an unbalanced \$( escaped.
    if re.search(r"\\[nr\"]|\$\(", text):
        raise Unrepresentable(
            "it has ' (or ends in \\) and also a backslash before n, r or \" or a $(, which docker compose, "
            "Ruby dotenv and Symfony Dotenv would read differently"
        )
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def read_dotenv(raw: str) -> str:
    """The value a line's ``raw`` right-hand side holds, for the forms ``dotenv`` writes (fedi's own
    use: finding secrets in a rendered file to redact them; the apps use their own readers)."""
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def yaml_loader() -> Any:
    """PyYAML's SafeLoader that also reads ``!unsafe`` strings (as ansible does, minus the marking)."""
    import yaml as pyyaml

    class Loader(pyyaml.SafeLoader):
        pass

    Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
    return Loader


def _json_string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    for ch in sorted(_BREAKS | {"\ufeff"}):
        out = out.replace(ch, f"\\u{ord(ch):04x}")
    return out


def hjson(value: Any) -> str:
    """A quoted string for Lemmy's hjson (deser_hjson reads JSON strings)."""
    return _json_string(_text(value))


def _yaml_node(value: Any, string: Callable[[str], str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_node(item, string) for item in value) + "]"
    return string(_text(value))


def _yaml_string(text: str) -> str:
    quoted = _json_string(text)
    return f"!unsafe {quoted}" if ("{" in text or "%" in text) else quoted


def yaml(value: Any) -> str:
    """A YAML value (ansible-vars.yml, cloud-init): strings double-quoted, ``!unsafe`` (ansible never
    templates them) when they hold { or %; booleans, integers and lists of them as themselves."""
    return _yaml_node(value, _yaml_string)


def compose(value: Any) -> str:
    """A value in compose.yaml: compose interpolates ${VAR} and $VAR in strings; $$ is a literal $."""
    return _yaml_node(value, lambda text: _json_string(text.replace("$", "$$")))


_CADDY_BARE = re.compile(r"[A-Za-z0-9_.:/@+,=*-]+")


def caddy(value: Any) -> str:
    """One Caddyfile token."""
    text = _text(value)
    if "{" in text or "}" in text:  # {$VAR} is replaced before parsing; {env.X} and {x} when the ACME email is used
        raise Unrepresentable("it contains { or }, which Caddy reads as a placeholder")
    if _CADDY_BARE.fullmatch(text):
        return text
    if "`" not in text:
        return f"`{text}`"
    if '\\"' in text or text.endswith("\\"):
        raise Unrepresentable('it contains ` and a backslash before " or at the end, which a Caddyfile cannot quote')
    return '"' + text.replace('"', '\\"') + '"'


def systemd(value: Any) -> str:
    """A value in a unit file setting such as Description= (specifiers: % is written %%)."""
    text = _text(value)
    if text.endswith("\\"):
        raise Unrepresentable("it ends in \\, which continues a systemd unit line")
    return text.replace("%", "%%")


def valkey(value: Any) -> str:
    """An argument in valkey.conf. Only generated values go there: plain tokens, nothing to quote."""
    text = _text(value)
    if not _BARE.fullmatch(text):
        raise Unrepresentable("valkey.conf takes only letters, digits and - _ . : / @ % + , = here")
    return text


def envfile(value: Any) -> str:
    """A value in restic.env: KEY="value", read literally with one layer of quotes removed."""
    return f'"{_text(value)}"'


def url_part(value: Any) -> str:
    """A user name or password inside a URL: every character but A-Z a-z 0-9 - . _ ~ percent-encoded."""
    return quote(_text(value), safe="")


FILTERS = {
    "dotenv": dotenv,
    "hjson": hjson,
    "yaml": yaml,
    "compose": compose,
    "caddy": caddy,
    "systemd": systemd,
    "valkey": valkey,
    "envfile": envfile,
    "url_part": url_part,
}


# The formats a user's text value can reach in any app's bundle (the same rule for every app).
APP_FORMATS = ("dotenv", "hjson", "yaml", "url_part")


def check_field(value: str, path: str, formats: tuple[str, ...] = APP_FORMATS) -> str:
    """Refuse at the edge a value that one of ``formats`` cannot carry, naming the field, not the value."""
    for name in formats:
        try:
            FILTERS[name](value)
        except Unrepresentable as exc:
            raise ValidationError(path, f"cannot be used: {exc}") from None
    return value
