"""Registration and the CA fetch go through the master client's edge: a master gone silent ends
them by a time-out, a hostile answer (deeply nested, too large) is an outage, never an exception
the link does not know (the defect: they called aiohttp directly, with no time-out, an unbounded
read and RecursionError uncaught)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from agent.errors import MasterUnavailableError
from agent.node.masterlink import client, registration
from agent.node.masterlink.identity import CA_BUNDLE_MAX_BYTES
from agent.node.masterlink.state import LinkCondition
from tests.unit.node.asyncwait import until
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


# -- join tokens and the registration state (<state_dir>/registration.json) ---------------------

TOKEN = "abc123.0123456789abcdef"


async def registered(rig: Rig) -> None:
    """One attempt registers and connects; then it is ended (the session would run on)."""
    attempt = asyncio.create_task(rig.link.attempt())
    try:
        await until(
            lambda: rig.status.condition is LinkCondition.CONNECTED or attempt.done(), "connected"
        )
        assert not attempt.done(), attempt.result()
    finally:
        attempt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attempt


async def test_the_join_token_goes_with_the_registration_and_the_state_says_registered(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state" / registration.STATE_FILE
    options = {"token": TOKEN, "state_file": state}
    async with link_rig(tmp_path, registrar_options=options) as rig:
        await registered(rig)
        [body] = rig.master.record.registrations
        assert body["token"] == TOKEN
        assert rig.identity.cert_path.exists()
        recorded = registration.read_state(state)
        assert recorded is not None and recorded["phase"] == registration.REGISTERED
        assert recorded["master"] == rig.master.url
        assert oct(state.stat().st_mode & 0o777) == "0o600"


async def test_a_refusal_is_recorded_with_its_reason(tmp_path: Path) -> None:
    state = tmp_path / "state" / registration.STATE_FILE
    reason = "no trust rule admits this node: token: join token abc123 expired at 2027-01-16"
    async with link_rig(tmp_path, registrar_options={"token": TOKEN, "state_file": state}) as rig:
        rig.master.registration = lambda _n: (403, {"status": "Denied", "reason": reason})
        await asyncio.wait_for(rig.link.attempt(), HANG_DEADLINE_S)
        assert rig.status.condition is LinkCondition.REGISTRATION_DENIED
        assert reason in rig.status.message
        recorded = registration.read_state(state)
        assert recorded is not None
        assert (recorded["phase"], recorded["reason"], recorded["status"]) == (
            registration.DENIED,
            reason,
            403,
        )
        assert TOKEN not in state.read_text()


async def test_a_token_file_is_read_at_each_attempt_and_a_loosened_one_is_not_sent(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state" / registration.STATE_FILE
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    options = {"token_file": token_file, "state_file": state}
    async with link_rig(tmp_path, registrar_options=options) as rig:
        await asyncio.wait_for(rig.link.attempt(), HANG_DEADLINE_S)
        assert rig.status.condition is LinkCondition.REGISTRATION_DENIED
        assert "chmod 600" in rig.status.message
        assert rig.master.record.registrations == []  # nothing was sent
        recorded = registration.read_state(state)
        assert recorded is not None and "mode 0644" in recorded["reason"]
        token_file.chmod(0o600)
        await registered(rig)
        assert [b["token"] for b in rig.master.record.registrations] == [TOKEN]


@pytest.mark.parametrize(
    ("cause", "with_cert", "hinted"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), True, True),
        (OSError("Server disconnected"), True, True),
        (TimeoutError(), True, False),  # a master gone silent is not a refused certificate
        (None, True, False),  # a 5xx: the master answered
        (ConnectionResetError(104, "Connection reset by peer"), False, False),
    ],
)
async def test_a_connection_ended_while_presenting_the_fleet_certificate_says_why(
    tmp_path: Path, cause: BaseException | None, with_cert: bool, hinted: bool
) -> None:
    """The master refuses a fleet certificate from a CA not in its client_ca_file in the TLS
    handshake, which a TLS 1.3 client sees only as the connection ending: the outage names the
    certificate and the likely reason (tests/integration/test_fleet_ca.py shows it for real)."""
    cert = tmp_path / "fleet.crt"
    options = {"bootstrap_cert": cert, "bootstrap_key": tmp_path / "fleet.key"}
    async with link_rig(tmp_path, registrar_options=options if with_cert else None) as rig:
        failure = MasterUnavailableError("POST /v1/registrations: Server disconnected")
        failure.__cause__ = cause
        said = str(rig.registrar._bootstrap_refusal(failure))
    assert said.startswith("POST /v1/registrations: Server disconnected")
    assert ("does not trust its issuer" in said) is hinted, said
    assert (str(cert) in said) is hinted
