"""The lifecycle of a stack, the same for every provider: plan, up, status, resize, down.

up = preflight -> secrets -> render bundle (0700 dir under the state dir) -> [plan + confirm] ->
provider.up -> remote.configure -> provider.pin_host_key -> health.wait -> billing event.

The steps owned by other modules (bundle, remote, health, hooks, cost) are reached through
:class:`Steps`, whose defaults import those modules lazily; tests replace single steps.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provision import names, paths
from provision.errors import Aborted, BackupError, ProvisionError, UsageError
from provision.lifecycle import stacklock
from provision.model import BUNDLE_DIR, SBIN, Bundle, StackOutputs
from provision.providers import Plan, Progress, Provider
from provision.sizing import Sizing, size_for, sizing
from provision.spec import InstanceSpec
from provision.timestamps import epoch

BACKUP_ARGV = ["sudo", "-n", f"{SBIN}/fedi-backup"]


def _render(spec, sizing_, secrets, storage, out):
    from provision.render.bundle import render_bundle

    return render_bundle(spec, sizing_, secrets, storage, out)


def _configure(access, bundle, runtime, progress, images=()):
    from provision import remote

    return remote.configure(access, bundle, runtime, progress, images=images)


def _images(spec, progress):
    """`--images DIR`: the app's archives, each checked to hold exactly its pinned reference; () = pull."""
    if not spec.images:
        return ()
    from provision.lifecycle import images

    found = images.archives(spec.app, spec.images)
    progress(f"the app's images come from {spec.images}: {', '.join(a.file_name for a in found)}")
    return found


def _remote_run(access, argv):
    from provision import remote

    return remote.run(access, argv)


def health_target(spec: InstanceSpec, outputs: StackOutputs):
    """Where the health checks connect: the server's address with the domain as SNI and Host."""
    from provision.lifecycle.health import Target

    extra = outputs.extra
    return Target(
        domain=spec.domain,
        app=spec.app,
        admin_username=spec.admin_username,
        address=outputs.access.address or None,
        https_port=int(extra.get("https_port", 443)),
        http_port=int(extra.get("http_port", 80)),
        ca_bundle=Path(extra["ca_bundle"]) if extra.get("ca_bundle") else None,
        netns=outputs.access.netns,
        app_started=bool(extra.get("start_app", True)),  # no containers: only the HTTPS front is checked
    )


def staging_issuer_path(stack: str) -> Path:
    """Where the Let's Encrypt staging intermediate of an ephemeral stack is kept (read from its server)."""
    return paths.state_dir() / "certs" / f"{stack}-staging.pem"


def _health(spec, outputs, progress):
    from provision.lifecycle import health

    target = health_target(spec, outputs)
    if spec.ephemeral and target.ca_bundle is None:
        # the staging CA is in no trust store: trust exactly the intermediate Caddy received, read over
        # the pinned SSH channel (provision.remote.certs), so the chain is still verified
        from provision import remote

        progress("reading the staging certificate's issuer from the server")
        issuer = remote.fetch_issuer(outputs.access, spec.domain, staging_issuer_path(outputs.stack))
        target = replace(target, ca_bundle=issuer)
    return health.wait(target, progress=progress)


def _event(kind, spec, outputs, cost):
    from provision.billing import hooks

    return hooks.emit_lifecycle(kind, spec=spec, outputs=outputs, cost=cost)


def _cost(spec, sizing_):
    from provision.billing.cost import monthly_cost

    return monthly_cost(spec, sizing_)


def _admin_email(spec, progress):
    """Would the app refuse the admin's e-mail address on the server? Asked before anything is created.
    The stack's own domain is taken as resolving: on Hetzner fedi creates (or waits for) its records
    before the playbook runs. (On the local provider that name is only known to this host, so a real
    Mastodon there still refuses admin@<its domain>: not caught here.)"""
    from provision.lifecycle import admin_email

    return admin_email.check(spec.app, spec.admin_email, frozenset({spec.domain}), progress=progress)


@dataclass(frozen=True)
class Steps:
    render: Callable[..., Bundle] = _render
    configure: Callable[..., Any] = _configure
    remote_run: Callable[..., tuple[int, str, str]] = _remote_run
    health: Callable[..., Any] = _health
    event: Callable[..., Any] = _event
    cost: Callable[..., Any] = _cost
    admin_email: Callable[..., Any] = _admin_email
    images: Callable[..., Any] = _images


