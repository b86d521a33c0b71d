"""The network of a local machine: its own network namespace joined to the host by a veth pair.

Each machine gets one /30 from ``SUBNET``: the host side of the veth is ``.1``, the machine side
(``eth0`` inside the namespace) is ``.2``, with a default route via the host. The host reaches the
machine at its ``.2`` address directly. By default traffic never leaves the host: the machine has
no internet access of its own. With ``internet`` (the local provider asks for it when this host can
reach the image registries), the host forwards and masquerades the machine's traffic through its
own nftables table ``ip fedi-<short>`` (removed with the machine), and sets net.ipv4.ip_forward=1;
when the last such table goes, forwarding is set back to what it was before fedi turned it on.

Commands are built as data (lists of argv lists) and run by :func:`setup` / :func:`teardown`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from provision.errors import MissingPrerequisite, ProvisionError

SUBNET = ipaddress.IPv4Network("10.213.0.0/16")
NETNS_DIR = Path("/run/netns")
LOCK = Path("/run/fedi-local-net.lock")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# The host's ip_forward before fedi turned it on for the first machine with internet access.
FORWARD_BEFORE = Path("/run/fedi-local-ip_forward")
GUEST_IF = "eth0"


@dataclass(frozen=True)
class Net:
    """One machine's network: namespace, veth names and its /30."""

    short: str  # 8 hex chars derived from the machine's key (its directory: unique on this host)
    index: int  # which /30 of SUBNET
    netns: str  # fedi-<short>; /run/netns/<netns>
    host_if: str  # veth end on the host (fv-<short>)
    peer_if: str  # veth end created on the host, moved into the namespace and renamed GUEST_IF
    host_address: str  # x.x.x.1
    address: str  # x.x.x.2: the machine's address

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns


