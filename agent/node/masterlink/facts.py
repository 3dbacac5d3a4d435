"""Facts about this node that the master shows: addresses, capacity, agent version, where its
API listens, image filesystem usage. Read from the host (netlink, psutil) on the thread bridge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import psutil

from agent import __version__
from agent.aio.bridge import ThreadBridge
from agent.config import split_host_port
from agent.errors import AgentError

_VIRTUAL_IFACES = ("lo", "docker", "veth", "br-", "virbr", "cni", "flannel", "cali")
_MIB_BYTES = 1 << 20


def node_addresses() -> list[str]:
    """Global addresses of physical-looking interfaces, via netlink (blocking: bridge it)."""
    from pyroute2 import IPRoute

    found: list[str] = []
    with IPRoute() as ipr:
        links = {link["index"]: link.get("IFLA_IFNAME") or "" for link in ipr.get_links()}
        for msg in ipr.get_addr():
            if msg["scope"] != 0:  # 0 = RT_SCOPE_UNIVERSE: skip host and link scope
                continue
            if links.get(msg["index"], "").startswith(_VIRTUAL_IFACES):
                continue
            address = msg.get("IFA_ADDRESS")
            if address:
                found.append(str(address))
    return found


def node_capacity(state_dir: Path, max_pods: int) -> dict[str, str]:
    """Blocking (psutil reads /proc and statvfs): bridge it."""
    disk = psutil.disk_usage(str(state_dir if state_dir.exists() else state_dir.parent))
    return {
        "cpu": str(psutil.cpu_count() or 1),
        "memory": f"{psutil.virtual_memory().total // 1024}Ki",
        "ephemeral-storage": f"{disk.total // 1024}Ki",
        "pods": str(max_pods),
    }


class ImageFs(Protocol):
    async def image_fs_usage(self) -> dict[str, int]: ...


class NodeFacts:
    def __init__(
        self,
        bridge: ThreadBridge,
        runtime: ImageFs,
        *,
        state_dir: Path,
        max_pods: int,
        api_addr: str,
    ) -> None:
        self._bridge = bridge
        self._runtime = runtime
        self._state_dir = state_dir
        self._max_pods = max_pods
        self._api_addr = api_addr

    async def addresses(self) -> list[str]:
        return await self._bridge.run(node_addresses)

    async def capacity(self) -> dict[str, str]:
        return await self._bridge.run(node_capacity, self._state_dir, self._max_pods)

    async def status(self) -> dict[str, Any]:
        """The node's status as the lease carries it."""
        addresses = await self.addresses()
        host, port = split_host_port(self._api_addr, "api_addr")
        if host in ("0.0.0.0", "::", "") and addresses:
            host = addresses[0]
        status: dict[str, Any] = {
            "addresses": addresses,
            "capacity": await self.capacity(),
            "agentVersion": __version__,
            # Where nodectl --direct and the master's proxy reach the node API.
            "apiEndpoint": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        }
        try:
            usage = await self._runtime.image_fs_usage()
        except AgentError:
            return status  # the runtime is down: report the rest
        # Rounded to MiB so a few bytes written do not count as a change worth sending.
        status["imageFs"] = {k: v // _MIB_BYTES * _MIB_BYTES for k, v in usage.items()}
        return status
