"""The link's sequence against the fake master: registration (200, 202 → poll, 403/409
denied, CA pin mismatch), outage and back-off, a rejected identity, certificate rotation, and
the typed condition health decides on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import (
    IdentityRejectedError,
    MasterUnavailableError,
    RegistrationDeniedError,
    TaskEndedError,
)
from agent.node.health.state import NodeHealth, RuntimeHealth
from agent.node.masterlink.link import most_telling
from agent.node.masterlink.registration import PENDING_MESSAGE
from agent.node.masterlink.state import LinkCondition, LinkStatus
from agent.pki.core import certs_from_pem, generate_key
from tests.unit.node.asyncwait import until
from tests.unit.node.masterlink.fakemaster import FakeMaster, pod_manifest
from tests.unit.node.masterlink.rig import Rig, link_rig

WRONG_PIN = "sha256:" + "0" * 64


def health_of(status: LinkStatus) -> NodeHealth:
    health = NodeHealth(
        runtime=RuntimeHealth(up=True, error=""), checkpoint_error=lambda: "", link=status
    )
    health.ready = True
    return health


async def connect(rig: Rig) -> asyncio.Task[float]:
    """Start an attempt and wait until its session is up (its first lease renewal)."""
    leases = len(rig.master.record.leases)
    attempt = asyncio.create_task(rig.link.attempt())
    await until(
        lambda: (
            (
                len(rig.master.record.leases) > leases
                and rig.status.condition is LinkCondition.CONNECTED
            )
            or attempt.done()
        ),
        "connected",
    )
    assert not attempt.done(), attempt.result()
    return attempt


async def test_open_registration_then_a_working_session(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        health = health_of(rig.status)
        assert rig.status.condition is LinkCondition.NOT_CONTACTED
        assert health.problems() == []  # not contacted yet is not the node's problem
        attempt = await connect(rig)
        (request,) = rig.master.record.registrations
        assert request["nodeName"] == "n1" and request["labels"] == {"zone": "a"}
        assert request["addresses"] == ["10.0.0.7"] and request["capacity"] == {"pods": "110"}
        assert "BEGIN CERTIFICATE REQUEST" in request["csr"]
        assert rig.identity.key_path.stat().st_mode & 0o777 == 0o600
        cert = certs_from_pem(rig.identity.cert_path.read_bytes())[0]
        assert cert.issuer == rig.master.ca_cert.subject
        assert rig.node_api.running and rig.node_api.started == 1
        assert rig.status.registered and rig.status.message == ""
        lease = rig.master.record.leases[0]
        assert lease["status"]["conditions"] == rig.conditions
        assert health.problems() == []
        attempt.cancel()

        # The next attempt uses the stored identity: no second registration, the node API
        # gets the certificate reloaded rather than a second listener.
        attempt = await connect(rig)
        assert len(rig.master.record.registrations) == 1
        assert rig.node_api.started == 1 and rig.node_api.reloads == 1
        assert rig.master.record.ca_fetches == 1  # the CA is pinned on disk
        attempt.cancel()


async def test_pending_approval_is_polled_and_shown_in_health(tmp_path: Path) -> None:
    master = FakeMaster(tmp_path / "master")
    seen: list[tuple[LinkCondition, str]] = []

    async with link_rig(tmp_path, master=master) as rig:

        def answer(n: int) -> tuple[int, dict[str, Any]]:
            if n > 1:
                seen.append((rig.status.condition, rig.status.message))
            if n < 3:
                return 202, {"requestId": "req-1"}
            return 200, {"admittedBy": "admin"}

        master.registration = answer
        attempt = await connect(rig)
        assert master.record.polls == 2
        assert seen == [(LinkCondition.PENDING_APPROVAL, PENDING_MESSAGE)] * 2
        assert health_of(rig.status).problems() == []  # approved and connected now
        attempt.cancel()


async def test_pending_approval_problem_text(tmp_path: Path) -> None:
    status = LinkStatus()
    status.set(LinkCondition.PENDING_APPROVAL, PENDING_MESSAGE)
    assert health_of(status).problems() == ["registration: pending approval by an administrator"]


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        (403, {"reason": "10.0.0.7 is not in an allowed CIDR"}, "registration: 403: 10.0.0.7"),
        (409, {"error": {"message": "name n1 is bound to another key"}}, "registration: 409"),
    ],
)
async def test_a_denied_registration_retries_slowly_and_says_why(
    tmp_path: Path, code: int, body: dict[str, Any], expected: str
) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.registration = lambda n: (code, body)
        waits = [await rig.link.attempt() for _ in range(20)]
        assert rig.status.condition is LinkCondition.REGISTRATION_DENIED
        assert rig.status.message.startswith(expected)
        assert health_of(rig.status).problems() == [rig.status.message]
        assert all(0 <= w <= 8.0 for w in waits)  # twice the reconnect cap of 4 s
        assert max(waits) > 4.0  # slower than the reconnect back-off could ever be
        assert not rig.identity.cert_path.exists()


async def test_a_ca_that_does_not_match_the_pin_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path, pins=(WRONG_PIN,)) as rig:
        wait_s = await rig.link.attempt()
        assert 0 <= wait_s <= 8.0
        assert rig.status.condition is LinkCondition.CA_REJECTED
        assert "does not match any pinned hash" in rig.status.message
        assert rig.status.message.startswith("master: ")
        assert health_of(rig.status).problems() == [rig.status.message]
        assert rig.master.record.registrations == []
        assert not (rig.identity.pki_dir / "ca.crt").exists()


async def test_trust_on_first_use_without_a_pin(tmp_path: Path) -> None:
    async with link_rig(tmp_path, pins=()) as rig:
        attempt = await connect(rig)
        assert (rig.identity.pki_dir / "ca.crt").read_bytes() == rig.master.ca_pem
        attempt.cancel()


async def test_outage_backs_off_with_a_growing_ceiling_and_pods_keep_running(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.add_pod(pod_manifest("a", uid="uid-a"), notify=False)
        attempt = await connect(rig)
        await until(lambda: rig.api_pods() == {"default/a"}, "pod a desired")
        await until(lambda: rig.pods.workers["uid-a"].synced_once.is_set(), "pod a's first sync")
        running = await rig.app_containers()
        assert running

        await rig.master.stop()  # the master goes away: the session ends
        wait_s = await asyncio.wait_for(attempt, 5)
        assert rig.status.condition is LinkCondition.UNREACHABLE
        assert rig.status.message.startswith("master: unreachable: ")
        assert health_of(rig.status).problems() == []  # the node coasts
        ceilings = []
        for _ in range(6):
            ceiling = rig.link.backoff.ceiling_s
            assert 0 <= wait_s <= ceiling
            ceilings.append(ceiling)
            rig.clock.now += 1.0
            wait_s = await rig.link.attempt()
        assert ceilings == [0.5, 1.0, 2.0, 3.0, 4.0, 4.0]  # grows with the outage, capped
        assert rig.api_pods() == {"default/a"}
        assert await rig.app_containers() == running

        await rig.master.start()  # back on the same port
        attempt = await connect(rig)
        assert rig.link.backoff.ceiling_s == 0.5  # a working link ends the outage
        attempt.cancel()


async def test_a_master_answering_5xx_is_an_outage(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        attempt = await connect(rig)
        attempt.cancel()
        rig.master.unavailable = True
        wait_s = await rig.link.attempt()
        assert 0 <= wait_s <= 0.5
        assert rig.status.condition is LinkCondition.UNREACHABLE
        assert "503" in rig.status.message


async def test_a_rejected_identity_registers_again(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        attempt = await connect(rig)
        attempt.cancel()
        old_cert = rig.identity.cert_path.read_bytes()
        rig.watch.revision = 7
        rig.master.reject_identity = True
        wait_s = await rig.link.attempt()
        assert 0 <= wait_s <= 0.5
        assert rig.status.condition is LinkCondition.IDENTITY_REJECTED
        assert health_of(rig.status).problems() == []
        assert not rig.identity.cert_path.exists()
        assert rig.watch.revision is None  # a new identity lists before watching

        rig.master.reject_identity = False
        attempt = await connect(rig)
        assert len(rig.master.record.registrations) == 2
        assert rig.identity.cert_path.read_bytes() != old_cert
        attempt.cancel()


async def test_the_certificate_is_rotated_when_due_and_the_link_reconnects(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path, rotation_sleep="quick") as rig:
        attempt = asyncio.create_task(rig.link.attempt())
        wait_s = await asyncio.wait_for(attempt, 5)
        assert rig.master.record.rotations == 1
        assert "rotated certificate" in rig.status.message
        assert 0 <= wait_s <= 0.5
        assert rig.identity.cert_path.exists()
        key_before = rig.identity.key_path.read_bytes()
        # The next session reconnects with the rotated identity and reloads the node API.
        attempt = asyncio.create_task(rig.link.attempt())
        await asyncio.wait_for(attempt, 5)
        assert rig.node_api.reloads >= 1
        assert rig.identity.key_path.read_bytes() != key_before  # rotated again: new key
        assert len(rig.master.record.registrations) == 1


async def test_a_403_to_a_request_made_with_the_old_certificate_does_not_undo_a_rotation(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path, rotation_sleep="quick") as rig:
        rig.master.hold_rotation = asyncio.Event()
        attempt = asyncio.create_task(rig.link.attempt())
        await until(lambda: rig.master.record.rotations == 1, "rotation issued, answer held")
        key_before = rig.identity.key_path.read_bytes()
        # A pod arrives: its status report goes out with the certificate the master has just
        # superseded, and is refused.
        rig.master.add_pod(pod_manifest("p"))
        await until(
            lambda: bool(rig.master.record.refused) or attempt.done(),
            "a request with the old certificate refused",
        )
        assert rig.master.record.refused[0][1] == 403
        rig.master.hold_rotation.set()
        await asyncio.wait_for(attempt, 10)
        assert rig.status.condition is LinkCondition.UNREACHABLE, rig.status.message
        assert "rotated certificate" in rig.status.message
        assert rig.identity.key_path.read_bytes() != key_before
        assert await rig.identity.has_valid_cert(rig.master.ca_pem)  # the rotated pair
        # The next session works with it (and rotates again, its rotation being due at once
        # here): no registration, so no approval needed.
        rig.master.hold_rotation = None
        leases = len(rig.master.record.leases)
        await asyncio.wait_for(rig.link.attempt(), 10)
        assert len(rig.master.record.leases) > leases
        assert "rotated certificate" in rig.status.message
        assert len(rig.master.record.registrations) == 1


@pytest.mark.parametrize("kind", ["for another key", "without a certificate"])
async def test_a_rotation_answer_that_is_not_our_new_certificate_keeps_the_current_pair(
    tmp_path: Path, kind: str
) -> None:
    async with link_rig(tmp_path, rotation_sleep="quick") as rig:
        other = rig.master._sign("n1", generate_key().public_key())  # (superseding ours)
        answer = {"certificate": other} if kind == "for another key" else {"caBundle": "x"}
        rig.master.raw_answers["/v1/nodes/n1/certificate"] = (200, json.dumps(answer).encode())
        rig.master.keys.clear()  # the registration below binds the node's own key again
        wait_s = await asyncio.wait_for(rig.link.attempt(), 10)
        assert 0 <= wait_s <= 0.5
        assert rig.status.condition is LinkCondition.UNREACHABLE
        assert "certificate rotation" in rig.status.message
        assert await rig.identity.has_valid_cert(rig.master.ca_pem)  # still the registered pair
        assert (
            certs_from_pem(rig.identity.cert_path.read_bytes())[0]
            != certs_from_pem(other.encode())[0]
        )


async def test_start_and_stop_as_a_manager(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        await rig.link.start()
        await until(lambda: rig.status.connected, "connected")
        await rig.link.stop()
        assert not rig.node_api.running and rig.node_api.stopped == 1


def test_most_telling_prefers_a_bug_then_a_rejected_identity() -> None:
    unavailable = MasterUnavailableError("down")
    rejected = IdentityRejectedError("401")
    ended = TaskEndedError("returned")
    other = RegistrationDeniedError("no")
    assert most_telling(BaseExceptionGroup("g", [unavailable, rejected])) is rejected
    assert most_telling(BaseExceptionGroup("g", [rejected, ExceptionGroup("h", [ended])])) is ended
    assert most_telling(BaseExceptionGroup("g", [other])) is other
    assert most_telling(BaseExceptionGroup("g", [other, unavailable])) is unavailable


def test_status_conditions_are_typed() -> None:
    status = LinkStatus()
    assert not status.connected and not status.refused
    for condition in LinkCondition:
        status.set(condition, "x")
        assert status.connected is (condition is LinkCondition.CONNECTED)
        assert status.refused is (
            condition
            in (
                LinkCondition.PENDING_APPROVAL,
                LinkCondition.REGISTRATION_DENIED,
                LinkCondition.CA_REJECTED,
                LinkCondition.NOT_THE_MASTER,
            )
        )