@dataclass(frozen=True)
class Result:
    """What a lifecycle command did, for the human summary and --json."""

    stack: str
    outputs: StackOutputs | None
    cost: Any = None  # provision.billing.cost.CostBreakdown (or CostDifference for resize)
    health: Any = None  # provision.lifecycle.health.HealthReport
    configure: Any = None  # provision.remote.ConfigureResult
    notes: tuple[str, ...] = field(default_factory=tuple)
    elapsed_s: float = 0.0


def bundle_dir(stack: str) -> Path:
    root = paths.state_dir() / "bundles"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root / stack


def render(spec: InstanceSpec, sz: Sizing, secrets: dict[str, str], provider: Provider, steps: Steps) -> Bundle:
    """Render into a fresh 0700 directory, then swap it for the stack's previous bundle."""
    storage = provider.storage(spec)
    final = bundle_dir(spec.stack_name)
    fresh = final.with_name(final.name + ".new")
    if fresh.exists():
        shutil.rmtree(fresh)
    fresh.mkdir(mode=0o700)
    bundle = steps.render(spec, sz, secrets, storage, fresh)
    if final.exists():
        shutil.rmtree(final)
    fresh.rename(final)
    return replace(bundle, root=final)


def runtime_vars(outputs: StackOutputs) -> dict[str, Any]:
    """/opt/fedi/runtime.yml: the volume device ('' = data on the root disk), whether apps start, the admins."""
    from provision.access import admins

    return {
        **admins.ansible_vars(admins.from_records(outputs.extra.get("admins"))),
        "fedi_volume_device": outputs.extra.get("volume_device", ""),
        "fedi_start_app": bool(outputs.extra.get("start_app", True)),  # images from archives start too
        "fedi_bundle_dir": BUNDLE_DIR,
    }


def _with_images(outputs: StackOutputs, archives: tuple[Any, ...]) -> StackOutputs:
    """With the images loaded from archives the app starts (and is checked) even where none can be pulled."""
    if not archives or outputs.extra.get("start_app", True):
        return outputs
    extra = {k: v for k, v in outputs.extra.items() if k != "app_note"}
    return replace(outputs, extra={**extra, "start_app": True})


def plan(spec: InstanceSpec, provider: Provider, steps: Steps = Steps()) -> tuple[Plan, Any]:
    """What `up` would create or change, and the monthly cost. Stores nothing."""
    import tempfile

    spec = names.settle(spec, provider)
    sz = sizing(spec)
    secrets = provider.secrets(spec, store=False)
    with tempfile.TemporaryDirectory(prefix="fedi-plan-") as tmp:
        bundle = _plan_bundle(spec, sz, secrets, provider, Path(tmp), steps)
        the_plan = provider.plan(spec, sz, bundle)
    return the_plan, steps.cost(spec, sz)


def _plan_bundle(spec, sz, secrets, provider, out: Path, steps: Steps) -> Bundle:
    storage = provider.storage(spec)
    if storage is not None and not (storage.access_key and storage.secret_key):
        storage = None  # no credentials yet: a plan still shows the buckets; `up` asks for them
    return steps.render(spec, sz, secrets, storage, out / "bundle")


def _exists(provider: Provider, stack: str) -> bool:
    try:
        provider.outputs(stack)
    except ProvisionError:
        return False
    return True


def up(
    spec: InstanceSpec,
    provider: Provider,
    progress: Progress,
    *,
    confirm: Callable[[Plan, Any], bool] | None = None,
    steps: Steps = Steps(),
    new_backups: bool = False,
) -> Result:
    """Create or converge a stack, holding its lock (StackBusy if another run changes it).
    ``new_backups``: an earlier stack of this domain left backups; move them aside and start afresh."""
    started = time.monotonic()
    if spec.smtp:
        spec.smtp.password()  # [smtp] without its password: refused before anything is created
    provider.preflight(spec)
    spec = names.settle(spec, provider)
    with stacklock.hold(spec.stack_name, "fedi up", provider.backend):
        return _up(spec, provider, progress, confirm=confirm, steps=steps, started=started, new_backups=new_backups)


