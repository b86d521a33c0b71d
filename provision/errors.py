"""The one error family of fedi. The CLI catches it once and prints one line.

Exit codes mean something, so scripts and CI can branch on them:

- 2  bad input (flags, fedi.toml)            -> UsageError
- 3  a prerequisite is missing (CLI, token)  -> MissingPrerequisite
- 4  the cloud or engine refused or failed    -> ProvisionError
- 5  the server could not be configured      -> RemoteError
- 6  the instance is not healthy             -> HealthError
- 7  a backup or restore failed              -> BackupError
- 8  a webhook or billing step failed        -> HookError
- 9  the user declined a confirmation        -> Aborted
- 10 the stack is busy (another run holds it) -> StackBusy
"""

from __future__ import annotations


class FediError(Exception):
    """A failure the user can act on. ``str(err)`` is the one line shown."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(FediError):
    exit_code = 2


class ValidationError(UsageError):
    """A bad value, reported with the path of the bad key: ``size: 'smal' is not one of ...``."""

    def __init__(self, path: str, message: str, *, hint: str | None = None):
        super().__init__(f"{path}: {message}", hint=hint)
        self.path = path


class MissingPrerequisite(FediError):
    exit_code = 3


class ProvisionError(FediError):
    exit_code = 4


class RemoteError(FediError):
    exit_code = 5


class HealthError(FediError):
    exit_code = 6


class BackupError(FediError):
    exit_code = 7


class HookError(FediError):
    exit_code = 8


class Aborted(FediError):
    exit_code = 9


class StackBusy(FediError):
    """Another fedi run is changing the same stack (provision/lifecycle/stacklock.py; across computers,
    provision/lifecycle/s3lock.py)."""

    exit_code = 10
