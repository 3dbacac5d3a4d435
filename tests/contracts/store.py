"""The Store contract (agent/master/store/base.py): every backend passes the same tests.

A test module runs the suite by subclassing :class:`StoreContract` in a ``Test*`` class and
providing a ``stores`` fixture that yields a :class:`StoreHarness` for each backend (see
tests/unit/master/store/test_store_contract.py: one entry per backend in a dict). What a
backend cannot do is a capability flag of its :class:`StoreBackend`, and the tests that depend
on it assert the other documented behaviour instead of skipping. Revisions are counted from
the store's revision at the start of each test (0 for a new local store), so a backend whose
new store starts elsewhere (etcd) runs the same tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from agent.errors import CompactedError, StoreError
from agent.master.store.base import EventType, KeyValue, Store, WatchEvent
from agent.master.store.history import HISTORY_REVISIONS, WATCH_BATCH_EVENTS
from agent.master.tokens import TOKENS_PREFIX, JoinTokens

WAIT_S = 10.0  # a deadline for conditions that hold at once when the store works


@dataclass(frozen=True, slots=True)
class StoreBackend:
    """One backend under test."""

    open: Callable[[int], Awaitable[Store]]
    """Open the backend's store at this test's location with ``history`` revisions kept."""
    persistent: bool
    """Data, revision and history survive ``close()`` and ``open()`` on the same location (a
    restart); otherwise every ``open()`` starts an empty store at revision 0."""
    starts_at_zero: bool = True
    """A new store is at revision 0. Otherwise (etcd: one revision for the whole etcd, at 1
    when it is new, moved by other clusters' prefixes too) a new store is at some revision,
    and the tests count from the revision at their start."""


class StoreHarness:
    """Opens stores of one backend for one test and closes whatever is still open after it."""

    def __init__(self, backend: StoreBackend) -> None:
        self.backend = backend
        self._opened: list[Store] = []

    @property
    def persistent(self) -> bool:
        return self.backend.persistent

    @property
    def starts_at_zero(self) -> bool:
        return self.backend.starts_at_zero

    async def open(self, *, history: int = HISTORY_REVISIONS) -> Store:
        store = await self.backend.open(history)
        self._opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()


async def take(events: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    """The next ``n`` events of a watch (within WAIT_S)."""

    async def collect() -> list[WatchEvent]:
        out: list[WatchEvent] = []
        while len(out) < n:
            out.append(await anext(events))
        return out

    return await asyncio.wait_for(collect(), WAIT_S)


async def revision_of(store: Store) -> int:
    return (await store.list_prefix("/"))[1]


class FixedClock:
    """Join tokens judge expiry by the wall clock: one that stands still unless moved."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def triples(events: list[WatchEvent]) -> list[tuple[EventType, str, bytes]]:
    return [(e.type, e.key, e.value) for e in events]


class StoreContract:
    # -- revisions, put, get ---------------------------------------------------------------

    async def test_an_empty_store_is_at_revision_zero(self, stores: StoreHarness) -> None:
        store = await stores.open()
        items, base = await store.list_prefix("")
        assert items == [] and (base == 0) is stores.starts_at_zero and base >= 0
        assert await store.get("/nodes/a") is None

    async def test_every_change_takes_the_next_global_revision(self, stores: StoreHarness) -> None:
        store = await stores.open()
        base = await revision_of(store)
        r1 = await store.put("/nodes/a", b"1")
        r2 = await store.put("/nodes/b", b"1")
        r3 = await store.put("/nodes/a", b"2")
        r4 = await store.put("/nodes/a", b"2")  # an equal value is still a change
        assert [r1, r2, r3, r4] == [base + 1, base + 2, base + 3, base + 4]
        assert await store.get("/nodes/a") == KeyValue("/nodes/a", b"2", r1, r4)
        assert await store.get("/nodes/b") == KeyValue("/nodes/b", b"1", r2, r2)
        assert await revision_of(store) == r4

    async def test_values_and_keys_come_back_unchanged(self, stores: StoreHarness) -> None:
        store = await stores.open()
        value = bytes(range(256)) + b"\x00\xff not utf-8: \xc3\x28"
        key = "/pods/d\u00e9j\u00e0/\u4f8b \u0001"
        await store.put(key, value)
        found = await store.get(key)
        assert found is not None and found.key == key and found.value == value
        assert [kv.value for kv in (await store.list_prefix("/pods/"))[0]] == [value]

    # -- compare-and-swap and delete -------------------------------------------------------

    async def test_compare_and_swap(self, stores: StoreHarness) -> None:
        store = await stores.open()
        base = await revision_of(store)
        first = await store.compare_and_swap("/k", b"v1", 0)
        assert first == base + 1
        assert await store.compare_and_swap("/k", b"again", 0) is None  # must not exist
        assert await store.compare_and_swap("/k", b"stale", first + 5) is None
        assert await store.compare_and_swap("/other", b"x", first) is None  # must exist
        assert await revision_of(store) == first  # failed swaps change nothing
        second = await store.compare_and_swap("/k", b"v2", first)
        assert second == first + 1
        assert await store.get("/k") == KeyValue("/k", b"v2", first, second)
        assert await store.get("/other") is None

    async def test_delete(self, stores: StoreHarness) -> None:
        store = await stores.open()
        assert await store.delete("/k") is None  # absent: nothing to delete, no revision
        created = await store.put("/k", b"v1")
        assert await store.delete("/k", expected_mod_revision=created + 1) is None
        assert await store.delete("/k", expected_mod_revision=0) is None
        assert await revision_of(store) == created
        assert (await store.get("/k")) is not None
        deleted = await store.delete("/k", expected_mod_revision=created)
        assert deleted == created + 1
        assert await store.get("/k") is None
        assert await store.list_prefix("/") == ([], deleted)
        assert await store.delete("/k") is None
        again = await store.put("/k", b"v2")  # a new key: a new create revision
        assert await store.get("/k") == KeyValue("/k", b"v2", again, again)
        assert await store.delete("/k") == again + 1  # no expectation: whatever the revision

    # -- listing ---------------------------------------------------------------------------

    async def test_list_prefix_is_an_exact_sorted_string_prefix(self, stores: StoreHarness) -> None:
        store = await stores.open()
        keys = [
            "/pods/b/1",
            "/pods/a/2",
            "/nodes/a",
            "/pods/ab/1",
            "/pods/a/1",
            "/pods/a/\U0010ffff",
        ]
        for key in keys:
            last = await store.put(key, key.encode())
        items, rev = await store.list_prefix("/pods/a/")
        assert [i.key for i in items] == ["/pods/a/1", "/pods/a/2", "/pods/a/\U0010ffff"]
        assert [i.value for i in items] == [i.key.encode() for i in items]
        assert rev == last
        assert [i.key for i in (await store.list_prefix("/pods/a"))[0]] == [
            "/pods/a/1",
            "/pods/a/2",
            "/pods/a/\U0010ffff",
            "/pods/ab/1",
        ]
        assert [i.key for i in (await store.list_prefix(""))[0]] == sorted(keys)
        assert await store.list_prefix("/pods/c/") == ([], last)

    async def test_list_prefix_at_the_edges_of_unicode(self, stores: StoreHarness) -> None:
        store = await stores.open()
        top, below_surrogates = "\U0010ffff", "\ud7ff"
        keys = [f"/a{top}", f"/a{top}{top}x", f"/a{top}z", "/a\ue000", f"/b{below_surrogates}1"]
        keys += [f"/b{below_surrogates}", "/b\ue000", top, top * 3]
        for key in keys:
            await store.put(key, b"")

        async def listed(prefix: str) -> list[str]:
            return [kv.key for kv in (await store.list_prefix(prefix))[0]]

        assert await listed(f"/a{top}") == [f"/a{top}", f"/a{top}z", f"/a{top}{top}x"]
        assert await listed(f"/b{below_surrogates}") == [
            f"/b{below_surrogates}",
            f"/b{below_surrogates}1",
        ]
        assert await listed(top) == [top, top * 3]
        assert await listed("") == sorted(keys)

    # -- watch -----------------------------------------------------------------------------

    async def test_watch_from_a_listing_sees_every_later_change_once_in_order(
        self, stores: StoreHarness
    ) -> None:
        store = await stores.open()
        await store.put("/pods/n1/a", b"1")
        _, start = await store.list_prefix("/pods/n1/")
        watch = store.watch("/pods/n1/", start)
        waiting = asyncio.create_task(take(watch, 3))
        await store.put("/pods/n2/x", b"other node")
        await store.put("/pods/n1/b", b"2")
        await store.delete("/pods/n1/a")
        await store.put("/pods/n1/b", b"3")
        events = await waiting
        assert triples(events) == [
            (EventType.PUT, "/pods/n1/b", b"2"),
            (EventType.DELETE, "/pods/n1/a", b"1"),  # a deletion carries the last value
            (EventType.PUT, "/pods/n1/b", b"3"),
        ]
        assert [e.revision for e in events] == [start + 2, start + 3, start + 4]
        # Resume from the middle: exactly the later events, once.
        resumed = await take(store.watch("/pods/n1/", events[0].revision), 2)
        assert resumed == events[1:]
        # And the first watch goes on with what comes next.
        await store.put("/pods/n1/c", b"4")
        assert triples(await take(watch, 1)) == [(EventType.PUT, "/pods/n1/c", b"4")]

    async def test_watch_from_zero_replays_the_kept_history(self, stores: StoreHarness) -> None:
        store = await stores.open()
        base = await revision_of(store)
        await store.put("/a/1", b"x")
        await store.put("/b/1", b"y")
        await store.delete("/a/1")
        events = await take(store.watch("/a/", base), 2)
        assert [(e.type, e.key, e.revision) for e in events] == [
            (EventType.PUT, "/a/1", base + 1),
            (EventType.DELETE, "/a/1", base + 3),
        ]
        everything = await take(store.watch("", base), 3)
        assert [e.revision for e in everything] == [base + 1, base + 2, base + 3]

    async def test_watch_pages_through_a_long_history(self, stores: StoreHarness) -> None:
        store = await stores.open()
        base = await revision_of(store)
        total = 2 * WATCH_BATCH_EVENTS + 7
        for i in range(total):
            await store.put(f"/k/{i % 5}" if i % 2 else f"/other/{i}", str(i).encode())
        wanted = [i for i in range(total) if i % 2]
        events = await take(store.watch("/k/", base), len(wanted))
        assert [e.value for e in events] == [str(i).encode() for i in wanted]
        assert [e.revision for e in events] == [base + i + 1 for i in wanted]

    async def test_watch_of_a_revision_that_is_compacted_or_in_the_future(
        self, stores: StoreHarness
    ) -> None:
        history = 10
        store = await stores.open(history=history)
        base = await revision_of(store)
        for i in range(8 * history + 5):
            last = await store.put(f"/k/{i % 3}", b"x")
        with pytest.raises(CompactedError, match="compacted"):
            await take(store.watch("/k/", base + 1), 1)
        with pytest.raises(CompactedError, match="newer than the store"):
            await take(store.watch("/k/", last + 10), 1)
        # At least ``history`` revisions are kept.
        events = await take(store.watch("/k/", last - history), history)
        assert [e.revision for e in events] == list(range(last - history + 1, last + 1))

    async def test_a_watcher_that_falls_behind_compaction_gets_compacted(
        self, stores: StoreHarness
    ) -> None:
        history = 10
        store = await stores.open(history=history)
        start = await store.put("/k/a", b"0")
        watch = store.watch("/k/", start)
        await store.put("/k/a", b"1")
        assert [e.value for e in await take(watch, 1)] == [b"1"]
        for i in range(4 * history):
            await store.put("/k/a", str(i).encode())
        with pytest.raises(CompactedError, match="compacted"):
            await take(watch, 4 * history)

    async def test_a_watcher_that_keeps_up_sees_every_change_across_compactions(
        self, stores: StoreHarness
    ) -> None:
        history = 3
        store = await stores.open(history=history)
        watch = store.watch("/k/", await revision_of(store))
        for i in range(10 * history):
            rev = await store.put(f"/k/{i % 2}", str(i).encode())
            [event] = await take(watch, 1)
            assert (event.revision, event.value) == (rev, str(i).encode())

    # -- concurrency -----------------------------------------------------------------------

    async def test_racing_creates_have_exactly_one_winner(self, stores: StoreHarness) -> None:
        store = await stores.open()
        base = await revision_of(store)
        results = await asyncio.gather(
            *(store.compare_and_swap("/lock", str(i).encode(), 0) for i in range(20))
        )
        winners = [i for i, rev in enumerate(results) if rev is not None]
        assert len(winners) == 1 and results[winners[0]] == base + 1
        assert await store.get("/lock") == KeyValue(
            "/lock", str(winners[0]).encode(), base + 1, base + 1
        )

    async def test_racing_swaps_on_one_revision_have_exactly_one_winner(
        self, stores: StoreHarness
    ) -> None:
        store = await stores.open()
        base = await store.put("/k", b"base")
        results = await asyncio.gather(
            *(store.compare_and_swap("/k", str(i).encode(), base) for i in range(10))
        )
        winners = [i for i, rev in enumerate(results) if rev is not None]
        assert len(winners) == 1 and results[winners[0]] == base + 1
        found = await store.get("/k")
        assert found is not None and found.value == str(winners[0]).encode()
        assert await revision_of(store) == base + 1

    async def test_concurrent_writers_each_get_a_revision_and_a_watch_sees_all_in_order(
        self, stores: StoreHarness
    ) -> None:
        store = await stores.open()
        base = await revision_of(store)
        watch = store.watch("/k/", base)
        values = [str(i).encode() for i in range(40)]
        revisions = await asyncio.gather(
            *(store.put(f"/k/{i % 4}", value) for i, value in enumerate(values))
        )
        assert sorted(revisions) == list(range(base + 1, base + len(values) + 1))
        events = await take(watch, len(values))
        assert [e.revision for e in events] == sorted(revisions)
        by_revision = dict(zip(revisions, values, strict=True))
        assert all(e.value == by_revision[e.revision] for e in events)

    # -- close and restart -----------------------------------------------------------------

    async def test_close_ends_waiting_watches_and_refuses_calls(self, stores: StoreHarness) -> None:
        store = await stores.open()
        base = await revision_of(store)
        await store.put("/k/a", b"1")
        watch = store.watch("/k/", base)
        assert len(await take(watch, 1)) == 1
        waiting = asyncio.create_task(take(watch, 1))  # caught up: waits for a change
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await waiting
        with pytest.raises(StoreError, match="closed"):
            await store.get("/k/a")
        with pytest.raises(StoreError, match="closed"):
            await store.put("/k/a", b"2")
        with pytest.raises(StoreError, match="closed"):
            await take(store.watch("/k/", base), 1)
        await store.close()  # idempotent

    async def test_reopening_is_a_restart_or_a_new_store(self, stores: StoreHarness) -> None:
        store = await stores.open()
        base = await revision_of(store)
        await store.put("/k/a", b"1")
        await store.put("/k/b", b"2")
        last = await store.delete("/k/a")
        assert last is not None
        await store.close()
        reopened = await stores.open()
        if stores.persistent:
            assert await reopened.list_prefix("/k/") == (
                [KeyValue("/k/b", b"2", base + 2, base + 2)],
                last,
            )
            replay = await take(reopened.watch("/k/", base), 3)
            assert [(e.type, e.revision) for e in replay] == [
                (EventType.PUT, base + 1),
                (EventType.PUT, base + 2),
                (EventType.DELETE, base + 3),
            ]
            assert await reopened.put("/k/c", b"3") == last + 1
        else:
            # State is gone; a client still holding a revision of the old store relists.
            assert await reopened.list_prefix("/k/") == ([], 0)
            with pytest.raises(CompactedError, match="newer than the store"):
                await take(reopened.watch("/k/", last), 1)
            assert await reopened.put("/k/c", b"3") == 1

    # -- join tokens (agent.master.tokens keeps them in the store: every backend has them) --

    async def test_join_tokens_are_kept_listed_judged_and_deleted(
        self, stores: StoreHarness
    ) -> None:
        store = await stores.open()
        clock = FixedClock()
        tokens = JoinTokens(store, clock)
        token, shown = await tokens.create(ttl_s=60, usages=2, labels={"zone": "b"})
        assert [t["id"] for t in await tokens.list()] == [token.id] == [shown["id"]]
        stored = await store.get(TOKENS_PREFIX + token.id)
        assert stored is not None and token.secret.encode() not in stored.value
        assert (await tokens.use(token)).labels == {"zone": "b"}
        assert (await tokens.check(token)).valid
        clock.now += 61
        expired = await tokens.check(token)
        assert not expired.valid and "expired" in expired.reason
        await tokens.delete(token.id)
        assert await tokens.list() == []
        assert "unknown" in (await tokens.check(token)).reason

    async def test_of_nodes_racing_for_a_tokens_last_use_exactly_one_wins(
        self, stores: StoreHarness
    ) -> None:
        store = await stores.open()
        tokens = JoinTokens(store, FixedClock())
        token, _ = await tokens.create(usages=2)
        assert (await tokens.use(token)).valid
        results = await asyncio.gather(*(tokens.use(token) for _ in range(10)))
        assert sum(r.valid for r in results) == 1
        assert all("used up" in r.reason for r in results if not r.valid)
        [listed] = await tokens.list()
        assert (listed["used"], listed["usesLeft"]) == (2, 0)

    async def test_history_must_be_at_least_one_revision(self, stores: StoreHarness) -> None:
        with pytest.raises(ValueError, match="history"):
            await stores.open(history=0)
