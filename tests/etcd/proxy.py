"""A TCP proxy on loopback that a test can cut: one master's road to etcd, so that this master
alone is partitioned from etcd (stopping etcd, or SIGSTOP on it, would cut every master).
``cut()`` closes the listening socket and every connection through it (connections are refused
from then on); ``mend()`` listens again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.helpers import free_port

CHUNK_BYTES = 64 * 1024


class TcpProxy:
    """The asyncio proxy: ``127.0.0.1:port`` to ``target``, in the loop that starts it."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(CHUNK_BYTES):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def mend(self) -> None:
        await self.start()


class ThreadedProxy:
    """The same proxy in a thread of its own (for tests that are not coroutines)."""

    def __init__(self, target_port: int) -> None:
        self.proxy = TcpProxy(target_port)
        self.port = self.proxy.port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _call(self, coro: object) -> None:
        assert asyncio.iscoroutine(coro)
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def start(self) -> ThreadedProxy:
        self._thread.start()
        self._call(self.proxy.start())
        return self

    def cut(self) -> None:
        self._call(self.proxy.cut())

    def mend(self) -> None:
        self._call(self.proxy.mend())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self.proxy.cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
