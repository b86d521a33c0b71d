"""fedi: one-click provisioner for Fediverse instances."""

__version__ = "0.1.0"
