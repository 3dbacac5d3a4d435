"""Bounded registration on the memory store with a driven clock: the per-source token bucket,
the cap on waiting requests (count and bytes), their expiry and the task that runs it, the size
limits of a registration's fields, and the 429 with Retry-After the API answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.aio.edge import error_response
from agent.aio.tasks import Supervisor
from agent.errors import (
    BadRequestError,
    NameConflictError,
    NotFoundError,
    TooManyRequestsError,
)
from agent.master.api import MasterApi
from agent.master.app import RegistrationExpiry
from agent.master.config import RegistrationPolicy
from agent.master.pki_files import ClusterPki
from agent.master.registry import (
    MAX_LABELS,
    NODES_PREFIX,
    PENDING,
    PENDING_FULL_RETRY_AFTER_S,
    SourceRateLimit,
    rate_source,
)
from tests.unit.master.rig import MasterRig, NodeKey, make_rig, registration
from tests.unit.master.test_api import NOBODY, VIEWER, call, fails, loads, node_caller
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.fakeclock import FakeClock

pytestmark = pytest.mark.usefixtures("blockbuster")

TTL_S = 600.0


def approval_rig(cluster_pki: ClusterPki, **limits: Any) -> MasterRig:
    policy = RegistrationPolicy(trust=("approval",), pending_registration_ttl_s=TTL_S, **limits)
    return make_rig(cluster_pki, registration=policy)


async def waiting(rig: MasterRig) -> list[str]:
    return sorted(r["name"] for r in await rig.registry.records() if r["registration"] == PENDING)


# -- the token bucket -------------------------------------------------------------------------


def test_a_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limit = SourceRateLimit(clock)
    for _ in range(3):
        limit.take("192.0.2.1", 2.0, 3)
    with pytest.raises(TooManyRequestsError) as caught:
        limit.take("192.0.2.1", 2.0, 3)
    assert caught.value.http_status == 429 and caught.value.retry_after_s == 1
    assert "at most 3 at once and 2 per second" in caught.value.message
    limit.take("192.0.2.2", 2.0, 3)  # another source has its own bucket
    clock.advance(0.5)  # one token back
    limit.take("192.0.2.1", 2.0, 3)
    with pytest.raises(TooManyRequestsError):
        limit.take("192.0.2.1", 2.0, 3)
    # Refused requests spend nothing: the wait is the same however often it is asked.
    clock.advance(0.4)
    with pytest.raises(TooManyRequestsError):
        limit.take("192.0.2.1", 2.0, 3)
    clock.advance(0.1)
    limit.take("192.0.2.1", 2.0, 3)


def test_retry_after_is_whole_seconds_until_a_token() -> None:
    limit = SourceRateLimit(FakeClock())
    limit.take("192.0.2.1", 0.1, 1)
    with pytest.raises(TooManyRequestsError) as caught:
        limit.take("192.0.2.1", 0.1, 1)
    assert caught.value.retry_after_s == 10


def test_sources_are_addresses_and_ipv6_slash_64s() -> None:
    assert rate_source("192.0.2.1") == "192.0.2.1"
    assert rate_source("::ffff:192.0.2.1") == "192.0.2.1"
    assert rate_source("2001:db8:1:2:aaaa::1") == rate_source("2001:db8:1:2:bbbb::9")
    assert rate_source("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert rate_source("2001:db8:1:3::1") != rate_source("2001:db8:1:2::1")
    assert rate_source("not an address") == "not an address"


def test_the_bucket_table_is_bounded() -> None:
    clock = FakeClock()
    limit = SourceRateLimit(clock, max_sources=4)
    for n in range(10):
        limit.take(f"192.0.2.{n}", 1.0, 2)
    assert len(limit) == 4  # the least recently used went
    clock.advance(5)  # every bucket full again: forgotten first
    limit.take("198.51.100.1", 1.0, 2)
    limit.take("198.51.100.2", 1.0, 2)
    limit.take("198.51.100.3", 1.0, 2)
    limit.take("198.51.100.4", 1.0, 2)
    limit.take("198.51.100.5", 1.0, 2)
    assert len(limit) <= 4


# -- the cap on waiting requests --------------------------------------------------------------


async def test_waiting_requests_stop_at_the_cap_with_429(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki, max_pending_registrations=3)
    nodes = [NodeKey(f"n{n}") for n in range(3)]
    for node in nodes:
        assert (await rig.register(node)).status == 202
    with pytest.raises(TooManyRequestsError, match="max_pending_registrations") as caught:
        await rig.register(NodeKey("n3"))
    assert caught.value.retry_after_s == PENDING_FULL_RETRY_AFTER_S
    assert await waiting(rig) == ["n0", "n1", "n2"]
    assert (await rig.register(nodes[0])).status == 202  # asking again is not a new one
    await rig.registry.approve("n0")
    assert (await rig.register(NodeKey("n3"))).status == 202  # room again
    assert rig.registry.pending_usage()[0] == 3


async def test_replacement_keys_count_toward_the_cap(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki, max_pending_registrations=2)
    await rig.ready_node("known")
    assert (await rig.register(NodeKey("n0"))).status == 202
    with pytest.raises(NameConflictError, match="different key"):
        await rig.register(NodeKey("known"))
    assert rig.registry.pending_usage()[0] == 2
    with pytest.raises(TooManyRequestsError):
        await rig.register(NodeKey("n1"))


async def test_waiting_requests_stop_at_the_byte_cap(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki, max_pending_bytes=8000)
    labels = {f"key-{n}": "v" * 60 for n in range(30)}  # ~2 KiB of labels a request
    assert (await rig.register(NodeKey("n0"), labels=labels)).status == 202
    assert (await rig.register(NodeKey("n1"), labels=labels)).status == 202
    with pytest.raises(TooManyRequestsError, match="max_pending_bytes 8000"):
        await rig.register(NodeKey("n2"), labels=labels)
    count, used = rig.registry.pending_usage()
    assert count == 2 and used <= 8000
    stored = (await rig.store.list_prefix(NODES_PREFIX))[0]
    assert used == sum(len(i.value) for i in stored)


async def test_concurrent_requests_do_not_overshoot_the_cap(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki, max_pending_registrations=5)
    results = await asyncio.gather(
        *(rig.register(NodeKey(f"n{n}")) for n in range(20)), return_exceptions=True
    )
    assert sum(isinstance(r, TooManyRequestsError) for r in results) == 15
    assert len(await waiting(rig)) == 5


# -- expiry -----------------------------------------------------------------------------------


async def test_waiting_requests_expire_after_their_ttl(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki)
    await rig.ready_node("known")
    rid = (await rig.register(NodeKey("old"))).body["requestId"]
    with pytest.raises(NameConflictError, match="different key"):
        await rig.register(NodeKey("known"))
    rig.clock.advance(TTL_S / 2)
    await rig.register(NodeKey("young"))
    assert await rig.registry.expire_pending() == 0
    rig.clock.advance(TTL_S / 2)
    assert await rig.registry.expire_pending() == 2  # old, and known's replacement key
    assert await waiting(rig) == ["young"]
    known = await rig.registry.get_record("known")
    assert known is not None and "replacement" not in known[0]
    assert rig.registry.is_current_node("known", known[0]["publicKeyId"])  # the node stays
    assert rig.registry.pending_usage()[0] == 1
    with pytest.raises(NotFoundError, match="not found"):
        await rig.registry.poll(rid, 0)
    assert "RegistrationExpired" in [r for r, _ in rig.events("Node", "old")]
    rig.clock.advance(TTL_S / 2)
    assert await rig.registry.expire_pending() == 1
    assert await waiting(rig) == []
    # An expired node asking again is a new request, waiting from now.
    assert (await rig.register(NodeKey("old"))).status == 202


async def test_approved_and_denied_nodes_never_expire(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki)
    await rig.register(NodeKey("a"))
    await rig.register(NodeKey("d"))
    await rig.registry.approve("a")
    await rig.registry.deny("d", "no")
    rig.clock.advance(TTL_S * 10)
    assert await rig.registry.expire_pending() == 0
    assert {r["name"] for r in await rig.registry.records()} == {"a", "d"}


async def test_an_approval_racing_the_expiry_wins(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki)
    await rig.register(NodeKey("n1"))
    rig.clock.advance(TTL_S)
    _, stale = await rig.registry.get_record("n1") or ({}, 0)
    await rig.registry.approve("n1")
    # The expiry looked at the record before the approval: its delete no longer matches.
    assert await rig.store.delete(NODES_PREFIX + "n1", expected_mod_revision=stale) is None
    assert await rig.registry.expire_pending() == 0


async def test_the_expiry_task_runs_every_quarter_ttl(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki)
    rig.policy("approval", pending_registration_ttl_s=200.0)
    await rig.register(NodeKey("n1"))
    waits: list[float] = []
    rounds = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        rig.clock.advance(seconds)  # the driven clock moves as the task waits
        if len(waits) >= 5:
            rounds.set()
            await asyncio.Event().wait()  # parked until stopped
        await asyncio.sleep(0)

    async with Supervisor() as supervisor:
        manager = RegistrationExpiry(rig.registry, supervisor.scope("expiry"), pause=sleep)
        await manager.start()
        await asyncio.wait_for(rounds.wait(), 10)
        await manager.stop()
    assert waits == [50.0] * 5  # a quarter of the time-to-live
    assert await waiting(rig) == []  # gone after four rounds (200 s)
    assert "RegistrationExpired" in [r for r, _ in rig.events("Node", "n1")]


async def test_a_policy_reload_wakes_the_expiry_at_once(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki)
    await rig.register(NodeKey("n1"))
    rig.clock.advance(TTL_S / 2)
    wake = asyncio.Event()
    async with Supervisor() as supervisor:
        manager = RegistrationExpiry(rig.registry, supervisor.scope("expiry"), wake)
        await manager.start()
        assert await waiting(rig) == ["n1"]  # the first look is a minute away
        rig.policy("approval", pending_registration_ttl_s=TTL_S / 4)  # what a SIGHUP does
        wake.set()
        await until(lambda: not rig.registry.pending_usage()[0], "expired after the reload")
        await manager.stop()


async def test_the_check_interval_is_bounded(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki)
    rig.policy("approval", pending_registration_ttl_s=0.1)
    assert rig.registry.expiry_check_s() == 0.25
    rig.policy("approval")  # 24 h
    assert rig.registry.expiry_check_s() == 60.0


# -- what one registration may carry ----------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"labels": {f"k{n}": "v" for n in range(MAX_LABELS + 1)}}, "more than 64"),
        ({"labels": {"bad key!": "v"}}, "is not a valid label key"),
        ({"labels": {"k": "v" * 64}}, "is not a valid label value"),
        ({"labels": {"k": 1}}, "labels must be an object of strings"),
        ({"labels": {"a" * 254 + "/k": "v"}}, "is not a DNS-1123 subdomain"),
        ({"addresses": ["10.0.0.1"] * 33}, "addresses has 33 items, more than 32"),
        ({"hostname": "h" * 254}, "hostname: "),
        ({"agentVersion": "1" * 300}, "is longer than 253 characters"),
        ({"capacity": {f"r{n}": "1" for n in range(33)}}, "capacity has 33 entries"),
        ({"csr": "x" * (16 * 1024 + 1)}, "csr is longer than 16384 characters"),
    ],
)
async def test_field_limits(rig: MasterRig, facts: dict[str, Any], message: str) -> None:
    node = NodeKey("n1")
    body = registration(node, **facts)
    with pytest.raises(BadRequestError, match=message.replace("(", "\\(")):
        await rig.registry.register(body, "10.0.0.5", None, None)
    assert await rig.registry.records() == []


async def test_labels_as_kubernetes_has_them_are_accepted(rig: MasterRig) -> None:
    labels = {
        "topology.kubernetes.io/zone": "eu-west-1a",
        "node-role.kubernetes.io/worker": "",
        "a" * 63: "b" * 63,
    }
    assert (await rig.register(NodeKey("n1"), labels=labels)).status == 200


async def test_the_labels_total_size_is_bounded(rig: MasterRig) -> None:
    # 64 labels of a 253-character prefix, a 63-character name and a 63-character value.
    prefix = ".".join(["p" * 63] * 4)[:253]
    labels = {f"{prefix}/{n:02d}{'k' * 61}": "v" * 63 for n in range(64)}
    with pytest.raises(BadRequestError, match="more than 16384"):
        await rig.register(NodeKey("n1"), labels=labels)


# -- the API's answers ------------------------------------------------------------------------


async def test_the_api_answers_429_with_retry_after(cluster_pki: ClusterPki) -> None:
    rig = make_rig(
        cluster_pki,
        registration=RegistrationPolicy(
            trust=("approval",), registration_rate_per_s=0.5, registration_burst=2
        ),
    )
    api = MasterApi(rig.registry, rig.pods, ())
    for n in range(2):
        body = registration(NodeKey(f"n{n}"))
        reply = await call(api, "POST", "/v1/registrations", body, caller=NOBODY)
        assert reply.status == 202
    exc, error = await fails(
        api, "POST", "/v1/registrations", registration(NodeKey("n2")), caller=NOBODY
    )
    assert isinstance(exc, TooManyRequestsError) and error["code"] == 429
    assert ("retry-after", "2") in error_response(exc).headers
    # Before the body is looked at: a flood of garbage costs a bucket look-up.
    exc, _ = await fails(api, "POST", "/v1/registrations", b"not json", caller=NOBODY)
    assert isinstance(exc, TooManyRequestsError)
    # Another source address has its own bucket; a node with its certificate has none.
    other = await call(
        api, "POST", "/v1/registrations", registration(NodeKey("n3")), peer_ip="192.0.2.9"
    )
    assert other.status == 202
    known = await rig.ready_node("known")
    for _ in range(5):
        reply = await call(
            api, "POST", "/v1/registrations", registration(known), caller=node_caller(known)
        )
        assert reply.status == 200
    # Another name from that node's certificate is a newcomer: the bucket counts it (else a
    # joined node could guess join tokens without a bound).
    exc, _ = await fails(
        api, "POST", "/v1/registrations", registration(NodeKey("n4")), caller=node_caller(known)
    )
    assert isinstance(exc, TooManyRequestsError)


async def test_the_node_object_shows_since_when_a_node_waits(cluster_pki: ClusterPki) -> None:
    rig = approval_rig(cluster_pki)
    await rig.register(NodeKey("n1"))
    api = MasterApi(rig.registry, rig.pods, ())
    shown = loads(await call(api, "GET", "/v1/nodes/n1", caller=VIEWER))
    assert shown["status"]["registration"]["pendingSince"] == "2027-01-15T08:00:00Z"
    await rig.registry.approve("n1")
    shown = loads(await call(api, "GET", "/v1/nodes/n1", caller=VIEWER))
    assert "pendingSince" not in shown["status"]["registration"]
