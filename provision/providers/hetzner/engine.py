"""The Pulumi engine: the Automation API with the inline stack program, and its failures as one line.

Backend: Pulumi's local file backend under fedi's state directory (``file://<state>/pulumi``) unless
``--backend s3://bucket/prefix`` (a co-op sharing its stacks). Secrets provider: passphrase, taken
from $PULUMI_CONFIG_PASSPHRASE / $PULUMI_CONFIG_PASSPHRASE_FILE, else the one ``provision.state`` uses
for local stacks ($FEDI_PASSPHRASE or ``<config>/passphrase``, generated once, 0600), handed to Pulumi
in its environment, never in argv.

Per stack, the backend keeps (as stack config, the secret ones encrypted by that passphrase):
``fedi:secrets`` (the app secrets, generated once), ``fedi:stackconfig`` (the StackConfig the last
`up` ran with, so resize/down can re-run the program) and ``fedi:host_key`` (the pinned host key).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from provision import paths
from provision.errors import FediError, MissingPrerequisite, ProvisionError, ValidationError
from provision.model import Progress
from provision.providers import PlannedResource

PROJECT = "fedi"
INSTALL_HINT = (
    "install it with `curl -fsSL https://get.pulumi.com | sh` (see https://www.pulumi.com/docs/install/), "
    "or try fedi on this machine with --provider local"
)
# Provider plugins, pinned to the versions of the installed SDKs (pyproject pins those).
PLUGINS = {"hcloud": "pulumi-hcloud", "minio": "pulumi-minio"}


def plugin_versions() -> dict[str, str]:
    return {name: "v" + metadata.version(dist) for name, dist in PLUGINS.items()}


# What Pulumi's s3:// backend reads from the environment (a recovery kit carries them for such a backend).
BACKEND_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL_S3")


def default_backend() -> str:
    """file://<state>/pulumi; the directory is made when the engine first runs, not before."""
    return (paths.state_dir() / "pulumi").as_uri()


def validate_backend(url: str | None, path: str = "backend") -> str:
    """``url`` (from --backend, or ``path`` in fedi.toml), or the default file backend when it is empty."""
    if not url:
        return default_backend()
    if not isinstance(url, str) or not re.match(r"^(s3|file|gs|azblob)://.+", url):
        raise ValidationError(path, f"{url!r} is not a Pulumi backend URL such as s3://bucket/fedi or file:///path")
    return url


def find_pulumi(path_env: str | None = None) -> Path | None:
    """The Pulumi CLI: on PATH, or where Pulumi's installer puts it (~/.pulumi/bin)."""
    found = shutil.which("pulumi", path=path_env if path_env is not None else os.environ.get("PATH"))
    if found:
        return Path(found)
    home = Path.home() / ".pulumi" / "bin" / "pulumi"
    return home if home.is_file() and os.access(home, os.X_OK) else None


def passphrase_env() -> dict[str, str]:
    """The environment that unlocks the secrets provider (never argv). One passphrase for both providers:
    $PULUMI_CONFIG_PASSPHRASE(_FILE) if set, else provision.state's (FEDI_PASSPHRASE or the generated file)."""
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE") is not None or os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        return {}
    from provision.state import passphrase

    return {"PULUMI_CONFIG_PASSPHRASE": passphrase()}


def check_token(env: dict[str, str] | None = None) -> None:
    token = (env if env is not None else os.environ).get("HCLOUD_TOKEN", "")
    if not token:
        raise MissingPrerequisite(
            "HCLOUD_TOKEN is not set: create an API token (Read & Write) in the Hetzner Cloud console "
            "under Security > API tokens and export HCLOUD_TOKEN, or use --provider local"
        )
    if not re.fullmatch(r"[A-Za-z0-9]{64}", token):
        raise MissingPrerequisite("HCLOUD_TOKEN does not look like a Hetzner Cloud API token (64 letters and digits)")


