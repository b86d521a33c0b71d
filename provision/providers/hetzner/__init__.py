"""Hetzner Cloud: the provider, its Pulumi engine (real and offline), its API and prices."""
