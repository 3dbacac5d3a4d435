"""The one bounded thread bridge through which blocking SDKs (docker, pyroute2 setns, file I/O
that may stall) run, so the event loop never blocks.

It is bounded twice: a fixed number of worker threads, and a semaphore so that callers queue in
the loop (cancellable, visible in metrics) instead of piling unbounded work onto the executor.
Long-lived blocking iterators (the docker events stream) get a dedicated daemon thread each via
:meth:`ThreadBridge.stream`, so they never starve the pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_STREAM_END = object()
STREAM_QUEUE_ITEMS = 1024


class ThreadBridge:
    """Runs blocking callables in a bounded pool and exposes them as coroutines."""

    def __init__(self, max_threads: int, name: str = "bridge") -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be >= 1")
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix=name)
        self._slots = asyncio.Semaphore(max_threads)
        self._closed = False
        self.calls_waiting = 0
        self.calls_running = 0

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func(*args, **kwargs)`` in a worker thread and return its result.

        Cancellation abandons the wait, not the call: the thread finishes its work (a docker
        call cannot be interrupted) and the result is dropped.
        """
        if self._closed:
            raise RuntimeError("thread bridge is closed")
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, func, *args, **kwargs)
        self.calls_waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.calls_waiting -= 1
        self.calls_running += 1
        try:
            return await loop.run_in_executor(self._executor, call)
        finally:
            self.calls_running -= 1
            self._slots.release()

    async def stream(self, open_iter: Callable[[], Iterator[T]], *, name: str) -> AsyncIterator[T]:
        """Iterate a blocking iterator on a dedicated thread, yielding items in the loop.

        The queue between the thread and the loop is bounded; when the consumer falls behind
        the producing thread blocks (back-pressure) instead of growing memory.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=STREAM_QUEUE_ITEMS)
        stop = threading.Event()

        def put(item: object) -> None:
            if stop.is_set():
                return
            coro = queue.put(item)
            try:
                fut = asyncio.run_coroutine_threadsafe(coro, loop)
            except RuntimeError:  # the loop closed under us: nobody is left to read
                coro.close()
                return
            while not stop.is_set():
                try:
                    fut.result(timeout=0.5)
                    return
                except TimeoutError:
                    continue
            fut.cancel()

        def pump() -> None:
            try:
                for item in open_iter():
                    if stop.is_set():
                        break
                    put(item)
                put(_STREAM_END)
            except BaseException as exc:  # delivered to the consumer, re-raised there
                if not stop.is_set():
                    put(exc)

        thread = threading.Thread(target=pump, name=f"stream-{name}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _STREAM_END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            stop.set()

    def close(self) -> None:
        """Stop accepting work; running calls finish in their threads."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