# Hetzner API error codes (docs.hetzner.cloud, "Errors") as the Terraform provider reports them.
_HETZNER = [
    (
        r"resource_limit_exceeded|limit exceeded",
        "Hetzner refused: a project limit is reached",
        "ask Hetzner to raise the limit in the console, or remove unused servers/IPs/volumes",
    ),
    (
        r"unauthorized|invalid token|token_readonly",
        "Hetzner refused the token",
        "HCLOUD_TOKEN must be a Read & Write token of the project",
    ),
    (
        r"server.?type.*(not found|unavailable|deprecated)|resource_unavailable|placement_error",
        "Hetzner has no capacity for this server type in this location",
        "try another --location or --size",
    ),
    (
        r"uniqueness_error",
        "a resource with this name exists in the Hetzner project already",
        "another stack or a manual resource uses the name; remove it or pick another domain",
    ),
    (
        r"rate_limit_exceeded",
        "Hetzner's API rate limit was hit",
        "wait a minute and re-run; fedi converges where it stopped",
    ),
    (
        r"\bprotected\b|delete protection",
        "the resource is delete-protected",
        "use `fedi down --force-unprotect` for a production stack",
    ),
    (
        r"incorrect passphrase|passphrase must be set|failed to decrypt",
        "the state passphrase does not open this stack",
        "set PULUMI_CONFIG_PASSPHRASE(_FILE) to the passphrase it was created with",
    ),
]


def map_error(exc: BaseException, stack: str = "") -> FediError:
    """One clear line for an Automation API failure."""
    if isinstance(exc, FediError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return MissingPrerequisite(f"the Pulumi CLI is not installed: {INSTALL_HINT}")
    from pulumi.automation import errors

    name = f"stack {stack!r}" if stack else "the stack"
    if isinstance(exc, errors.InvalidVersionError):
        return MissingPrerequisite(f"the Pulumi CLI is too old ({exc}): {INSTALL_HINT}")
    if isinstance(exc, errors.ConcurrentUpdateError):
        return ProvisionError(
            f"{name} is being updated by another fedi or pulumi run",
            hint="wait for it to finish; if it crashed, run `pulumi cancel` against the same backend",
        )
    if isinstance(exc, errors.StackNotFoundError):
        return ProvisionError(f"{name} does not exist in the state backend", hint="see `fedi stacks`")
    if isinstance(exc, errors.StackAlreadyExistsError):
        return ProvisionError(f"{name} exists already")
    text = str(exc)
    for pattern, message, hint in _HETZNER:
        if re.search(pattern, text, re.IGNORECASE):
            return ProvisionError(message, hint=hint)
    return ProvisionError(f"pulumi failed for {name}: {_last_error_line(text)}")


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower() and line.strip()]
    return (lines[-1] if lines else (text.strip().splitlines() or ["unknown error"])[-1])[:300]


