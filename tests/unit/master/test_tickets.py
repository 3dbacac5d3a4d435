"""The master's side of direct-stream tickets (``agent.master.tickets``, ``POST /v1/tickets``):
a ticket for a stream target is issued as the relay would authorize the same request (a viewer
never gets one for exec or port-forward), bound to the pod's node and the request's exact
parameters, verifiable with the cluster CA; targets that are not stream requests, bad bodies,
and a cluster with tickets off are refused with clear errors."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.aio.edge import ApiRequest
from agent.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    MethodNotAllowedError,
    NotFoundError,
)
from agent.master.tickets import Signer, TicketIssuer
from agent.pki.core import create_ca, generate_key, issue
from agent.pki.names import MASTERS_GROUP, PROXIES_GROUP, VIEWERS_GROUP
from agent.pki.tickets import Verifier
from agent.proto import tickets
from agent.proto.authz import Caller, CallerKind, Principal, Role
from agent.proto.routes import MASTER_ROUTES

CA_KEY, CA = create_ca("test cluster")
_KEY = generate_key()
SIGNER = Signer(
    _KEY,
    issue(
        CA_KEY, CA, _KEY.public_key(), common_name="system:node-proxy", groups=[PROXIES_GROUP],
        lifetime_s=3600,
    ).public_bytes(Encoding.DER),
)  # fmt: skip
ADMIN = Caller(Principal(Role.ADMIN, "root", (MASTERS_GROUP,)), CallerKind.ADMIN)
VIEWER = Caller(Principal(Role.VIEWER, "alice", (VIEWERS_GROUP,)), CallerKind.VIEWER)
FORWARD = "/v1/namespaces/default/pods/web/portforward?port=8080"


def issuer(*, enabled: bool = True) -> TicketIssuer:
    async def pod_node(namespace: str, pod: str) -> str:
        if pod != "web":
            raise NotFoundError(f"pod {namespace}/{pod} not found")
        return "n1"

    async def node_endpoint(node: str) -> tuple[str, int]:
        return ("fd00::1", 10250)

    return TicketIssuer(
        signer=SIGNER, pod_node=pod_node, node_endpoint=node_endpoint, enabled=lambda: enabled
    )


async def ask(
    who: Caller, body: object, *, enabled: bool = True, raw: bytes | None = None
) -> dict[str, object]:
    match = MASTER_ROUTES.match("POST", "/v1/tickets")
    data = raw if raw is not None else json.dumps(body).encode()
    response = await issuer(enabled=enabled).create(ApiRequest(match, who, {}, data))
    assert response.status == 200
    answer = json.loads(response.body)
    assert isinstance(answer, dict)
    return answer


async def test_an_admin_gets_a_ticket_bound_to_the_node_and_the_request() -> None:
    answer = await ask(ADMIN, {"method": "POST", "target": FORWARD})
    assert (answer["node"], answer["endpoint"]) == ("n1", "[fd00::1]:10250")
    token = answer["ticket"]
    assert isinstance(token, str)
    ticket = Verifier([CA]).verify(token, time.time())
    assert (ticket.user, ticket.groups, ticket.node) == ("root", (MASTERS_GROUP,), "n1")
    assert (ticket.namespace, ticket.pod, ticket.action) == ("default", "web", "portforward")
    assert ticket.target == tickets.target_digest(
        "default", "web", "portforward", {"port": ["8080"]}
    )
    assert answer["expiresAt"] == ticket.exp == ticket.iat + tickets.LIFETIME_S
    assert abs(ticket.iat - time.time()) < 60


async def test_a_viewer_gets_logs_tickets_only() -> None:
    logs = await ask(VIEWER, {"method": "GET", "target": "/v1/namespaces/default/pods/web/logs"})
    assert isinstance(logs["ticket"], str)
    for target, word in (
        ("/v1/namespaces/default/pods/web/exec?command=sh", "exec"),
        (FORWARD, "portforward"),
    ):
        with pytest.raises(ForbiddenError, match=f"'alice' may read logs but not {word}"):
            await ask(VIEWER, {"method": "POST", "target": target})


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        ({"method": "POST", "target": "/v1/pods"}, BadRequestError, "tickets are for exec"),
        ({"method": "GET", "target": FORWARD}, MethodNotAllowedError, "GET is not allowed"),
        ({"method": "PUT", "target": FORWARD}, BadRequestError, "method"),
        ({"method": "POST"}, BadRequestError, "target"),
        ({"method": "POST", "target": "x" * 9000}, BadRequestError, "target"),
        ({"method": "POST", "target": "/v1/namespaces/d/pods/a%2Fb/exec"}, BadRequestError, "pod"),
        (
            {"method": "POST", "target": FORWARD.replace("/web/", "/gone/")},
            NotFoundError,
            "not found",
        ),
    ],
)
async def test_what_is_not_a_stream_request_of_a_known_pod_is_refused(
    body: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        await ask(ADMIN, body)


async def test_a_body_that_is_not_a_json_object_is_400() -> None:
    with pytest.raises(BadRequestError):
        await ask(ADMIN, None, raw=b"[]")


async def test_tickets_off_in_the_cluster_is_409_after_authorization() -> None:
    with pytest.raises(ConflictError, match='direct_tickets = "never"'):
        await ask(ADMIN, {"method": "POST", "target": FORWARD}, enabled=False)
    # Authorization first: a viewer learns nothing about the policy for what it may not do.
    with pytest.raises(ForbiddenError):
        await ask(VIEWER, {"method": "POST", "target": FORWARD}, enabled=False)
