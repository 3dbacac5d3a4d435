"""Direct-stream tickets (``agent.proto.tickets``, ``agent.pki.tickets``): minted by the master's
proxy identity, verified offline against the cluster CA, bound to one node, pod, action and
parameter set, times and single use; a ticket signed by any other key is refused."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.errors import TicketError
from agent.pki.core import PrivateKey, create_ca, generate_key, issue
from agent.pki.names import MASTERS_GROUP, NODE_CN_PREFIX, NODES_GROUP, PROXIES_GROUP
from agent.pki.tickets import Verifier, mint
from agent.proto import tickets
from agent.proto.routes import NODE_ROUTES
from agent.proto.tickets import CLOCK_SKEW_S, LIFETIME_S, ReplayCache, Ticket

NOW = 1_800_000_000.0  # the tickets' own times (claims are not checked by the verifier)
QUERY = {"command": ["sh", "-c", "id"], "container": ["app"]}


def signer(
    ca_key: PrivateKey, ca: x509.Certificate, groups: list[str], cn: str = "system:node-proxy"
) -> tuple[PrivateKey, bytes]:
    key = generate_key()
    cert = issue(ca_key, ca, key.public_key(), common_name=cn, groups=groups, lifetime_s=3600)
    return key, cert.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def cluster() -> tuple[PrivateKey, x509.Certificate]:
    return create_ca("test cluster CA")


@pytest.fixture(scope="module")
def proxy(cluster: tuple[PrivateKey, x509.Certificate]) -> tuple[PrivateKey, bytes]:
    return signer(*cluster, [PROXIES_GROUP])


def make(
    key: PrivateKey, der: bytes, *, pod: str = "web", action: str = "exec", query: object = None
) -> tuple[str, Ticket]:
    return mint(
        signer_key=key,
        signer_der=der,
        user="alice",
        groups=[MASTERS_GROUP],
        node="n1",
        namespace="default",
        pod=pod,
        action=action,
        query=QUERY if query is None else query,  # type: ignore[arg-type]
        now=NOW,
    )


def test_a_ticket_round_trips_through_the_verifier(
    cluster: tuple[PrivateKey, x509.Certificate], proxy: tuple[PrivateKey, bytes]
) -> None:
    token, ticket = make(*proxy)
    got = Verifier([cluster[1]]).verify(token, time.time())
    assert got == ticket
    assert (got.user, got.groups, got.node, got.pod) == ("alice", (MASTERS_GROUP,), "n1", "web")
    assert got.exp - got.iat == LIFETIME_S and len(got.jti) == 32
    assert token.startswith("nat1.") and len(token) < 2000
    # Two tickets for the same request are two tickets.
    assert make(*proxy)[1].jti != ticket.jti


@pytest.mark.parametrize(
    "who",
    ["another CA's proxy", "an administrator", "a node", "the proxy's cert, another key"],
)
def test_a_ticket_not_signed_by_the_masters_proxy_identity_is_refused(
    cluster: tuple[PrivateKey, x509.Certificate], proxy: tuple[PrivateKey, bytes], who: str
) -> None:
    if who == "another CA's proxy":
        key, der = signer(*create_ca("another cluster"), [PROXIES_GROUP])
    elif who == "an administrator":
        key, der = signer(*cluster, [MASTERS_GROUP], cn="admin")
    elif who == "a node":
        key, der = signer(*cluster, [NODES_GROUP], cn=NODE_CN_PREFIX + "n1")
    else:
        key, der = generate_key(), proxy[1]
    token, _ = make(key, der)
    with pytest.raises(TicketError, match=r"not signed by this cluster's master|not the master"):
        Verifier([cluster[1]]).verify(token, time.time())


def test_altered_claims_break_the_signature(
    cluster: tuple[PrivateKey, x509.Certificate], proxy: tuple[PrivateKey, bytes]
) -> None:
    token, ticket = make(*proxy)
    prefix, _, der, sig = token.split(".")
    forged = tickets.encode_claims(replace(ticket, pod="db"))
    with pytest.raises(TicketError, match="signature is not the master's"):
        Verifier([cluster[1]]).verify(
            ".".join((prefix, tickets.b64encode(forged), der, sig)), time.time()
        )


def test_an_expired_signer_certificate_is_refused_even_when_cached(
    cluster: tuple[PrivateKey, x509.Certificate], proxy: tuple[PrivateKey, bytes]
) -> None:
    verifier = Verifier([cluster[1]])
    token, _ = make(*proxy)
    verifier.verify(token, time.time())  # cached now
    cert = x509.load_der_x509_certificate(proxy[1])
    later = (cert.not_valid_after_utc + dt.timedelta(seconds=1)).timestamp()
    with pytest.raises(TicketError, match="not valid now"):
        verifier.verify(token, later)


def test_times() -> None:
    ticket = Ticket("0" * 32, "alice", (), "n1", "default", "web", "exec", "0" * 64, 1000, 1030)
    tickets.check_times(ticket, 1000 + LIFETIME_S + CLOCK_SKEW_S, not_before=900)
    with pytest.raises(TicketError, match="expired"):
        tickets.check_times(ticket, 1000 + LIFETIME_S + CLOCK_SKEW_S + 1, not_before=900)
    with pytest.raises(TicketError, match="not valid yet"):
        tickets.check_times(ticket, 1000 - CLOCK_SKEW_S - 1, not_before=900)
    with pytest.raises(TicketError, match="issued before this node started"):
        tickets.check_times(ticket, 1001, not_before=1001)


def test_a_ticket_allows_its_one_request_on_its_one_node(proxy: tuple[PrivateKey, bytes]) -> None:
    _, ticket = make(*proxy)
    good = "/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=id&container=app"
    # The query's order between parameters does not matter; within one, it does.
    same = "/v1/namespaces/default/pods/web/exec?container=app&command=sh&command=-c&command=id"
    for target in (good, same):
        tickets.check_request(ticket, NODE_ROUTES.match("POST", target), "n1")
    refused = {
        "another pod": ("POST", good.replace("/web/", "/db/"), "n1", "for pod default/web"),
        "another namespace": ("POST", good.replace("default", "kube"), "n1", "for pod"),
        "another command": ("POST", good.replace("=id", "=reboot"), "n1", "other exec param"),
        "arguments reordered": (
            "POST",
            good.replace("command=sh&command=-c", "command=-c&command=sh"),
            "n1",
            "other exec parameters",
        ),
        "stdin added": ("POST", good + "&stdin=1", "n1", "other exec parameters"),
        "another action": (
            "POST",
            "/v1/namespaces/default/pods/web/portforward?port=22",
            "n1",
            "is for exec, not portforward",
        ),
        "another node": ("POST", good, "n2", "is for node 'n1', not 'n2'"),
        "a JSON route": ("GET", "/v1/pods", "n1", "good for one exec"),
    }
    for why, (method, target, node, message) in refused.items():
        with pytest.raises(TicketError, match=message):
            tickets.check_request(ticket, NODE_ROUTES.match(method, target), node)
        assert why


def test_the_master_api_is_no_place_for_a_ticket(proxy: tuple[PrivateKey, bytes]) -> None:
    _, ticket = make(*proxy)
    target = "/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=id&container=app"
    with pytest.raises(TicketError):
        tickets.check_request(ticket, NODE_ROUTES.match("POST", target), None)


def test_the_replay_cache_refuses_a_second_use_until_expiry_and_is_bounded() -> None:
    def ticket(n: int, iat: int) -> Ticket:
        return Ticket(f"{n:032x}", "a", (), "n1", "d", "p", "exec", "0" * 64, iat, iat + 30)

    cache = ReplayCache(capacity=3)
    cache.use(ticket(1, 1000), 1000)
    with pytest.raises(TicketError, match="already used"):
        cache.use(ticket(1, 1000), 1010)
    cache.use(ticket(2, 1001), 1001)
    cache.use(ticket(3, 1002), 1002)
    with pytest.raises(TicketError, match="too many tickets"):
        cache.use(ticket(4, 1003), 1003)
    # Past the first one's expiry (+ skew) its slot is free again; a replay of it then would
    # fail its own expiry check (check_times) before reaching the cache.
    cache.use(ticket(4, 1036), 1036)
    assert len(cache) == 3


def test_parse_refuses_malformed_claims() -> None:
    good = {
        "v": 1, "jti": "a" * 32, "user": "alice", "groups": [MASTERS_GROUP], "node": "n1",
        "namespace": "default", "pod": "web", "action": "exec", "target": "b" * 64,
        "iat": 1000, "exp": 1030,
    }  # fmt: skip
    tickets.parse_claims(json.dumps(good).encode())
    bad: list[dict[str, object]] = [
        {"v": 2},
        {"v": True},
        {"jti": "A" * 32},
        {"jti": "a" * 31},
        {"target": "x"},
        {"groups": "system:masters"},
        {"groups": [""]},
        {"groups": ["g"] * 33},
        {"action": "attach"},
        {"iat": 1000, "exp": 1031},
        {"exp": 999},
        {"iat": True},
        {"node": "N1"},
        {"pod": "a/b"},
        {"namespace": "a.b"},
        {"user": "al\nice"},
        {"user": ""},
        {"extra": 1},
    ]
    for change in bad:
        with pytest.raises(TicketError):
            tickets.parse_claims(json.dumps({**good, **change}).encode())
    for raw in (b"", b"[]", b"\xff", b"{" * 5000, b'{"v": 1' + b" " * 5000 + b"}"):
        with pytest.raises(TicketError):
            tickets.parse_claims(raw)


def test_split_refuses_what_is_not_a_token() -> None:
    for token in ("", "nat1", "nat1...", "nat2.a.b.c", "nat1.a.b", "nat1.a.b.c.d", "nat1.*.b.c",
                  "nat1.a.b." + "A" * 200, "x" * 9000):  # fmt: skip
        with pytest.raises(TicketError):
            tickets.split(token)
