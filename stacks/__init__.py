"""Pulumi programs. ``stacks.hetzner`` declares one instance on Hetzner Cloud.

Importing this package loads nothing heavy; the program modules import pulumi themselves.
"""
