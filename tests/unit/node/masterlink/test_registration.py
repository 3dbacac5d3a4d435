"""Registration and the CA fetch go through the master client's edge: a master gone silent ends
them by a time-out, a hostile answer (deeply nested, too large) is an outage, never an exception
the link does not know (the defect: they called aiohttp directly, with no time-out, an unbounded
read and RecursionError uncaught)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.node.masterlink import client, registration
from agent.node.masterlink.identity import CA_BUNDLE_MAX_BYTES
from agent.node.masterlink.state import LinkCondition
from tests.unit.node.masterlink.rig import Rig, link_rig

QUICK_TIMEOUT_S = 0.3
# Far beyond any time-out these tests set: only a missing time-out reaches it.
HANG_DEADLINE_S = 20.0
DEEP = b"[" * 100_000 + b"]" * 100_000


async def an_outage(rig: Rig) -> None:
    """One attempt ends (it does not hang, nothing escapes it) as an outage, unregistered."""
    wait_s = await asyncio.wait_for(rig.link.attempt(), HANG_DEADLINE_S)
    assert 0 <= wait_s <= rig.link.backoff.ceiling_s
    assert rig.status.condition is LinkCondition.UNREACHABLE, rig.status.message
    assert not rig.identity.cert_path.exists()


@pytest.mark.parametrize(
    ("stalled", "approval"),
    [
        ("GET /v1/ca", False),
        ("POST /v1/registrations", False),
        ("GET /v1/registrations/", True),  # the long-poll
    ],
)
async def test_a_master_gone_silent_is_an_outage_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stalled: str, approval: bool
) -> None:
    monkeypatch.setattr(client, "REQUEST_TIMEOUT_S", QUICK_TIMEOUT_S)
    monkeypatch.setattr(registration, "POLL_WAIT_S", 0.0)
    monkeypatch.setattr(registration, "POLL_MARGIN_S", QUICK_TIMEOUT_S)
    async with link_rig(tmp_path) as rig:
        rig.master.approval_required = approval
        rig.master.stalled.add(stalled)
        await an_outage(rig)
        assert stalled in rig.status.message
        if approval:
            assert rig.master.record.registrations  # it did get as far as the poll


@pytest.mark.parametrize(
    ("path", "status", "body", "says"),
    [
        ("/v1/registrations", 200, DEEP, "not JSON"),
        ("/v1/registrations", 403, DEEP, "registration: 403"),  # still a refusal
        ("/v1/registrations", 200, b"\xff{", "not JSON"),
        ("/v1/registrations", 200, b"[1, 2]", "registration answered 200"),
        ("/v1/ca", 200, b"-" * (CA_BUNDLE_MAX_BYTES + 1), f"over {CA_BUNDLE_MAX_BYTES} bytes"),
    ],
)
async def test_a_hostile_answer_is_an_outage_or_a_refusal_never_a_crash(
    tmp_path: Path, path: str, status: int, body: bytes, says: str
) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.raw_answers[path] = (status, body)
        wait_s = await asyncio.wait_for(rig.link.attempt(), HANG_DEADLINE_S)
        assert wait_s >= 0
        expected = LinkCondition.REGISTRATION_DENIED if status == 403 else LinkCondition.UNREACHABLE
        assert rig.status.condition is expected, rig.status.message
        assert says in rig.status.message
        assert len(rig.status.message) < 1000  # an excerpt of a hostile body, never all of it
        assert not rig.identity.cert_path.exists()
