"""A local Debian 13 machine (systemd-nspawn): the provider, the machine, its network, image and limits."""