def short_name(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def plan(key: str, index: int) -> Net:
    """The network of the machine identified by ``key`` (hashed into the names) in /30 number ``index``."""
    return from_short(short_name(key), index)


def from_short(short: str, index: int) -> Net:
    """The network with these names and /30 (a machine's record keeps both)."""
    if not 1 <= index < SUBNET.num_addresses // 4:
        raise ProvisionError(f"no free /30 left in {SUBNET} for local machines")
    base = SUBNET.network_address + 4 * index
    return Net(short, index, f"fedi-{short}", f"fv-{short}", f"fm-{short}", str(base + 1), str(base + 2))


def setup_commands(net: Net) -> list[list[str]]:
    ns = net.netns
    return [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", net.host_if, "type", "veth", "peer", "name", net.peer_if],
        ["ip", "link", "set", net.peer_if, "netns", ns],
        ["ip", "-n", ns, "link", "set", net.peer_if, "name", GUEST_IF],
        ["ip", "addr", "add", f"{net.host_address}/30", "dev", net.host_if],
        ["ip", "link", "set", net.host_if, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "addr", "add", f"{net.address}/30", "dev", GUEST_IF],
        ["ip", "-n", ns, "link", "set", GUEST_IF, "up"],
        ["ip", "-n", ns, "route", "add", "default", "via", net.host_address],
    ]


def teardown_commands(net: Net) -> list[list[str]]:
    # Deleting one end of a veth deletes both; deleting the namespace unmounts /run/netns/<ns>.
    return [["ip", "link", "del", net.host_if], ["ip", "netns", "del", net.netns]]


def nat_commands(net: Net) -> list[list[str]]:
    """The host's own table for one machine: masquerade its /30, forward its traffic."""
    table = ["ip", net.netns]
    subnet = str(ipaddress.IPv4Interface(f"{net.address}/30").network)
    return [
        ["nft", "add", "table", *table],
        ["nft", "add", "chain", *table, "masq", "{ type nat hook postrouting priority srcnat; }"],
        ["nft", "add", "rule", *table, "masq", "ip", "saddr", subnet, "oifname", "!=", net.host_if, "masquerade"],
        ["nft", "add", "chain", *table, "pass", "{ type filter hook forward priority filter; }"],
        ["nft", "add", "rule", *table, "pass", "iifname", net.host_if, "accept"],
        ["nft", "add", "rule", *table, "pass", "oifname", net.host_if, "ct", "state", "established,related", "accept"],
    ]


def nat_teardown_commands(net: Net) -> list[list[str]]:
    return [["nft", "delete", "table", "ip", net.netns]]


def registries() -> tuple[tuple[str, int], ...]:
    """Where the apps' images come from: the registry of every image the catalog pins (HTTPS). Docker Hub's
    images are named docker.io/... and pulled from registry-1.docker.io."""
    from provision import apps

    hosts = sorted({ref.split("/", 1)[0] for app in apps.all_apps() for ref in app.images.values()})
    return tuple(("registry-1.docker.io" if host == "docker.io" else host, 443) for host in hosts)


def internet_reachable(endpoints: tuple[tuple[str, int], ...] | None = None, timeout: float = 3.0) -> bool:
    """Can this host open TCP connections to every endpoint (default: the app image registries)? Bounded."""
    for host, port in registries() if endpoints is None else endpoints:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError:
            return False
    return True


def enable_nat(net: Net) -> None:
    if shutil.which("nft") is None:
        raise MissingPrerequisite("nft is not installed on this host", hint="apt-get install nftables")
    before = IP_FORWARD.read_text().strip()
    if before != "1" and not FORWARD_BEFORE.exists():
        FORWARD_BEFORE.write_text(before + "\n")
    IP_FORWARD.write_text("1\n")
    _run(["nft", "delete", "table", "ip", net.netns])  # a leftover from a crash: start clean
    for argv in nat_commands(net):
        result = _run(argv)
        if result.returncode != 0:
            detail = f"{' '.join(argv)}: {result.stderr.strip()}"
            raise ProvisionError(f"could not give the machine internet access: {detail}")


def used_indexes(ip_addr_output: str) -> set[int]:
    """The /30 indexes already taken on this host, from ``ip -o -4 addr show`` output."""
    used: set[int] = set()
    for line in ip_addr_output.splitlines():
        parts = line.split()
        if "inet" not in parts:
            continue
        address = ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).ip
        if address in SUBNET:
            used.add((int(address) - int(SUBNET.network_address)) // 4)
    return used


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    with open(LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def exists(net: Net) -> bool:
    return net.netns_path.exists()


def setup(key: str, index: int | None = None) -> Net:
    """Create the namespace and veth for ``key``; reuse ``index`` if given (a restarted machine)."""
    with _lock():
        if index is None:
            taken = used_indexes(_run(["ip", "-o", "-4", "addr", "show"]).stdout)
            index = next(i for i in range(1, SUBNET.num_addresses // 4) if i not in taken)
        net = plan(key, index)
        if exists(net):
            return net
        for argv in setup_commands(net):
            result = _run(argv)
            if result.returncode != 0:
                teardown(net)
                raise ProvisionError(f"could not set up the machine network: {' '.join(argv)}: {result.stderr.strip()}")
        return net


def teardown(net: Net) -> None:
    """Remove the veth, the namespace and the NAT table; missing pieces are fine (idempotent)."""
    commands = teardown_commands(net) + (nat_teardown_commands(net) if shutil.which("nft") else [])
    for argv in commands:
        _run(argv)
    restore_forwarding()


def restore_forwarding() -> None:
    """Set ip_forward back to what it was once no machine's NAT table is left (fedi turned it on)."""
    if not FORWARD_BEFORE.exists() or not shutil.which("nft"):
        return
    listing = _run(["nft", "list", "tables", "ip"])  # "table ip NAME" lines
    names = [line.split()[-1] for line in listing.stdout.splitlines() if line.startswith("table ")]
    if listing.returncode != 0 or any(name.startswith("fedi-") for name in names):
        return
    IP_FORWARD.write_text(FORWARD_BEFORE.read_text())
    FORWARD_BEFORE.unlink()