def _up(
    spec: InstanceSpec,
    provider: Provider,
    progress: Progress,
    *,
    confirm: Callable[[Plan, Any], bool] | None,
    steps: Steps,
    started: float,
    new_backups: bool = False,
) -> Result:
    steps.admin_email(spec, progress)
    archives = steps.images(spec, progress)  # a missing or wrong archive: refused before anything is created
    sz = sizing(spec)
    cost = steps.cost(spec, sz)
    existed = _exists(provider, spec.stack_name)
    kept = None if existed else provider.kept_backups(spec)
    if kept is not None and not new_backups:
        raise kept_backups_error(spec, kept)
    if existed:  # a lost server is re-created with a fresh bootstrap host key, pinned for it alone
        provider.renew_bootstrap_key(spec, progress)
    secrets = provider.secrets(spec)
    progress("rendering the bundle")
    bundle = render(spec, sz, secrets, provider, steps)
    if confirm is not None and not confirm(provider.plan(spec, sz, bundle), cost):
        if not existed:  # forget the secrets just stored: the backend is left as it was
            provider.down(spec.stack_name, lambda _line: None)
            shutil.rmtree(bundle.root, ignore_errors=True)
        raise Aborted("nothing was created")
    if kept is not None:
        provider.set_aside_backups(spec, kept, progress)
    progress(f"provisioning {spec.stack_name} on {provider.name}")
    outputs = _with_images(provider.up(spec, sz, bundle, progress), archives)
    progress(f"configuring {outputs.access.address} with the playbook")
    loads = {"images": archives} if archives else {}
    configured = steps.configure(outputs.access, bundle, runtime_vars(outputs), progress, **loads)
    provider.pin_host_key(outputs.stack, configured.host_key)
    outputs = _with_images(provider.outputs(outputs.stack), archives)
    progress("waiting for the instance to be healthy")
    report = steps.health(spec, outputs, progress)
    steps.event("stack.created", spec, outputs, cost)
    return Result(outputs.stack, outputs, cost, report, configured, elapsed_s=time.monotonic() - started)


def kept_backups_error(spec: InstanceSpec, kept) -> UsageError:
    """`up` refuses to point a new stack (a new repository password) at an earlier stack's backups."""
    return UsageError(
        f"{spec.domain} has backups kept from an earlier stack in {kept.where}; a new stack would not open "
        "them and every backup of it would fail. Nothing was created",
        hint="to keep them and start afresh: `fedi up ... --new-backups` (moves them aside, never deletes); "
        "then, to bring the instance back, `fedi backup restore --domain "
        f"{spec.domain} --from-env SAVED.env --no-safety-snapshot` with the settings `fedi backup env` saved "
        "and RESTIC_REPOSITORY set to where `--new-backups` says it moved them",
    )


def status(
    stack: str,
    provider: Provider,
    spec: InstanceSpec | None = None,
    steps: Steps = Steps(),
    *,
    check_health: bool = True,
    config: dict[str, Any] | None = None,
) -> Result:
    outputs = provider.outputs(stack)
    spec = spec or spec_of_outputs(outputs, config)
    cost = steps.cost(spec, sizing(spec)) if spec else None
    report = None
    if spec is not None and check_health:
        from provision.lifecycle import health

        target = health_target(spec, outputs)
        issuer = staging_issuer_path(stack)
        if spec.ephemeral and target.ca_bundle is None and issuer.exists():
            target = replace(target, ca_bundle=issuer)
        report = health.check(target)
    notes = () if spec is not None else ("the stack's outputs do not say what it runs: no cost or health",)
    return Result(stack, outputs, cost, report, notes=notes)


def spec_of_outputs(outputs: StackOutputs, config: dict[str, Any] | None = None) -> InstanceSpec | None:
    """Rebuild the spec a stack was made with from its outputs (software, size, domain, location).

    ``config`` is the operator's fedi.toml: its sections ([smtp], [hooks], [coop], [backup], [state])
    apply to every stack; its top-level keys describe one instance and do not override the outputs.
    """
    from provision.spec import SECTIONS, build_spec

    extra = outputs.extra
    if not all(extra.get(k) for k in ("software", "size", "domain")):
        return None
    flags = {k: extra[k] for k in ("software", "size", "domain")}
    flags["provider"] = outputs.provider
    if extra.get("location"):
        flags["location"] = extra["location"]
    flags["production"] = bool(extra.get("production", False))
    created, expires = epoch(extra.get("created")), epoch(extra.get("expires"))
    if extra.get("ephemeral") and expires > created:
        flags["ephemeral"] = True
        flags["ttl_hours"] = (expires - created) / 3600
    sections = {k: v for k, v in (config or {}).items() if k in SECTIONS}
    return replace(build_spec(flags, sections), stack=outputs.stack)  # made under an older naming rule, maybe


