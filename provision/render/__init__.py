"""Helpers of the bundle renderer (provision/bundle.py): the Jinja context and derived values."""
