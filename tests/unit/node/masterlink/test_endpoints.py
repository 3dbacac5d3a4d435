"""Several masters: each node's order of preference (rendezvous hashing), the spread of a
fleet over the masters and of a dead master's nodes over the others, the rotation on failure
(soon while this outage has masters not tried, then the outage back-off), and the link failing
over against the fake master (connection refused, then a 503), on the rig's step clock."""

from __future__ import annotations

import logging
import socket
from collections import Counter
from pathlib import Path

import pytest

from agent.node.masterlink.endpoints import FAILOVER_SPREAD_S, MasterEndpoints, preference
from agent.node.masterlink.state import LinkCondition
from tests.unit.node.asyncwait import until
from tests.unit.node.masterlink.fakemaster import NODE, FakeMaster, pod_manifest
from tests.unit.node.masterlink.rig import link_rig
from tests.unit.node.masterlink.test_link import connect

MASTERS = ("https://m1:6443", "https://m2:6443", "https://m3:6443")
FLEET = [f"node-{i}" for i in range(3000)]


def test_the_order_is_the_nodes_own_and_not_the_lists() -> None:
    order = preference(MASTERS, "node-7")
    assert sorted(order) == sorted(MASTERS)
    assert preference(tuple(reversed(MASTERS)), "node-7") == order
    assert preference([f"{m}/" for m in MASTERS], "node-7") == order  # a trailing / is the same
    assert preference((*MASTERS, MASTERS[0]), "node-7") == order  # and so is a repeat
    assert len({preference(MASTERS, n) for n in FLEET}) == 6  # every order occurs


def test_a_fleet_spreads_over_the_masters() -> None:
    firsts = Counter(preference(MASTERS, n)[0] for n in FLEET)
    assert set(firsts) == set(MASTERS)
    for count in firsts.values():  # 1,000 each, give or take a few per cent
        assert 900 <= count <= 1100, firsts


def test_the_nodes_of_a_dead_master_spread_over_the_others_and_no_other_node_moves() -> None:
    dead = MASTERS[0]
    survivors = MASTERS[1:]
    moved: Counter[str] = Counter()
    for name in FLEET:
        before = preference(MASTERS, name)
        after = preference(survivors, name)
        if before[0] == dead:
            assert after[0] == before[1]  # its next choice, which is...
            moved[after[0]] += 1
        else:
            assert after[0] == before[0]  # a node of a survivor stays where it is
    total = sum(moved.values())
    for count in moved.values():  # ...uniform over the survivors, not all on one
        assert 0.4 * total <= count <= 0.6 * total, moved


def test_failures_rotate_soon_while_untried_masters_remain_then_a_round_is_over() -> None:
    endpoints = MasterEndpoints(MASTERS, "node-7")
    order = endpoints.order
    assert endpoints.current == order[0] and endpoints.several
    assert endpoints.failed() is True and endpoints.current == order[1]
    assert endpoints.failed() is True and endpoints.current == order[2]
    assert endpoints.failed() is False and endpoints.current == order[0]  # all failed: back off
    assert endpoints.failed() is True and endpoints.current == order[1]  # the next round
    endpoints.succeeded()  # a session on order[1]: the outage is over, it stays there
    assert endpoints.current == order[1]
    assert endpoints.failed() is True and endpoints.current == order[2]
    assert endpoints.failed() is True and endpoints.current == order[0]
    assert endpoints.failed() is False


def test_one_master_never_moves() -> None:
    endpoints = MasterEndpoints(MASTERS[:1], "node-7")
    assert not endpoints.several
    for _ in range(3):
        assert endpoints.failed() is False
        assert endpoints.current == MASTERS[0]
    with pytest.raises(ValueError):
        MasterEndpoints((), "node-7")


def closed_port_url(live: str) -> str:
    """A URL nothing listens on that NODE prefers to ``live`` (so the link tries it first)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"https://127.0.0.1:{probe.getsockname()[1]}"
        if preference((live, url), NODE)[0] == url:
            return url
    raise AssertionError("no closed port ranked first")  # pragma: no cover


async def test_the_link_fails_over_on_a_refused_connection_and_on_a_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.node.masterlink.link")
    master = FakeMaster(tmp_path / "master")
    await master.start()
    dead = closed_port_url(master.url)

    def switches() -> list[tuple[str, str]]:
        return [
            (r.__dict__["fields"]["master"], r.__dict__["fields"]["next"])
            for r in caplog.records
            if r.getMessage().startswith("master unreachable; switching")
        ]

    async with link_rig(tmp_path, master=master, start_master=False, other_masters=(dead,)) as rig:
        rig.master.add_pod(pod_manifest("a", uid="uid-a"), notify=False)
        endpoints = rig.link._client.endpoints
        assert endpoints.current == dead  # NODE's first choice: nothing listens there
        wait_s = await rig.link.attempt()
        assert rig.status.condition is LinkCondition.UNREACHABLE
        assert 0 <= wait_s <= FAILOVER_SPREAD_S  # the next master is tried soon
        assert switches() == [(dead, master.url)]  # one line for the switch
        assert endpoints.current == master.url

        attempt = await connect(rig)  # the first contact pins the CA and registers here
        await until(lambda: rig.api_pods() == {"default/a"}, "pod a desired")
        lease = rig.master.record.leases[-1]
        assert lease["status"]["master"] == master.url  # the node says where it is
        revision = rig.watch.revision
        assert revision is not None
        attempt.cancel()

        rig.master.unavailable = True  # a 503 to every request: its store is away, say
        wait_s = await rig.link.attempt()  # its first lease renewal is answered 503
        assert "503" in rig.status.message
        assert switches()[-1] == (master.url, dead)
        assert 0 <= wait_s <= FAILOVER_SPREAD_S  # dead was not tried in this outage
        assert endpoints.current == dead
        assert rig.watch.revision == revision  # the watch resumes there, nothing relisted
        assert rig.api_pods() == {"default/a"}  # and the pods stay

        ceiling = rig.link.backoff.ceiling_s
        wait_s = await rig.link.attempt()  # dead again: every master failed in this outage
        assert switches()[-1] == (dead, master.url)
        assert 0 <= wait_s <= ceiling  # the outage back-off paces the next round

        rig.master.unavailable = False
        attempt = await connect(rig)  # back on the fake master, from the same revision
        assert endpoints.current == master.url
        assert rig.status.condition is LinkCondition.CONNECTED
        assert rig.link.backoff.ceiling_s == rig.link.backoff.initial_s  # the outage is over
        assert rig.api_pods() == {"default/a"}
        attempt.cancel()
