"""The app catalog: one module per app (see :mod:`provision.apps.base` for what each holds).

Importing this package registers every app; shared code uses :func:`get` and never names an app.
"""

# ruff: noqa: I001 (the order of registration is the order `--software` lists the apps in)
from provision.apps import mastodon  # noqa: F401  (each app module registers itself)
from provision.apps import lemmy  # noqa: F401
from provision.apps import mbin  # noqa: F401
from provision.apps.base import (
    CATALOG,
    AdminAccount,
    App,
    BundleFile,
    CheckFailed,
    Cleanup,
    Tuning,
    all_apps,
    app_name,
    field_of,
    get,
    register,
    software_names,
)

__all__ = [
    "CATALOG",
    "AdminAccount",
    "App",
    "BundleFile",
    "CheckFailed",
    "Cleanup",
    "Tuning",
    "all_apps",
    "app_name",
    "field_of",
    "get",
    "register",
    "software_names",
]