class PulumiEngine:
    """The real engine (needs the Pulumi CLI; the hcloud provider reads HCLOUD_TOKEN itself)."""

    offline = False

    def __init__(self, backend: str | None = None):
        self.backend = validate_backend(backend)

    def preflight(self, *, need_token: bool = True) -> None:
        """The Pulumi CLI and the token, checked before anything is created."""
        if find_pulumi() is None:
            raise MissingPrerequisite(f"the Pulumi CLI is not installed: {INSTALL_HINT}")
        if need_token:
            check_token()

    # -- workspace plumbing --

    def _opts(self):
        from pulumi import automation as auto

        cli = find_pulumi()
        if cli is None:
            raise MissingPrerequisite(f"the Pulumi CLI is not installed: {INSTALL_HINT}")
        if self.backend.startswith("file://"):
            Path(self.backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True, mode=0o700)
        work = paths.state_dir() / "pulumi-work"
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        return auto.LocalWorkspaceOptions(
            work_dir=str(work),
            pulumi_command=auto.PulumiCommand(root=str(cli.parent.parent)) if cli.parent.name == "bin" else None,
            project_settings=auto.ProjectSettings(
                name=PROJECT, runtime="python", backend=auto.ProjectBackend(url=self.backend)
            ),
            secrets_provider="passphrase",
            env_vars={**passphrase_env(), "PULUMI_SKIP_UPDATE_CHECK": "true"},
        )

    def _stack(self, name: str, program=None, *, create: bool = True):
        from pulumi import automation as auto

        program = program or (lambda: None)
        try:
            if create:
                stack = auto.create_or_select_stack(name, project_name=PROJECT, program=program, opts=self._opts())
            else:
                stack = auto.select_stack(name, project_name=PROJECT, program=program, opts=self._opts())
            for plugin, version in plugin_versions().items():
                stack.workspace.install_plugin(plugin, version)
        except Exception as exc:  # noqa: BLE001 - every engine failure becomes one line
            raise map_error(exc, name) from None
        return stack

    def _run(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            raise map_error(exc, name) from None

    # -- stack config: secrets, the last StackConfig, the pinned host key --

    def read_config(self, name: str, key: str) -> str | None:
        if name not in self.stack_names():
            return None
        stack = self._stack(name, create=False)
        config = self._run(name, stack.get_all_config)
        value = config.get(f"{PROJECT}:{key}")
        return value.value if value is not None else None

    def write_config(self, name: str, key: str, value: str, *, secret: bool) -> None:
        from pulumi import automation as auto

        stack = self._stack(name)
        self._run(name, lambda: stack.set_config(f"{PROJECT}:{key}", auto.ConfigValue(value=value, secret=secret)))

    # -- operations --

    def preview(self, cfg, progress: Progress) -> list[PlannedResource]:
        from stacks.hetzner import inline

        existed = cfg.stack in self.stack_names()
        stack = self._stack(cfg.stack, inline(cfg))
        planned: list[PlannedResource] = []

        def on_event(event) -> None:
            step = planned_from_event(event)
            if step is not None:
                planned.append(step)

        try:
            self._run(cfg.stack, lambda: stack.preview(on_event=on_event))
        finally:
            if not existed:  # a preview needs a stack; a plan leaves the backend as it found it
                self._run(cfg.stack, lambda: stack.workspace.remove_stack(cfg.stack))
        return planned

    def up(self, cfg, progress: Progress, *, refresh: bool = False) -> dict[str, Any]:
        """``refresh``: read the resources' real state first (a server found gone is then created anew)."""
        from stacks.hetzner import inline

        stack = self._stack(cfg.stack, inline(cfg))
        started = time.monotonic()
        events = _progress_events(progress, started)
        result = self._run(cfg.stack, lambda: stack.up(on_event=events, refresh=refresh or None))
        return {k: v.value for k, v in result.outputs.items()}

    def outputs(self, name: str) -> dict[str, Any]:
        stack = self._stack(name, create=False)
        return {k: v.value for k, v in self._run(name, stack.outputs).items()}

    def destroy(self, name: str, progress: Progress) -> None:
        stack = self._stack(name, create=False)
        started = time.monotonic()
        self._run(name, lambda: stack.destroy(on_event=_progress_events(progress, started)))
        self._run(name, lambda: stack.workspace.remove_stack(name))

    def stack_names(self) -> list[str]:
        from pulumi import automation as auto

        try:
            ws = auto.LocalWorkspace(**_ws_kwargs(self._opts()))
            return [s.name for s in ws.list_stacks()]
        except Exception as exc:  # noqa: BLE001
            raise map_error(exc) from None


def planned_from_event(event) -> PlannedResource | None:
    """A preview's resource step (op, type, name, inputs with secrets redacted), or None."""
    from provision.providers.hetzner.offline import redact

    pre = getattr(event, "resource_pre_event", None)
    if pre is None or pre.metadata.type.startswith("pulumi:pulumi:Stack"):
        return None
    meta = pre.metadata
    inputs = dict(getattr(meta.new, "inputs", None) or {})
    return PlannedResource(meta.type, meta.urn.rsplit("::", 1)[-1], str(meta.op.value), redact(inputs))


def _ws_kwargs(opts) -> dict[str, Any]:
    return {
        "work_dir": opts.work_dir,
        "pulumi_command": opts.pulumi_command,
        "project_settings": opts.project_settings,
        "secrets_provider": opts.secrets_provider,
        "env_vars": opts.env_vars,
    }


def _progress_events(progress: Progress, started: float):
    """Engine events -> one line per resource step, with the elapsed time."""

    def on_event(event) -> None:
        done = getattr(event, "res_outputs_event", None)
        failed = getattr(event, "res_op_failed_event", None)
        meta = (done or failed).metadata if (done or failed) else None
        if meta is None or meta.type.startswith("pulumi:pulumi:Stack"):
            return
        op = str(meta.op.value)
        if op == "same":
            return
        name = meta.urn.rsplit("::", 1)[-1]
        verb = "failed" if failed else {"create": "created", "update": "updated", "delete": "deleted"}.get(op, op)
        progress(
            f"{'!' if failed else '+'} {meta.type.split(':')[-1]} {name} {verb} ({time.monotonic() - started:.0f}s)"
        )

    return on_event
