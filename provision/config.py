"""fedi.toml: read from the working directory, every section validated the same way when it is read.

Each section's rules live with what it configures (spec for the instance fields, billing for [hooks],
[coop] and [account], the Hetzner engine for [state]); this module only brings them together, so the
lower layers never import the billing layer.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from provision.errors import ValidationError
from provision.spec import (
    CONFIG_FILE,
    SECTIONS,
    SPEC_KEYS,
    STATE_KEYS,
    check_strings,
    parse_backup,
    parse_smtp,
    section_table,
)


def state_backend(config: dict[str, Any]) -> str | None:
    """[state] ``backend``: the Pulumi state backend of Hetzner stacks when --backend is not given."""
    table = section_table(config.get("state", {}), "state", STATE_KEYS)
    if not table.get("backend"):
        return None
    from provision.providers.hetzner.engine import validate_backend

    return validate_backend(table["backend"], "state/backend")


def validate_sections(config: dict[str, Any]) -> None:
    """Every section of fedi.toml, checked the same way when it is read; errors name the key's path."""
    from provision.billing.dues import parse_coop
    from provision.billing.hooks import parse_hooks

    parse_smtp(config.get("smtp"))
    parse_hooks(config)
    if "coop" in config:
        parse_coop(config["coop"])
    parse_backup(config.get("backup"))
    state_backend(config)
    if "account" in config:
        from provision.billing.account_stacks import parse_account

        parse_account(config["account"])


def load_config(directory: Path | None = None) -> dict[str, Any]:
    """Read ``fedi.toml`` from ``directory`` (the working directory), every section validated. No file -> {}."""
    path = (directory or Path.cwd()) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(CONFIG_FILE, f"is not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(SPEC_KEYS) - set(SECTIONS))
    if unknown:
        known = ", ".join((*SPEC_KEYS, *SECTIONS))
        raise ValidationError(f"{CONFIG_FILE}: {unknown[0]}", f"unknown key (known: {known})")
    check_strings(data, "")
    validate_sections(data)
    return data
