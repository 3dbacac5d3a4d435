"""Test topology: hosts as network namespaces on one Linux bridge, so a partition is
``ip link set <host's veth> down`` and a heal is ``up``.

Every name starts with ``nat`` and every address is in ``SUBNET`` (a /24 no real network here
uses): the bridge holds ``.1`` in the test's own namespace, so the test reaches every host that
is not partitioned; host *k* gets ``.k+1`` on its ``eth0``. Docker's FORWARD policy would drop
frames bridged between two hosts (br_netfilter), so the topology adds an ACCEPT rule for its
bridge, as Docker does for docker0, and removes it again. Leftovers of an aborted run are
removed first.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

PREFIX = "nat"
BRIDGE = f"{PREFIX}br0"
SUBNET = "10.213.77"
_FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    netns: str
    link: str  # the veth end on the bridge, in the test's namespace
    address: str


class Topology:
    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.clean_leftovers()
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        subprocess.run(["iptables", "-I", *_FORWARD_RULE], check=True, timeout=30)

    def add_host(self, name: str) -> Host:
        if len(name) > 8 or not name.isalnum():
            raise ValueError(f"host name {name!r}: up to 8 letters or digits (interface names)")
        host = Host(
            name=name,
            netns=f"{PREFIX}-{name}",
            link=f"{PREFIX}-{name}",
            address=f"{SUBNET}.{len(self.hosts) + 2}",
        )
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.link, "master", BRIDGE, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def partition(self, host: Host) -> None:
        _ip("link", "set", host.link, "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.link, "up")

    def close(self) -> None:
        self.clean_leftovers()

    @staticmethod
    def clean_leftovers() -> None:
        # Links first: deleting our end of a veth removes the pair at once, whereas a deleted
        # namespace releases its interfaces asynchronously and the next test would find the
        # names still taken.
        for line in _ip("-o", "link", "show").stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"{PREFIX}-"):
                _ip("link", "delete", name, check=False)
        names = _ip("netns", "list").stdout.split()
        for name in names:
            if name.startswith(f"{PREFIX}-"):
                _ip("netns", "delete", name, check=False)
        _ip("link", "delete", BRIDGE, check=False)
        while (
            subprocess.run(
                ["iptables", "-D", *_FORWARD_RULE], capture_output=True, check=False, timeout=30
            ).returncode
            == 0
        ):
            pass
