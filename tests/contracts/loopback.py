"""Servers on this host's loopback whose answers a test sets: what the real probes and hooks
of the contract suites reach over the network (the pod IP of these tests is 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib

LOOPBACK = "127.0.0.1"
HTTP_OK = 200
HTTP_FAILING = 500


class HttpServer:
    """Answers every GET with ``status`` (None: reads the request and never answers)."""

    def __init__(self) -> None:
        self.status: int | None = HTTP_OK
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._held: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.status is None:
                self._held.add(writer)  # never answered: the client's timeout ends it
                return
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % self.status)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def close(self) -> None:
        for writer in self._held:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class TcpListener:
    """A port that accepts connections while ``open`` and refuses them while closed."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    @staticmethod
    async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, LOOPBACK, self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            with contextlib.suppress(OSError):
                await server.wait_closed()

    async def reserve(self) -> None:
        """Pick a port (open, then closed): connections are refused until ``open``."""
        await self.open()
        await self.close()
