"""The funding status, posted on the instance where members see it (``[coop] announce = true``).

Each app posts it where its members see it, the way the app allows: its catalog entry's ``announce``
(``provision/apps/<app>.py``, where what each app really offers is written down, checked in its source).
What they share (the text, the marked section, requests as data and their sender) is
:mod:`provision.billing.funding`; this module picks the app and the TLS trust of the stack.
"""

from __future__ import annotations

from typing import Any


def announce(spec: Any, report: Any, provider: Any, *, base_url: str | None = None, run: Any = None) -> str:
    """Post ``report`` on ``spec``'s instance the way its app allows (see the module docstring).

    ``provider`` gives the stack's outputs (SSH access, for Mastodon; the CA to trust) and its stored
    secrets (the Lemmy admin's password; read only); ``run`` is :func:`provision.remote.run`;
    ``base_url`` defaults to https://<domain>. The certificate is always verified: against the stack's
    own CA bundle where it has one (Caddy's internal CA on the local provider), else the system's roots.
    """
    from provision import apps

    base_url = base_url or f"https://{spec.domain}"
    outputs = provider.outputs(spec.stack_name)
    verify = tls_context(spec, outputs)
    return apps.get(spec.app).announce(spec, report, provider, outputs, base_url=base_url, verify=verify, run=run)


def tls_context(spec: Any, outputs: Any) -> Any:
    """What to trust for the stack's HTTPS: its CA bundle (as the health checks do), else the system's roots."""
    import ssl

    from provision.lifecycle.stack import health_target, staging_issuer_path

    ca = health_target(spec, outputs).ca_bundle
    if ca is None and spec.ephemeral and staging_issuer_path(outputs.stack).exists():
        ca = staging_issuer_path(outputs.stack)
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca:  # a staging intermediate is trusted on its own, as the health checks trust it
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def validate_config(config: dict[str, Any]) -> None:
    """Check fedi.toml's [hooks] and (if present) [coop] at the edge, before anything is created.

    Raises ValidationError with the bad key's path (``hooks/urls[0]: ...``, ``coop/dues: ...``).
    """
    from provision.billing.dues import parse_coop
    from provision.billing.hooks import parse_hooks

    parse_hooks(config)
    if "coop" in config:
        parse_coop(config["coop"])
