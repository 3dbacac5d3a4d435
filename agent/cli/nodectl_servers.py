"""nodectl with several masters: the ``server`` list of its config (or ``--server a,b``), which
master a command talks to, and when it moves to the next (issue 19 item 3).

The masters of one cluster share the CA and the store, so any of them answers any command, and
a watch resumes on another at the revision it reached. nodectl tries them in the order listed
(an administrator's command has no fleet to spread: the first listed is the preferred one) and
moves to the next, as the agent does, on

- a connection failure: refused, reset, a time-out (the connection and the TLS handshake get
  :data:`CONNECT_TIMEOUT_S` when there are several masters, so a master that accepts TCP but
  never answers costs seconds, not the 30 s of a single master's wait);
- a 503, 502 or 504 answer (a master whose store is away, or a gateway's);

never on another 4xx or 5xx (the request was understood and refused: another master would say
the same). Each master is tried at most once per request, without back-off (an interactive
command: when every master failed, the last error is the command's). A request that may have
been carried out is not sent again: after it was sent, only an idempotent method (GET, PUT,
DELETE) is retried after a broken connection or a 502/504; a POST only when it never left (a
failed connection) or was refused with a 503. ``-v`` prints one stderr line per switch.

Streams (exec, logs, port-forward) fail over when their connection is opened; logs, and an
exec without stdin, also when the master answers the stream 502, 503 or 504 (nothing ran, no
input was read); a stream that broke is not re-run elsewhere (an exec's command may have run).
Watches (``get -w``) move to the next master whenever their connection fails or breaks, and
resume at their revision.

Stdlib only, like nodectl's ``get`` path (``tests/unit/cli/test_nodectl_lazy.py``): the HTTP/2
connection is imported by the opener of the streaming commands, which load it anyway.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from agent.errors import CliError, ServerError

if TYPE_CHECKING:
    import ssl

    from agent.aio.h2conn import H2Connection

EXIT_USAGE = 2
DEFAULT_PORT = 6443
MAX_SERVERS = 16  # a cluster's masters, not a fleet; bounds what a config may make nodectl try
# With several masters, a connection (TCP and TLS handshake) that takes longer moves on: a
# master on a LAN or loopback answers a handshake in milliseconds, a stopped one never does.
CONNECT_TIMEOUT_S = 3.0
FAILOVER_STATUSES = frozenset({502, 503, 504})
# A request whose effect is the same sent twice (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
T = TypeVar("T")


class MasterUnreachableError(CliError):
    """One master could not be reached or broke the connection; ``sent``: the request may
    have reached it (so only an idempotent one is sent again elsewhere)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def check_url(url: str, where: str) -> str:
    """``url`` when it is an https:// URL with a host, else a usage error naming ``where``."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError as exc:
        raise CliError(f"{where}: server {url!r}: {exc}", EXIT_USAGE) from None
    if parts.scheme != "https" or not parts.hostname:
        raise CliError(f"{where}: server {url!r} must be an https:// URL", EXIT_USAGE)
    return url.rstrip("/")


def parse_servers(value: object, where: str) -> tuple[str, ...]:
    """The masters of a config's ``server`` (one URL, several separated by commas, or a list
    of URLs) or of ``--server``: checked, duplicates dropped, in the order given."""
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list):
        items = list(value)
    else:
        raise CliError(f"{where}: server must be a URL or a list of URLs", EXIT_USAGE)
    if not all(isinstance(item, str) for item in items):
        raise CliError(f"{where}: server must be a URL or a list of URLs", EXIT_USAGE)
    urls = tuple(dict.fromkeys(check_url(str(item).strip(), where) for item in items))
    if not urls:
        raise CliError(f"{where}: server lists no URL", EXIT_USAGE)
    if len(urls) > MAX_SERVERS:
        raise CliError(f"{where}: server lists {len(urls)} URLs (at most {MAX_SERVERS})", 2)
    return urls


def address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORT


class Servers:
    """The masters in the order tried and the one in use (a command stays on the master it
    moved to)."""

    def __init__(
        self, urls: Sequence[str], *, verbose: bool = False, err: TextIO | None = None
    ) -> None:
        if not urls:
            raise ValueError("at least one server")
        self.urls = tuple(urls)
        self.verbose = verbose
        self._err = err
        self._index = 0

    @property
    def current(self) -> str:
        return self.urls[self._index]

    @property
    def several(self) -> bool:
        return len(self.urls) > 1

    @property
    def address(self) -> tuple[str, int]:
        return address(self.current)

    def connect_timeout_s(self, single_s: float) -> float:
        """How long a connection may take: ``single_s`` with one master (nowhere else to go),
        :data:`CONNECT_TIMEOUT_S` with several."""
        return min(single_s, CONNECT_TIMEOUT_S) if self.several else single_s

    def switch(self, reason: str) -> None:
        """The current master failed: the next one (one stderr line with ``-v``)."""
        if not self.several:
            return
        failed = self.current
        self._index = (self._index + 1) % len(self.urls)
        if self.verbose:
            err = self._err or sys.stderr
            print(f"nodectl: {failed}: {reason}; switching to {self.current}", file=err)

    def request(self, method: str, attempt: Callable[[], T], reset: Callable[[], None]) -> T:
        """``attempt()`` on the current master, then on each next one while it fails in a way
        that allows another try (the module's docstring); ``reset`` drops the failed master's
        connection before the next."""
        tried = 0
        while True:
            try:
                return attempt()
            except MasterUnreachableError as exc:
                again = not exc.sent or method in IDEMPOTENT_METHODS
                error: CliError = exc
                reason = str(exc).removeprefix("cannot reach the master: ")
            except ServerError as exc:
                if exc.status not in FAILOVER_STATUSES:
                    raise
                again = method in IDEMPOTENT_METHODS or exc.status == 503
                error, reason = exc, f"answered {exc.status}"
            tried += 1
            if not again:
                raise error
            if tried >= len(self.urls):
                if self.several and isinstance(error, MasterUnreachableError):
                    raise CliError(f"{error} (tried {tried} of {len(self.urls)} masters)")
                raise error
            reset()
            self.switch(reason)

    async def open_master(self, ctx: ssl.SSLContext) -> H2Connection:
        """An HTTP/2 connection to the first master that accepts one, from the current on;
        the last failure when none does."""
        from agent.aio.h2conn import HANDSHAKE_TIMEOUT_S, connect
        from agent.errors import ConnectionClosedError

        timeout_s = self.connect_timeout_s(HANDSHAKE_TIMEOUT_S)
        for tried in range(1, len(self.urls) + 1):
            host, port = self.address
            try:
                return await connect(
                    host, port, ctx, server_hostname=host, name="nodectl", timeout_s=timeout_s
                )
            except ConnectionClosedError as exc:
                if tried >= len(self.urls):
                    raise
                self.switch(str(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    async def stream(
        self,
        conn: H2Connection,
        ctx: ssl.SSLContext,
        session: Callable[[H2Connection], Awaitable[T]],
        *,
        again: bool,
    ) -> T:
        """``session(conn)``; when it was refused with a 502/503/504 and ``again`` (it read no
        input: logs, an exec without stdin), the same on the next masters' connections (each
        closed after its turn; ``conn`` is the caller's)."""
        from agent.errors import StreamRefusedError

        tried = 1
        current = conn
        try:
            while True:
                try:
                    return await session(current)
                except StreamRefusedError as exc:
                    if not again or exc.status not in FAILOVER_STATUSES or tried >= len(self.urls):
                        raise
                    self.switch(f"answered {exc.status}")
                    if current is not conn:
                        await current.shutdown("failed over", grace_s=1.0)
                    tried += 1
                    current = await self.open_master(ctx)
        finally:
            if current is not conn:
                await current.shutdown("done", grace_s=1.0)


def config_servers(config: Any) -> tuple[str, ...]:
    """A :class:`agent.cli.nodectl.ClientConfig`'s masters (``servers``, else ``server``)."""
    return tuple(config.servers) or (config.server,)
