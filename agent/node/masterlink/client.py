"""HTTP to the master: sessions bound to the configured source address, JSON calls whose
failures become our errors at this edge.

Any transport failure, time-out, 5xx or unparsable answer is :class:`MasterUnavailableError`
(back off, keep the pods); 401/403 is :class:`IdentityRejectedError` (register again); another
4xx is :class:`NotFoundError`, :class:`ConflictError` or :class:`BadRequestError`, naming the
call.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from agent.errors import (
    AgentError,
    BadRequestError,
    ConflictError,
    IdentityRejectedError,
    MasterAnswerMalformedError,
    MasterUnavailableError,
    NotFoundError,
)

REQUEST_TIMEOUT_S = 30.0
# The largest answer a call reads (a node's pod listing is the largest: pods times manifests).
MAX_ANSWER_BYTES = 64 << 20
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


def _excerpt(raw: bytes, limit: int = 200) -> str:
    return raw[:limit].decode("utf-8", "replace")


class MasterSession:
    """One HTTP session to the master (one TLS identity)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.http = session

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def call(
        self, method: str, path: str, body: Any = None, *, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> Any:
        """A JSON request; the decoded JSON answer of a 2xx."""
        try:
            async with self.http.request(
                method,
                self.url(path),
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                raw = await read_bounded(resp, MAX_ANSWER_BYTES, f"{method} {path}")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MasterUnavailableError(f"{method} {path}: {exc}") from exc
        if status < 400:
            return decode_answer(raw, f"{method} {path}")
        try:
            data = decode_answer(raw, f"{method} {path}")
        except MasterAnswerMalformedError:
            data = None  # the status says what went wrong; the body is only its explanation
        if status in (401, 403):
            raise IdentityRejectedError(f"{method} {path}: {status} {error_message(data)}")
        if status >= 500:
            raise MasterUnavailableError(f"{method} {path}: {status}")
        kind = _CLIENT_ERRORS.get(status, BadRequestError)
        raise kind(f"{method} {path}: {status} {error_message(data) or _excerpt(raw)}")


class MasterClient:
    def __init__(self, base_url: str, *, bind_source: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._bind_source = bind_source

    @asynccontextmanager
    async def session(self, tls: ssl.SSLContext) -> AsyncIterator[MasterSession]:
        source = self._bind_source
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, local_addr=(source, 0) if source else None),
            # No total time-out: the pod watch and the registration long-poll are long by
            # design; each short call sets its own.
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=None
            ),
        )
        async with http:
            yield MasterSession(self.base_url, http)
