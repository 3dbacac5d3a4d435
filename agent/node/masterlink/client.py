"""HTTP to the master: sessions bound to the configured source address, JSON calls whose
failures become our errors at this edge. Every request but the pod watch goes through
:meth:`MasterSession.request`: a time-out for the whole answer, which is read whole and bounded.

Every connection is checked for the master's mark once its TLS handshake verified the chain
(:meth:`MasterClient.session`): a server without it is :class:`NotTheMasterError` before a
byte is sent. Any other transport failure, time-out, 5xx or unparsable answer is
:class:`MasterUnavailableError` (back off, keep the pods); 401/403 is
:class:`IdentityRejectedError` (register again); another 4xx is :class:`NotFoundError`,
:class:`ConflictError` or :class:`BadRequestError`, naming the call — unless the caller tells
that status apart itself (``exchange(keep=…)``: registration).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent.aio.bridge import ThreadBridge
from agent.aio.tls import with_peer_check
from agent.errors import (
    AgentError,
    BadRequestError,
    ConflictError,
    IdentityRejectedError,
    MasterAnswerMalformedError,
    MasterTimeoutError,
    MasterUnavailableError,
    NotFoundError,
    NotTheMasterError,
)
from agent.node.masterlink.endpoints import MasterEndpoints
from agent.pki.names import master_mark_check

REQUEST_TIMEOUT_S = 30.0
# The largest answer a call reads (a node's pod listing is the largest: pods times manifests).
MAX_ANSWER_BYTES = 64 << 20
# A larger answer is parsed on the thread bridge (JSON parses at roughly 100 MiB/s: this much
# holds the loop for a few milliseconds, the largest for most of a second).
PARSE_ON_LOOP_MAX_BYTES = 256 << 10
_CLIENT_ERRORS: dict[int, type[AgentError]] = {404: NotFoundError, 409: ConflictError}


def error_message(data: Any) -> str:
    """The message of a ``{"error": {"message": …}}`` body; '' for any other shape."""
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, refused (:class:`MasterAnswerMalformedError`) once it passes ``limit``
    bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise MasterAnswerMalformedError(f"{what}: answer over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def decode_answer(raw: bytes, what: str) -> Any:
    """The JSON of an answer (None when empty); garbled, or nested beyond what the decoder
    follows, is :class:`MasterAnswerMalformedError`."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting
        raise MasterAnswerMalformedError(f"{what}: the answer is not JSON ({exc})") from None


def transport_error(what: str, exc: BaseException) -> AgentError:
    """Ours for a request's transport failure (aiohttp's, a time-out, an OSError): the server
    is not the master (:class:`NotTheMasterError`, from the handshake's check), or the master
    is unavailable."""
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, NotTheMasterError):
        return NotTheMasterError(f"{what}: {cause.message}")
    if isinstance(exc, TimeoutError):  # aiohttp's time-outs are TimeoutErrors too
        return MasterTimeoutError(f"{what}: no answer in time ({type(exc).__name__})")
    return MasterUnavailableError(f"{what}: {exc}")


def _excerpt(raw: bytes, limit: int = 200) -> str:
    return raw[:limit].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """What the master answered, read whole (and bounded), not yet interpreted."""

    what: str  # "METHOD /path", for messages
    status: int
    raw: bytes


class MasterSession:
    """One HTTP session to the master (one TLS identity)."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        bridge: ThreadBridge,
        *,
        several: bool = False,
    ) -> None:
        self.base_url = base_url
        self.http = session
        self._bridge = bridge
        self.several = several  # other masters to fail over to: a silent one is left sooner

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float | None = None,
        limit_bytes: int | None = None,
    ) -> RawAnswer:
        """A request whose whole answer must arrive within ``timeout_s`` (default
        ``REQUEST_TIMEOUT_S``): any transport failure or time-out is
        :class:`MasterUnavailableError`, an answer over ``limit_bytes`` (default
        ``MAX_ANSWER_BYTES``) :class:`MasterAnswerMalformedError`."""
        what = f"{method} {path}"
        limit = MAX_ANSWER_BYTES if limit_bytes is None else limit_bytes
        try:
            async with self.http.request(
                method,
                self.url(path),
                json=body,
                timeout=aiohttp.ClientTimeout(
                    total=REQUEST_TIMEOUT_S if timeout_s is None else timeout_s
                ),
            ) as resp:
                return RawAnswer(what, resp.status, await read_bounded(resp, limit, what))
        # OSError: a reset or TLS failure aiohttp passes on unwrapped.
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise transport_error(what, exc) from exc

    async def exchange(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float | None = None,
        keep: Collection[int] = (),
    ) -> tuple[int, Any]:
        """A JSON request: the status and decoded answer of a 2xx or 3xx, or of an error status
        in ``keep`` (its body decoded leniently: None when it is not JSON); any other error
        status raises the error that status means."""
        answer = await self.request(method, path, body, timeout_s=timeout_s)
        status = answer.status
        if status < 400:
            return status, await self.decode(answer)
        try:
            data = await self.decode(answer)
        except MasterAnswerMalformedError:
            data = None  # the status says what went wrong; the body is only its explanation
        if status in keep:
            return status, data
        if status in (401, 403):
            raise IdentityRejectedError(f"{answer.what}: {status} {error_message(data)}")
        if status >= 500:
            raise MasterUnavailableError(f"{answer.what}: {status}")
        kind = _CLIENT_ERRORS.get(status, BadRequestError)
        raise kind(f"{answer.what}: {status} {error_message(data) or _excerpt(answer.raw)}")

    async def decode(self, answer: RawAnswer) -> Any:
        """:func:`decode_answer`, on the thread bridge for an answer too large to parse on the
        loop without stalling it (a listing of many pods: tens of MiB, a second of parsing)."""
        if len(answer.raw) > PARSE_ON_LOOP_MAX_BYTES:
            return await self._bridge.run(decode_answer, answer.raw, answer.what)
        return decode_answer(answer.raw, answer.what)

    async def call(
        self, method: str, path: str, body: Any = None, *, timeout_s: float | None = None
    ) -> Any:
        """A JSON request; the decoded JSON answer of a 2xx."""
        _, data = await self.exchange(method, path, body, timeout_s=timeout_s)
        return data


class MasterClient:
    """Sessions to the current master of :attr:`endpoints` (one URL, or several the link
    fails over among: ``endpoints.py``)."""

    def __init__(
        self,
        endpoints: str | MasterEndpoints,
        bridge: ThreadBridge,
        *,
        bind_source: str | None = None,
    ) -> None:
        self.endpoints = (
            MasterEndpoints((endpoints,), "") if isinstance(endpoints, str) else endpoints
        )
        self._bridge = bridge
        self._bind_source = bind_source

    @property
    def base_url(self) -> str:
        """The master the next session goes to."""
        return self.endpoints.current

    @asynccontextmanager
    async def session(self, tls: ssl.SSLContext) -> AsyncIterator[MasterSession]:
        """A session over ``tls``, which, when it verifies the server (every context but the
        CA fetch's, which its pin checks instead), is made to require the master's mark."""
        if tls.verify_mode != ssl.CERT_NONE:
            with_peer_check(tls, master_mark_check(self.base_url))
        source = self._bind_source
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, local_addr=(source, 0) if source else None),
            # No total time-out: the pod watch is long by design (the lease renewal is what
            # notices a silent master); every request() sets its own.
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=None
            ),
        )
        async with http:
            yield MasterSession(self.base_url, http, self._bridge, several=self.endpoints.several)