def resize_target(
    stack: str, provider: Provider, size: str, config: dict[str, Any]
) -> tuple[InstanceSpec, InstanceSpec, str]:
    """(the stack's spec now, the spec it is resized to, a line on what that changes the monthly bill by or
    '' where there is no bill). With fedi.toml's [hooks] and [coop], so they hear of it. Reads only."""
    spec = spec_of_outputs(provider.outputs(stack), config)
    if spec is None:
        raise UsageError(f"stack {stack!r} does not say what it runs; resize it with `fedi up --size {size}`")
    if spec.size == size:
        raise UsageError(f"size: {stack} is already {size}")
    new_spec = replace(spec, size=size)
    if spec.provider != "hetzner":
        return spec, new_spec, ""
    from provision.billing.cost import monthly_cost, resize_difference

    return spec, new_spec, resize_difference(monthly_cost(spec), monthly_cost(new_spec)).text()


def resize(spec: InstanceSpec, provider: Provider, progress: Progress, *, steps: Steps = Steps()) -> Result:
    """Change the size in place: server type, volume (grow only), then re-tune Postgres and the app."""
    if spec.smtp:
        spec.smtp.password()  # the re-rendered bundle needs it: refused before the stack is locked or changed
    with stacklock.hold(spec.stack_name, "fedi resize", provider.backend):
        return _resize(spec, provider, progress, steps=steps)


def _resize(spec: InstanceSpec, provider: Provider, progress: Progress, *, steps: Steps) -> Result:
    started = time.monotonic()
    provider.preflight(spec)
    current = provider.outputs(spec.stack_name)
    old_size = current.extra.get("size") or spec.size
    old, new = size_for(old_size, spec.app), sizing(spec)
    cost_old, cost_new = steps.cost(replace(spec, size=old_size), old), steps.cost(spec, new)
    outputs = provider.resize(spec, old, new, progress)
    secrets = provider.stored_secrets(spec.stack_name)  # an existing stack: read, never generate
    bundle = render(spec, new, secrets, provider, steps)
    progress("re-tuning Postgres and the app for the new size")
    configured = steps.configure(outputs.access, bundle, runtime_vars(outputs), progress)
    provider.pin_host_key(outputs.stack, configured.host_key)
    outputs = provider.outputs(outputs.stack)
    report = steps.health(spec, outputs, progress)
    steps.event("stack.resized", spec, outputs, cost_new)
    from provision.billing.cost import resize_difference

    diff = resize_difference(cost_old, cost_new) if hasattr(cost_old, "total") else (cost_old, cost_new)
    return Result(outputs.stack, outputs, diff, report, configured, elapsed_s=time.monotonic() - started)


def down(
    stack: str,
    provider: Provider,
    progress: Progress,
    *,
    purge_backups: bool = False,
    unprotect: bool = False,
    skip_backup: bool = False,
    config: dict[str, Any] | None = None,
    steps: Steps = Steps(),
) -> Result:
    """Destroy a stack: pre-destroy backup, provider.down, billing event. Confirmation is the CLI's job.

    ``config`` is the operator's fedi.toml: its [hooks] and [coop] hear of the destroy."""
    with stacklock.hold(stack, "fedi down", provider.backend):
        return _down(
            stack,
            provider,
            progress,
            purge_backups=purge_backups,
            unprotect=unprotect,
            skip_backup=skip_backup,
            config=config,
            steps=steps,
        )


def _down(
    stack: str,
    provider: Provider,
    progress: Progress,
    *,
    purge_backups: bool,
    unprotect: bool,
    skip_backup: bool,
    config: dict[str, Any] | None,
    steps: Steps,
) -> Result:
    outputs = provider.outputs(stack)
    spec = spec_of_outputs(outputs, config)
    if not skip_backup and outputs.access.address:
        progress("running the pre-destroy backup")
        try:
            rc, _out, err = steps.remote_run(outputs.access, BACKUP_ARGV)
        except Exception as exc:  # noqa: BLE001 - an unreachable server must not block its own removal silently
            raise BackupError(f"the pre-destroy backup could not run: {exc}", hint="use --skip-backup") from None
        if rc != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise BackupError(f"the pre-destroy backup failed: {last}", hint="fix it, or use --skip-backup")
    provider.down(stack, progress, purge_backups=purge_backups, unprotect=unprotect)
    cost = steps.cost(spec, sizing(spec)) if spec else None
    if spec is not None:
        steps.event("stack.destroyed", spec, outputs, cost)
    path = bundle_dir(stack)
    if path.exists():
        shutil.rmtree(path)
    staging_issuer_path(stack).unlink(missing_ok=True)
    return Result(stack, outputs, cost)
