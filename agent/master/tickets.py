"""Direct-stream tickets, the master's side: ``POST /v1/tickets`` (issue 20 item 3).

nodectl asks for a ticket for one stream request (``{"method", "target"}``: the exec,
port-forward or logs request it will send the node) and gets ``{node, endpoint, ticket,
expiresAt}``. The master authorizes the target exactly as it would authorize the same request
sent to its relay (the route table, the authorization table: a viewer gets tickets for logs only,
never for exec or port-forward), resolves the pod's node and its API endpoint, and signs a ticket
bound to the user, the node, the pod, the action with its exact parameters, for
``agent.proto.tickets.LIFETIME_S`` seconds, usable once (``agent.pki.tickets``: signed with the
streaming proxy's identity). Every issue is logged with the ticket's id (never the token).
``[master] direct_tickets = "never"`` turns issuing off (409: nodectl uses the relay).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.aio.edge import ApiRequest, ApiResponse, json_response
from agent.aio.logs import kv
from agent.errors import BadRequestError, ConflictError, ForbiddenError
from agent.pki.core import PrivateKey, certs_from_pem, key_from_pem
from agent.pki.tickets import mint
from agent.proto.authz import Decision, decide, refusal
from agent.proto.routes import MASTER_ROUTES
from agent.proto.tickets import MAX_TOKEN_CHARS

log = logging.getLogger(__name__)

MAX_TARGET_CHARS = MAX_TOKEN_CHARS  # a request target nodectl builds: a command line's worth


@dataclass(frozen=True, slots=True)
class Signer:
    key: PrivateKey
    cert_der: bytes


def read_signer(cert: Path, key: Path) -> Signer:
    """Blocking (reads files): the proxy identity's certificate and key, for signing."""
    return signer_of(certs_from_pem(cert.read_bytes())[0], key_from_pem(key.read_bytes()))


class TicketIssuer:
    def __init__(
        self,
        *,
        signer: Signer,
        pod_node: Callable[[str, str], Awaitable[str]],
        node_endpoint: Callable[[str], Awaitable[tuple[str, int]]],
        enabled: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._pod_node = pod_node
        self._node_endpoint = node_endpoint
        self._enabled = enabled
        self._clock = clock

    async def create(self, request: ApiRequest) -> ApiResponse:
        body = request.json()
        method, target = body.get("method"), body.get("target")
        if method not in ("GET", "POST"):
            raise BadRequestError('method: expected "POST" (exec, port-forward) or "GET" (logs)')
        if not isinstance(target, str) or not target or len(target) > MAX_TARGET_CHARS:
            raise BadRequestError(
                f"target: expected a request target of 1..{MAX_TARGET_CHARS} chars"
            )
        match = MASTER_ROUTES.match(method, target)
        if not match.route.stream:
            raise BadRequestError(
                f"target {match.route.method} {match.path}: tickets are for exec, port-forward "
                "and logs only"
            )
        if decide(match.route.name, request.caller.kind) is not Decision.ALLOW:
            raise ForbiddenError(refusal(match, request.caller, None))
        if not self._enabled():
            raise ConflictError(
                'direct tickets are off in this cluster ([master] direct_tickets = "never"): '
                "use the master's relay"
            )
        namespace, pod = match.param("namespace"), match.param("pod")
        node = await self._pod_node(namespace, pod)
        host, port = await self._node_endpoint(node)
        who = request.principal
        action = match.route.pattern[-1]
        token, ticket = mint(
            signer_key=self._signer.key,
            signer_der=self._signer.cert_der,
            user=who.name,
            groups=who.groups,
            node=node,
            namespace=namespace,
            pod=pod,
            action=action,
            query=match.query,
            now=self._clock(),
        )
        log.info(
            "stream ticket issued",
            extra=kv(
                who=who.name,
                ticket=ticket.short_id,
                node=node,
                pod=f"{namespace}/{pod}",
                action=action,
            ),
        )
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return json_response(
            {"node": node, "endpoint": endpoint, "ticket": token, "expiresAt": ticket.exp}
        )


def signer_of(cert: x509.Certificate, key: PrivateKey) -> Signer:
    return Signer(key, cert.public_bytes(Encoding.DER))
