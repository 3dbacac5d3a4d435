"""The SQLite store: revisions, CAS, prefixes, watches that resume, compaction, restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.aio.bridge import ThreadBridge
from agent.errors import CompactedError
from agent.master.store.base import EventType, WatchEvent
from agent.master.store.sqlite import SqliteStore

pytestmark = pytest.mark.usefixtures("blockbuster")


@pytest.fixture
async def bridge() -> AsyncIterator[ThreadBridge]:
    bridge = ThreadBridge(4)
    yield bridge
    bridge.close()


async def test_put_get_revisions_and_restart(tmp_path: Path, bridge: ThreadBridge) -> None:
    store = await SqliteStore.open(tmp_path / "db" / "state.db", bridge)
    r1 = await store.put("/nodes/a", b"1")
    r2 = await store.put("/nodes/a", b"2")
    assert r2 == r1 + 1
    kv = await store.get("/nodes/a")
    assert (
        kv is not None and kv.value == b"2" and kv.create_revision == r1 and kv.mod_revision == r2
    )
    await store.close()
    reopened = await SqliteStore.open(tmp_path / "db" / "state.db", bridge)
    assert reopened.revision == r2
    assert (await reopened.get("/nodes/a")).value == b"2"  # type: ignore[union-attr]
    assert await reopened.get("/nodes/zz") is None
    await reopened.close()


async def test_compare_and_swap(tmp_path: Path, bridge: ThreadBridge) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", bridge)
    first = await store.compare_and_swap("/k", b"v1", 0)
    assert first is not None
    assert await store.compare_and_swap("/k", b"again", 0) is None  # must not exist
    assert await store.compare_and_swap("/k", b"v2", first + 5) is None  # stale
    second = await store.compare_and_swap("/k", b"v2", first)
    assert second == first + 1
    assert await store.delete("/k", expected_mod_revision=first) is None
    assert await store.delete("/k", expected_mod_revision=second) == second + 1
    assert await store.delete("/k") is None
    await store.close()


async def test_concurrent_cas_has_one_winner(tmp_path: Path, bridge: ThreadBridge) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", bridge)
    results = await asyncio.gather(
        *(store.compare_and_swap("/lock", str(i).encode(), 0) for i in range(20))
    )
    assert sum(r is not None for r in results) == 1
    await store.close()


async def test_list_prefix_is_exact(tmp_path: Path, bridge: ThreadBridge) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", bridge)
    for key in ("/pods/a/1", "/pods/a/2", "/pods/ab/1", "/pods/b/1", "/nodes/a"):
        await store.put(key, b"x")
    items, rev = await store.list_prefix("/pods/a/")
    assert [i.key for i in items] == ["/pods/a/1", "/pods/a/2"]
    assert rev == store.revision
    await store.close()


async def collect(it: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    out = []
    async for event in it:
        out.append(event)
        if len(out) == n:
            break
    return out


async def test_watch_resumes_without_missing_or_replaying(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", bridge)
    await store.put("/pods/n1/a", b"1")
    _, start = await store.list_prefix("/pods/n1/")
    watcher = asyncio.create_task(collect(store.watch("/pods/n1/", start), 3))
    await store.put("/pods/n2/x", b"other node")
    await store.put("/pods/n1/b", b"2")
    await store.delete("/pods/n1/a")
    await store.put("/pods/n1/b", b"3")
    events = await asyncio.wait_for(watcher, 5)
    assert [(e.type, e.key, e.value) for e in events] == [
        (EventType.PUT, "/pods/n1/b", b"2"),
        (EventType.DELETE, "/pods/n1/a", b"1"),
        (EventType.PUT, "/pods/n1/b", b"3"),
    ]
    # Resume from the middle: exactly the later events, once.
    resumed = await asyncio.wait_for(collect(store.watch("/pods/n1/", events[0].revision), 2), 5)
    assert [e.revision for e in resumed] == [e.revision for e in events[1:]]
    await store.close()


async def test_watch_from_compacted_or_future_revision(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", bridge, history=10)
    for i in range(1005):
        await store.put(f"/k/{i % 3}", b"x")
    with pytest.raises(CompactedError, match="compacted"):
        await collect(store.watch("/k/", 1), 1)
    with pytest.raises(CompactedError, match="newer than the store"):
        await collect(store.watch("/k/", store.revision + 10), 1)
    events = await asyncio.wait_for(collect(store.watch("/k/", store.revision - 2), 2), 5)
    assert len(events) == 2
    await store.close()
