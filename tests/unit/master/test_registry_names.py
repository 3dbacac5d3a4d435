"""The registry and node names (issue 14, item 2): a registration's ``nodeName`` takes the one
node-name check of ``agent.names`` before anything else is looked at, and a record an older
master stored under a name no route can address is reported at start. Over a real master:
tests/integration/test_hostile_names.py."""

from __future__ import annotations

import json
import logging

import pytest

from agent.errors import BadRequestError
from agent.master.pki_files import ClusterPki
from agent.master.registry import NODES_PREFIX, NodeRegistry
from agent.pki.core import build_csr, generate_key
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from tests.unit.master.rig import MasterRig, NodeKey


@pytest.mark.parametrize(
    "name", ["", "a/b", "*", "system:masters", "a\nb", "Node", "n" * 53, "nöde", "-n", "n."]
)
async def test_a_registration_names_a_valid_node_or_is_400(rig: MasterRig, name: str) -> None:
    # The CSR is a valid node's: the name itself is what is refused, before the CSR.
    csr = build_csr(generate_key(), NODE_CN_PREFIX + "n1", [NODES_GROUP], ["n1"]).decode()
    with pytest.raises(BadRequestError, match=r"^nodeName: ") as caught:
        await rig.registry.register({"nodeName": name, "csr": csr}, "10.0.0.5", None, None)
    assert caught.value.message.isprintable()
    assert await rig.registry.records() == []


async def test_a_stored_name_no_route_can_address_is_reported_at_start(
    rig: MasterRig, cluster_pki: ClusterPki, caplog: pytest.LogCaptureFixture
) -> None:
    await rig.register(NodeKey("n1"))
    stored = await rig.store.get(NODES_PREFIX + "n1")
    assert stored is not None
    legacy = {**json.loads(stored.value), "name": "Bad\nName"}
    await rig.store.put(NODES_PREFIX + "Bad\nName", json.dumps(legacy).encode())
    caplog.set_level(logging.WARNING, logger="agent.master.registry")
    restarted = NodeRegistry(rig.store, cluster_pki, rig.registry.config, [], clock=rig.clock)
    await restarted.load()
    warned = [r for r in caplog.records if "no route can address" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].__dict__["fields"] == {"node": "Bad\nName"}  # the formats escape it
    assert {r["name"] for r in await restarted.records()} == {"n1", "Bad\nName"}
