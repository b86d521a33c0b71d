"""Helpers of the bundle renderer (provision/render/bundle.py): the Jinja context and derived values."""
