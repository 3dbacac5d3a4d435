"""A master without a network: the registry and the pod store on the memory store, a cluster
PKI made by ``node-master init`` in a tmp dir, and a clock the test drives."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.master.config import MasterConfig, RegistrationPolicy
from agent.master.pki_files import ClusterPki, init_cluster
from agent.master.pods import PodStore
from agent.master.registry import NodeRegistry, RegistrationResult
from agent.master.store.memory import MemoryStore
from agent.pki.core import PrivateKey, build_csr, generate_key, public_key_id
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from tests.unit.node.pods.fakeclock import FakeClock

LEASE_GRACE_S = 40.0
EVICTION_TIMEOUT_S = 300.0


def make_cluster_pki(data_dir: Path) -> ClusterPki:
    init_cluster(
        data_dir, server_names=["127.0.0.1"], listen="127.0.0.1:6443", force=False, render_config=""
    )
    return ClusterPki.load(data_dir / "pki")


def csr_for(name: str, key: PrivateKey, *, cn: str | None = None) -> str:
    common_name = cn if cn is not None else NODE_CN_PREFIX + name
    return build_csr(key, common_name, [NODES_GROUP], [name]).decode()


@dataclass
class NodeKey:
    """A node's private key and what the master derives from it."""

    name: str
    key: PrivateKey = field(default_factory=generate_key)

    @property
    def key_id(self) -> str:
        return public_key_id(self.key.public_key())

    def csr(self) -> str:
        return csr_for(self.name, self.key)


def registration(node: NodeKey, **facts: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nodeName": node.name,
        "csr": node.csr(),
        "addresses": ["10.0.0.5"],
        "hostname": f"{node.name}.example",
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "labels": {"zone": "a"},
        "agentVersion": "1.2.3",
    }
    body.update(facts)
    return body


@dataclass
class MasterRig:
    store: MemoryStore
    clock: FakeClock
    registry: NodeRegistry
    pods: PodStore

    def policy(self, *trust: str, **options: Any) -> None:
        """Change the trust rules (what a SIGHUP reload does)."""
        self.registry.config = dataclasses.replace(
            self.registry.config, registration=RegistrationPolicy(trust=trust, **options)
        )

    async def register(
        self,
        node: NodeKey,
        *,
        ip: str = "10.0.0.5",
        peer_cert: x509.Certificate | None = None,
        trusted: bool = False,
        **facts: Any,
    ) -> RegistrationResult:
        return await self.registry.register(
            registration(node, **facts), ip, peer_cert, node.name if trusted else None
        )

    async def ready_node(self, name: str, **capacity: str) -> NodeKey:
        """An Approved node with a current lease and the given capacity."""
        node = NodeKey(name)
        policy = self.registry.config.registration
        self.policy("open")
        cap = {"cpu": "4", "memory": "8Gi", "pods": "110", **capacity}
        assert (await self.register(node, capacity=cap)).status == 200
        self.registry.config = dataclasses.replace(self.registry.config, registration=policy)
        self.registry.renew_lease(name)
        await self.registry.note_ready(name)  # as the API does on a node's first lease
        return node

    def events(self, kind: str | None = None, name: str | None = None) -> list[tuple[str, str]]:
        return [(e["reason"], e["message"]) for e in self.registry.events.list(kind, name)]


def make_rig(
    pki: ClusterPki,
    *,
    trust: tuple[str, ...] = ("open",),
    client_cas: list[x509.Certificate] | None = None,
    store: MemoryStore | None = None,
    **config: Any,
) -> MasterRig:
    settings: dict[str, Any] = {
        "lease_grace_s": LEASE_GRACE_S,
        "pod_eviction_timeout_s": EVICTION_TIMEOUT_S,
        **config,
    }
    policy = settings.pop("registration", RegistrationPolicy(trust=trust))
    cfg = MasterConfig(data_dir=Path("/nonexistent"), registration=policy, **settings)
    clock = FakeClock()
    memory = store if store is not None else MemoryStore()
    registry = NodeRegistry(memory, pki, cfg, client_cas or [], clock=clock)
    return MasterRig(memory, clock, registry, PodStore(memory, registry))
