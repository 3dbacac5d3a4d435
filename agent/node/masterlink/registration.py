"""Registration: a CSR and the node's facts to ``POST /v1/registrations``; the certificate the
master issues is stored as the node's identity.

200 carries the certificate. 202 means an administrator must approve: the request is polled
(long-poll, ``POLL_WAIT_S``) and the link's condition says it is pending. 403/409 is a refusal
(the trust policy, a name held by another key): :class:`RegistrationDeniedError`, which the link
retries slowly. A fleet CA's machine identity, when configured, is presented for the
client-certificate trust rule, and a join token (``token`` or ``token_file``, read again at each
attempt) for the token rule: both for registration only, which a node holding a valid
certificate never does again (renewals and reconnects use the certificate), so a token deleted
or expired after the node joined changes nothing for it. The token is never logged.

Each outcome is written to ``<state_dir>/registration.json`` (0600, :data:`STATE_FILE`): the
phase (``Registered``, ``Pending``, ``Denied``), the master's reason for a refusal (which
never holds the token's secret: the master does not echo it), the master's URL and the time.
It is the node's registration state for ``node-agent doctor`` and people; the link's condition
in health says the same in memory.
"""

from __future__ import annotations

import functools
import json
import logging
import reprlib
import socket
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.aio.bridge import ThreadBridge
from agent.aio.logs import kv
from agent.config import read_token_file
from agent.errors import ConfigError, MasterUnavailableError, RegistrationDeniedError
from agent.node.masterlink.client import MasterClient, MasterSession, error_message
from agent.node.masterlink.facts import NodeFacts
from agent.node.masterlink.identity import NodeIdentity, tls_context
from agent.node.masterlink.state import LinkCondition, LinkStatus
from agent.pki.core import write_private

log = logging.getLogger(__name__)

POLL_WAIT_S = 30.0
POLL_MARGIN_S = 10.0  # how much longer than POLL_WAIT_S a poll's answer may take to arrive
# Error statuses registration tells apart itself: 403/409 are refusals with a reason; 401 is
# not (registration needs no certificate), so it counts as an outage, retried with back-off.
_ANSWERED = (401, 403, 409)
PENDING_MESSAGE = "registration: pending approval by an administrator"
STATE_FILE = "registration.json"
REGISTERED, PENDING, DENIED = "Registered", "Pending", "Denied"


def write_state(path: Path, phase: str, master: str, **details: object) -> None:
    """Record the registration's latest outcome (blocking; atomic, 0600)."""
    state = {
        "phase": phase,
        "master": master,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **details,
    }
    write_private(path, json.dumps(state, sort_keys=True).encode() + b"\n")


def read_state(path: Path) -> dict[str, Any] | None:
    """The recorded registration state (blocking): None when the node never registered."""
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


