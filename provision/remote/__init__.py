"""Remote: reach a server over SSH with its host key pinned, configure it with the playbook, open a shell.

Importing this package loads paramiko: import it inside the commands that need it (every caller
does), never at the top of a module `fedi --help` loads.

The submodules are imported here, eagerly, on purpose: ``provision.remote.configure`` is both a
submodule and the function of that name, and Python binds a submodule onto its package the first
time it is imported. Importing it here first, then binding the function, makes ``remote.configure``
the function whatever is imported later and in whichever order.
"""

from __future__ import annotations

from provision.remote import certs, configure, session, shell  # noqa: F401  (the submodules first)
from provision.remote.certs import fetch_issuer
from provision.remote.configure import ConfigureResult, configure  # noqa: F811  (the function wins)
from provision.remote.session import HostKeyMismatch, Session, connect, connect_when_ready, run, wait_for_ssh
from provision.remote.shell import interactive_shell, logs

__all__ = [
    "ConfigureResult",
    "HostKeyMismatch",
    "Session",
    "configure",
    "connect",
    "connect_when_ready",
    "fetch_issuer",
    "interactive_shell",
    "logs",
    "run",
    "wait_for_ssh",
]
