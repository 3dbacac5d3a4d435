"""Fuzz of the master's validation of what nodes send (``agent.master.registry``): registration
bodies (anyone may POST one) and the node status a lease carries, mutated from valid ones and
random. Only our errors (400, 403, 409 …) or an answer come out; the registry stays usable."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError
from agent.master.pki_files import ClusterPki
from tests.unit.fuzz.inputs import (
    deep,
    holds_async,
    mutate_structure,
    mutate_text,
    random_structure,
    rng,
    sample,
)
from tests.unit.master.rig import NodeKey, make_cluster_pki, make_rig, registration

pytestmark = pytest.mark.usefixtures("blockbuster")

COUNT = 1500
STATUS = {
    "addresses": ["10.0.0.5"],
    "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
    "agentVersion": "1.2.3",
    "imageFs": {"capacityBytes": 1 << 30, "usedBytes": 1 << 20},
    "conditions": [{"type": "RuntimeReady", "status": "True", "reason": "", "message": ""}],
    "apiEndpoint": "10.0.0.5:10250",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPki:
    directory: Path = tmp_path_factory.mktemp("fuzz-master")
    return make_cluster_pki(directory)


async def test_registration_bodies(pki: ClusterPki) -> None:
    r = rng("registration")
    rig = make_rig(pki)
    keys = [NodeKey("n1"), NodeKey("n1"), NodeKey("n2")]
    bodies = [registration(k) for k in keys]

    def mutated(r: random.Random) -> Any:
        body = r.choice(bodies)
        for _ in range(r.randint(1, 3)):
            body = mutate_structure(r, body)
        return body if isinstance(body, dict) else {"labels": body}

    def mutated_csr(r: random.Random) -> Any:
        body = dict(r.choice(bodies))
        body["csr"] = mutate_text(r, body["csr"]) if r.random() < 0.8 else "\ud800" + body["csr"]
        return body

    def mutated_name(r: random.Random) -> Any:
        return {
            **r.choice(bodies),
            "nodeName": r.choice(["", "\x00", "a" * 300, "n1\ud800", "../x"]),
        }

    def random_body(r: random.Random) -> Any:
        # The edge hands the registry JSON objects only (ApiRequest.json).
        body = random_structure(r)
        return body if isinstance(body, dict) else {"nodeName": body}

    makers = [mutated, mutated, mutated_csr, mutated_name, random_body]
    await holds_async(
        lambda body: rig.registry.register(body, "10.0.0.5", None, None),
        sample(r, makers, COUNT),
    )
    # Still serving: a valid registration of a new node is admitted.
    assert (await rig.register(NodeKey("fresh"))).status == 200


async def test_lease_statuses(pki: ClusterPki) -> None:
    r = rng("lease-status")
    rig = make_rig(pki)
    await rig.ready_node("n1")

    def mutated(r: random.Random) -> Any:
        status = STATUS
        for _ in range(r.randint(1, 3)):
            status = mutate_structure(r, status)
        return status

    def deep_conditions(r: random.Random) -> Any:
        return {**STATUS, "conditions": [{"type": "X", "status": deep(3000)}]}

    async def update(status: Any) -> None:
        if isinstance(status, dict):
            await rig.registry.update_status("n1", status)

    await holds_async(
        update, sample(r, [mutated, mutated, deep_conditions, random_structure], COUNT)
    )


def damaged_key_csr() -> str:
    """A valid CSR whose public key bytes are damaged (the base64 still decodes)."""
    pem = NodeKey("n1").csr()
    lines = pem.splitlines()
    body = lines[2]  # inside the key
    lines[2] = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "facts",
    [
        # Each found by this fuzz test (an error other than ours escaped):
        {"csr": "\ud800" + NodeKey("n1").csr()},  # UnicodeEncodeError
        {"hostname": deep(5000)},  # RecursionError in str()
        {"agentVersion": {"a": deep(5000)}},
    ],
)
async def test_registration_regressions(pki: ClusterPki, facts: dict[str, Any]) -> None:
    rig = make_rig(pki)
    with pytest.raises(AgentError):
        await rig.register(NodeKey("n1"), **facts)


async def test_a_csr_with_a_damaged_key_is_refused(pki: ClusterPki) -> None:
    """Found by this fuzz test: ValueError escaped load_csr (the key is parsed lazily)."""
    rig = make_rig(pki)
    for _ in range(20):  # damage lands in the key or the signature: both are ours to refuse
        with pytest.raises(AgentError):
            await rig.register(NodeKey("n1"), csr=damaged_key_csr())


@pytest.mark.parametrize(
    "status",
    [
        {"conditions": [{"type": "X", "status": deep(5000)}]},
        {"agentVersion": deep(5000)},
        {"apiEndpoint": {"a": deep(5000)}},
    ],
)
async def test_lease_status_regressions(pki: ClusterPki, status: dict[str, Any]) -> None:
    rig = make_rig(pki)
    await rig.ready_node("n1")
    with contextlib.suppress(AgentError):
        await rig.registry.update_status("n1", status)
    record = await rig.registry.get_record("n1")
    assert record is not None
    assert all(isinstance(v, str) for c in record[0].get("nodeConditions", []) for v in c.values())


async def test_registration_bodies_with_join_tokens(pki: ClusterPki) -> None:
    """The token field (a trust boundary: anyone may send one) mutated from valid tokens of the
    store and random; the store's tokens keep their counts and a valid one still admits."""
    r = rng("registration-token")
    rig = make_rig(pki, trust=("token", "approval"))
    limited, _ = await rig.registry.tokens.create(usages=1_000_000)
    expired, _ = await rig.registry.tokens.create(ttl_s=1)
    rig.clock.advance(2)
    texts = [str(limited), str(expired), "abc123.0123456789abcdef"]
    keys = [NodeKey("t1"), NodeKey("t2")]

    def mutated_token(r: random.Random) -> Any:
        return {**registration(r.choice(keys)), "token": mutate_text(r, r.choice(texts))}

    def structured_token(r: random.Random) -> Any:
        return {**registration(r.choice(keys)), "token": random_structure(r)}

    def odd_token(r: random.Random) -> Any:
        token = r.choice(
            [
                r.choice(texts).upper(),
                r.choice(texts) + "\x00",
                " " * 90 + r.choice(texts),
                r.choice(texts)[:7] + "\ud800" * 16,
                "\u0661" * 23,
                r.choice(texts) * 1000,
            ]
        )
        return {**registration(r.choice(keys)), "token": token}

    await holds_async(
        lambda body: rig.registry.register(body, "10.0.0.5", None, None),
        sample(r, [mutated_token, structured_token, odd_token], COUNT),
    )
    [listed] = [t for t in await rig.registry.tokens.list() if t["id"] == limited.id]
    used = listed["used"]
    fresh = await rig.register(NodeKey("fresh"), token=str(limited))
    assert (fresh.status, fresh.body["admittedBy"]) == (200, "token")
    [listed] = [t for t in await rig.registry.tokens.list() if t["id"] == limited.id]
    assert listed["used"] == used + 1
