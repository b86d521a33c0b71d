"""Remote: reach a server over SSH with its host key pinned, configure it with the playbook, open a shell.

The public names load paramiko on first use only, so importing the pure command builders
(:mod:`provision.remote.commands`) or the output reader (:mod:`provision.remote.ansible_output`)
stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigureResult": "configure",
    "configure": "configure",
    "HostKeyMismatch": "session",
    "Session": "session",
    "connect": "session",
    "connect_when_ready": "session",
    "run": "session",
    "wait_for_ssh": "session",
    "fetch_issuer": "certs",
    "interactive_shell": "shell",
    "logs": "shell",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'provision.remote' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"provision.remote.{_EXPORTS[name]}"), name)
    globals()[name] = value  # importing provision.remote.configure set `configure` to the submodule
    return value
