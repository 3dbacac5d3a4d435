"""The lease carries the node's usage (``nodectl top``'s figures) whenever a new sample was
taken, and nothing about usage otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.node.masterlink.lease import LeaseKeeper
from tests.unit.node.masterlink.fakemaster import NODE
from tests.unit.node.masterlink.rig import FixedFacts, link_rig

SAMPLE = {"window": 5.0, "node": {"cpuMillis": 250, "memoryBytes": 1 << 30}, "pods": []}


class Samples:
    """What agent.node.usage.UsageSampler.report answers: a sample when one is due, or None."""

    def __init__(self, *answers: dict[str, Any] | None) -> None:
        self.answers = list(answers)

    async def report(self) -> dict[str, Any] | None:
        return self.answers.pop(0)


async def test_each_new_sample_rides_along_once(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig, rig.session() as session:
        samples = Samples(SAMPLE, None, {**SAMPLE, "window": 5.5})
        lease = LeaseKeeper(
            NODE,
            FixedFacts(),
            conditions=lambda: [],
            sleep=rig.sleeps.park,
            clock=rig.clock,
            usage=samples,
        )
        leases = rig.master.record.leases
        await lease.renew(session)
        assert leases[-1]["usage"] == SAMPLE
        await lease.renew(session)
        assert "usage" not in leases[-1]  # no new sample: nothing to send
        await lease.renew(session)
        assert leases[-1]["usage"]["window"] == 5.5
        assert samples.answers == []
