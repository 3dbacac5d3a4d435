"""Tickets as a node receives them, fuzzed (hypothesis, fixed seed): any header value, any
claims, and real tokens cut or with a byte changed. The verifier raises ``TicketError`` (403)
and nothing else, and accepts nothing but the master's tickets."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from agent.errors import TicketError
from agent.pki.core import create_ca, generate_key, issue
from agent.pki.names import PROXIES_GROUP
from agent.pki.tickets import Verifier, mint
from agent.proto import tickets
from tests.unit.fuzz.inputs import SEED

FUZZ = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_CA_KEY, _CA = create_ca("fuzz cluster")
_KEY = generate_key()
_DER = issue(
    _CA_KEY, _CA, _KEY.public_key(), common_name="p", groups=[PROXIES_GROUP], lifetime_s=3600
).public_bytes(Encoding.DER)
_VERIFIER = Verifier([_CA])
_TOKEN, _TICKET = mint(
    signer_key=_KEY, signer_der=_DER, user="alice", groups=["system:masters"], node="n1",
    namespace="default", pod="web", action="portforward", query={"port": ["80"]}, now=1e9,
)  # fmt: skip


def _verify(token: str) -> tickets.Ticket | None:
    try:
        return _VERIFIER.verify(token, time.time())
    except TicketError:
        return None


@seed(SEED)
@FUZZ
@given(st.text(st.characters(), max_size=3000))
def test_any_header_value(text: str) -> None:
    assert _verify(text) is None


@seed(SEED)
@FUZZ
@given(st.integers(0, len(_TOKEN) - 1), st.characters(codec="ascii"))
def test_a_real_token_with_one_character_changed(at: int, char: str) -> None:
    token = _TOKEN[:at] + char + _TOKEN[at + 1 :]
    got = _verify(token)
    # Base64's last character may carry unused bits: the same bytes decode, the same ticket.
    assert got is None or got == _TICKET


@seed(SEED)
@FUZZ
@given(st.integers(0, len(_TOKEN)))
def test_a_real_token_cut(at: int) -> None:
    assert _verify(_TOKEN[:at]) is None or at == len(_TOKEN)


_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=40),
    st.sampled_from(["exec", "n1", "default", "a" * 32, "b" * 64, 1000, 1030]),
)  # fmt: skip
_json: Any = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from([*sorted(tickets._FIELDS), "x"]), inner, max_size=12),
    ),
    max_leaves=40,
)


@seed(SEED)
@FUZZ
@given(_json)
def test_any_claims(obj: Any) -> None:
    data = json.dumps(obj).encode()
    try:
        tickets.parse_claims(data)
    except TicketError:
        return
    # Accepted claims are well formed: they encode back to the same ticket.
    again = tickets.parse_claims(tickets.encode_claims(tickets.parse_claims(data)))
    assert again == tickets.parse_claims(data)


def test_the_fuzzed_token_is_good() -> None:
    assert _verify(_TOKEN) == _TICKET
    with pytest.raises(TicketError):
        _VERIFIER.verify(_TOKEN + "A", time.time())
