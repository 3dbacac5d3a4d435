"""ImageReservations: admission's pinning and GC's deletions serialize on one lock."""

from __future__ import annotations

import asyncio

import pytest

from agent.node.imagegc.reservations import ImageReservations

pytestmark = pytest.mark.usefixtures("blockbuster")


async def test_pinning_reserves_for_the_holder_until_released() -> None:
    res = ImageReservations()
    async with res.pinning("pod-a") as pin:
        pin.add("sha256:a")
    await res.reserve("pod-a", ["sha256:b"])
    await res.reserve("pod-b", ["sha256:b"])
    assert res.reserved() == {"sha256:a", "sha256:b"}
    assert res.holders_of("sha256:b") == ("pod-a", "pod-b")
    res.release("pod-a")
    assert res.reserved() == {"sha256:b"}
    res.release("pod-a")  # unknown holder: nothing happens
    res.release("pod-b")
    assert res.reserved() == frozenset()


async def test_a_failed_pinning_reserves_nothing() -> None:
    res = ImageReservations()
    with pytest.raises(RuntimeError):
        async with res.pinning("pod-a") as pin:
            pin.add("sha256:a")
            raise RuntimeError("resolve failed")
    assert res.reserved() == frozenset()


async def test_a_pin_made_while_gc_deletes_is_seen_by_the_next_deletion() -> None:
    """GC holds the lock: the admission waits, and GC's next check sees its reservation."""
    res = ImageReservations()
    gc_holding = asyncio.Event()
    gc_go = asyncio.Event()
    seen: list[frozenset[str]] = []

    async def gc() -> None:
        async with res.deleting() as reserved:
            seen.append(reserved)
            gc_holding.set()
            await gc_go.wait()
        async with res.deleting() as reserved:
            seen.append(reserved)

    async def admit() -> None:
        async with res.pinning("pod-a") as pin:
            pin.add("sha256:old")

    gc_task = asyncio.create_task(gc())
    await gc_holding.wait()
    admit_task = asyncio.create_task(admit())
    await asyncio.sleep(0)
    assert not admit_task.done()  # blocked on GC's lock
    assert res.reserved() == frozenset()
    gc_go.set()
    await asyncio.gather(gc_task, admit_task)
    assert seen[0] == frozenset()
    # The lock is fair (FIFO): the admission that waited got it before GC's next step.
    assert seen[1] == {"sha256:old"}
