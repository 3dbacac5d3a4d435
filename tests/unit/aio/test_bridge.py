"""The thread bridge: calls and streams run off the loop, bounded, and end cleanly."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from collections.abc import Iterator

import pytest

from agent.aio.bridge import STREAM_QUEUE_ITEMS, ThreadBridge

JOIN_S = 10.0


async def test_run_returns_the_result_and_raises_the_error() -> None:
    bridge = ThreadBridge(2)
    try:
        assert await bridge.run(lambda: threading.current_thread().name) != "MainThread"

        def boom() -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await bridge.run(boom)
    finally:
        bridge.close()
    with pytest.raises(RuntimeError, match="closed"):
        await bridge.run(lambda: None)


async def test_a_stream_yields_every_item_then_ends() -> None:
    bridge = ThreadBridge(1)
    items = [i async for i in bridge.stream(lambda: iter(range(2000)), name="t")]
    assert items == list(range(2000))


async def test_a_stream_delivers_the_producers_error() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise OSError("socket gone")

    bridge = ThreadBridge(1)
    got: list[int] = []
    with pytest.raises(OSError, match="socket gone"):
        async for item in bridge.stream(produce, name="t"):
            got.append(item)
    assert got == [1]


async def test_a_slow_consumer_holds_the_producer_at_the_queue_bound() -> None:
    # Item 0 is out, the queue holds the next STREAM_QUEUE_ITEMS, one more waits to be put.
    bound = STREAM_QUEUE_ITEMS + 2
    produced = 0
    reached = {bound: threading.Event(), bound + 1: threading.Event()}

    def produce() -> Iterator[int]:
        nonlocal produced
        for i in range(STREAM_QUEUE_ITEMS * 4):
            produced = i + 1
            if produced in reached:
                reached[produced].set()
            yield i

    bridge = ThreadBridge(1)
    stream = bridge.stream(produce, name="t")
    assert await anext(stream) == 0
    assert await asyncio.to_thread(reached[bound].wait, JOIN_S)
    await asyncio.sleep(0.1)  # room for a broken bound to show; the assert holds either way
    assert produced == bound
    assert await anext(stream) == 1
    assert await asyncio.to_thread(reached[bound + 1].wait, JOIN_S)
    assert produced == bound + 1  # one consumed, one more produced
    await stream.aclose()


def test_a_producer_outliving_its_loop_ends_without_a_stray_coroutine() -> None:
    release = threading.Event()

    def produce() -> Iterator[int]:
        yield 1
        release.wait(JOIN_S)
        yield 2  # the loop is closed by now, and nobody finalised the stream

    loop = asyncio.new_event_loop()
    bridge = ThreadBridge(1)
    stream = bridge.stream(produce, name="lonely")
    assert loop.run_until_complete(anext(stream)) == 1
    loop.close()  # without shutdown_asyncgens: the consumer's finally never runs
    (producer,) = [t for t in threading.enumerate() if t.name == "stream-lonely"]
    crashes: list[threading.ExceptHookArgs] = []
    hook, threading.excepthook = threading.excepthook, crashes.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            release.set()
            producer.join(JOIN_S)
            assert not producer.is_alive(), "the producer thread did not end"
            gc.collect()
    finally:
        threading.excepthook = hook
    assert not crashes, f"the producer thread died of {crashes[0].exc_value!r}"
    assert not [w for w in caught if "never awaited" in str(w.message)]