class Registrar:
    def __init__(
        self,
        identity: NodeIdentity,
        facts: NodeFacts,
        client: MasterClient,
        bridge: ThreadBridge,
        status: LinkStatus,
        *,
        labels: dict[str, str],
        bootstrap_cert: Path | None = None,
        bootstrap_key: Path | None = None,
        token: str | None = None,
        token_file: Path | None = None,
        state_file: Path | None = None,
    ) -> None:
        self._identity = identity
        self._facts = facts
        self._client = client
        self._bridge = bridge
        self._status = status
        self._labels = labels
        self._bootstrap_cert = bootstrap_cert
        self._bootstrap_key = bootstrap_key
        self._token = token
        self._token_file = token_file
        self._state_file = state_file

    async def _note(self, phase: str, **details: object) -> None:
        if self._state_file is not None:
            await self._bridge.run(
                functools.partial(
                    write_state, self._state_file, phase, self._client.base_url, **details
                )
            )

    async def _join_token(self) -> str | None:
        if self._token_file is None:
            return self._token
        try:
            return await self._bridge.run(read_token_file, self._token_file)
        except ConfigError as exc:  # the file changed since start-up: say so, retry slowly
            await self._note(DENIED, reason=str(exc), status=0)
            raise RegistrationDeniedError(str(exc)) from None

    async def _request_body(self) -> dict[str, Any]:
        name = self._identity.node_name
        addresses = await self._facts.addresses()
        hostname = socket.gethostname().lower()
        key_pem = await self._identity.ensure_key()
        csr = self._identity.csr(key_pem, [name, hostname, *addresses])
        body: dict[str, Any] = {
            "nodeName": name,
            "csr": csr.decode(),
            "addresses": addresses,
            "hostname": hostname,
            "capacity": await self._facts.capacity(),
            "labels": dict(self._labels),
            "agentVersion": __version__,
        }
        token = await self._join_token()
        if token is not None:
            body["token"] = token
        return body

    async def register(self, ca_pem: bytes) -> None:
        """Register and store the issued certificate; raises RegistrationDeniedError on a
        refusal, MasterUnavailableError on anything else that went wrong."""
        body = await self._request_body()
        tls = await self._bridge.run(
            functools.partial(
                tls_context,
                ca_pem,
                cert_file=self._bootstrap_cert,
                key_file=self._bootstrap_key,
            )
        )
        async with self._client.session(tls) as session:
            try:
                status, answer = await self._post_and_poll(session, body)
            except MasterUnavailableError as exc:
                raise self._bootstrap_refusal(exc) from exc
        if status in (403, 409):
            reason = answer.get("reason")
            if not isinstance(reason, str) or not reason:
                reason = error_message(answer)
            await self._note(DENIED, reason=reason, status=status)
            raise RegistrationDeniedError(f"{status}: {reason}")
        certificate = answer.get("certificate")
        if status != 200 or not isinstance(certificate, str):
            raise MasterUnavailableError(f"registration answered {status}: {reprlib.repr(answer)}")
        await self._identity.store_cert(certificate.encode())
        await self._note(REGISTERED, admittedBy=str(answer.get("admittedBy", "")))
        log.info(
            "registered with the master",
            extra=kv(master=self._client.base_url, admitted_by=answer.get("admittedBy")),
        )

    def _bootstrap_refusal(self, exc: MasterUnavailableError) -> MasterUnavailableError:
        """``exc`` with the likely reason when the connection ended while this node presented
        its fleet certificate: the master checks that certificate's issuer against its
        ``client_ca_file`` in the TLS handshake, before any HTTP answer can carry a reason, and
        a TLS 1.3 client learns of the refusal only as the connection ending (a reset, a
        "Server disconnected") at its first read. A time-out or a 5xx is left as it is."""
        cause = exc.__cause__
        if self._bootstrap_cert is None or cause is None or isinstance(cause, TimeoutError):
            return exc
        return MasterUnavailableError(
            f"{exc} (the master ended the connection while this node presented bootstrap_cert "
            f"{self._bootstrap_cert}: most likely the master does not trust its issuer - the "
            "CA in the master's client_ca_file must have signed it, it must be valid now and "
            "allow clientAuth; see certs/README.md)"
        )

    async def _post_and_poll(
        self, session: MasterSession, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        status, answer = await session.exchange("POST", "/v1/registrations", body, keep=_ANSWERED)
        while status == 202:
            self._status.set(LinkCondition.PENDING_APPROVAL, PENDING_MESSAGE)
            request_id = _as_object(answer).get("requestId")
            await self._note(PENDING, requestId=str(request_id))
            log.info("registration pending approval", extra=kv(request=request_id))
            if not isinstance(request_id, str) or not request_id:
                raise MasterUnavailableError("registration pending without a requestId")
            path = f"/v1/registrations/{request_id}?timeoutSeconds={POLL_WAIT_S:g}"
            # The master holds the poll up to POLL_WAIT_S: only a silence past that and the
            # margin is a master gone (without a reset, nothing else would end the wait).
            status, answer = await session.exchange(
                "GET", path, timeout_s=POLL_WAIT_S + POLL_MARGIN_S, keep=_ANSWERED
            )
        return status, _as_object(answer)


def _as_object(data: Any) -> dict[str, Any]:
    return data if isinstance(data, dict) else {"answer": data}
