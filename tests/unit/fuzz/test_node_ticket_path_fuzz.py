"""The node's whole parse path for a ticket, fuzzed (hypothesis, fixed seed): what
``NodeApi.principal`` does with a ``node-agent-ticket`` header on a user's connection (the
holder's certificate, the verifier, the times, the node, the holder's name, the replay cache),
then the edge's ``check_request`` against any request target. ``test_tickets_fuzz`` holds the
verifier and the claims to the same property; this one adds the node's own steps and the
binding, so a step added between them is fuzzed too. Only our own errors (``AgentError``) come
out, and a ticket allows nothing but its one request."""

from __future__ import annotations

import time
from typing import Any, cast

from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st

from agent.errors import AgentError, TicketError
from agent.node.streaming.server import NodeApi
from agent.pki.core import create_ca, generate_key, issue
from agent.pki.names import MASTERS_GROUP, PROXIES_GROUP
from agent.pki.tickets import Verifier, mint
from agent.proto import tickets
from agent.proto.routes import NODE_ROUTES
from tests.unit.fuzz.inputs import SEED

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = time.time()  # the node's clock, fixed (the signer's validity is checked at it too)
# Tickets are minted a second later: a node refuses tickets issued before it started.
BOUND = "/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=id&stdin=1"

_CA_KEY, _CA = create_ca("node path fuzz")


def _cert(cn: str, groups: list[str]) -> tuple[Any, bytes]:
    key = generate_key()
    cert = issue(_CA_KEY, _CA, key.public_key(), common_name=cn, groups=groups, lifetime_s=3600)
    return key, cert.public_bytes(Encoding.DER)


_PROXY_KEY, _PROXY_DER = _cert("system:node-proxy", [PROXIES_GROUP])
_ALICE_DER = _cert("alice", [MASTERS_GROUP])[1]


def _node_api() -> NodeApi:
    api = NodeApi(cast(Any, None), "n1", "127.0.0.1:10250", clock=lambda: NOW)
    api._ca = [_CA]
    api._verifier = Verifier([_CA])
    return api


def _ticket(target: str) -> str:
    match = NODE_ROUTES.match("POST", target)
    if not match.route.stream:
        raise TicketError("not a stream route")
    token, _ = mint(
        signer_key=_PROXY_KEY, signer_der=_PROXY_DER, user="alice", groups=[MASTERS_GROUP],
        node="n1", namespace=match.param("namespace"), pod=match.param("pod"),
        action=match.route.pattern[-1], query=match.query, now=NOW + 1,  # not before the start
    )  # fmt: skip
    return token


_API = _node_api()


@seed(SEED)
@FUZZ
@given(st.text(st.characters(), max_size=3000))
def test_any_header_value_on_a_users_connection(text: str) -> None:
    try:
        _API.principal(_ALICE_DER, {tickets.HEADER: text})
    except TicketError:
        return
    raise AssertionError(f"accepted {text!r}")


_PATH_PART = st.text(st.sampled_from("abc-/.%?&=09webexcuti"), max_size=24)
_TARGET = st.one_of(
    st.builds(lambda tail: BOUND + tail, _PATH_PART),
    st.builds(lambda head, tail: head + BOUND[len(head) :] + tail, _PATH_PART, _PATH_PART),
    st.builds(
        lambda pod, action, query: f"/v1/namespaces/default/pods/{pod}/{action}?{query}",
        st.sampled_from(["web", "web2", "Web", "w%65b"]),
        st.sampled_from(["exec", "portforward", "logs", "attach", "exec/"]),
        st.text(st.sampled_from("command=shidc&-+%20stdin1typort80"), max_size=60),
    ),
)


@seed(SEED)
@FUZZ
@given(_TARGET)
def test_a_ticket_allows_its_one_request_and_nothing_else(target: str) -> None:
    api = _node_api()  # a replay cache of its own: the ticket is fresh here
    principal = api.principal(_ALICE_DER, {tickets.HEADER: _ticket(BOUND)})
    assert principal.ticket is not None
    try:
        match = NODE_ROUTES.match("POST", target)
    except AgentError:
        return  # not a request the node serves: refused before any ticket is looked at
    try:
        tickets.check_request(principal.ticket, match, "n1")
    except TicketError:
        return
    bound = NODE_ROUTES.match("POST", BOUND)
    assert (match.route, match.params, dict(match.query)) == (
        bound.route,
        bound.params,
        dict(bound.query),
    )


@seed(SEED)
@FUZZ
@given(_TARGET)
def test_a_ticket_for_any_target_is_used_once(target: str) -> None:
    try:
        token = _ticket(target)
        api = _node_api()
        api.principal(_ALICE_DER, {tickets.HEADER: token})
    except AgentError:  # not a stream route, or names the claims refuse
        assume(False)
        return
    try:
        api.principal(_ALICE_DER, {tickets.HEADER: token})
    except TicketError as exc:
        assert "already used" in str(exc)
        return
    raise AssertionError("a ticket was accepted twice")
