"""In-memory backend of the master store: the same contract as SQLite, nothing on disk.

For tests of the master's state machines (fast, no threads) and for a master whose state may
be lost with the process. Every call first yields to the event loop, as a call to a real
backend would, so callers' interleavings are exercised; the change itself is then atomic (one
thread, no await while changing). History is a list of the kept changes, one per revision,
compacted by the same rule as SQLite's.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator

from agent.errors import StoreError
from agent.master.store.base import EventType, KeyValue, Store, WatchEvent
from agent.master.store.history import (
    HISTORY_REVISIONS,
    WATCH_BATCH_EVENTS,
    ChangeSignal,
    check_history,
    check_watch_start,
    compaction_floor,
    follow,
)


class MemoryStore(Store):
    def __init__(self, *, history: int = HISTORY_REVISIONS) -> None:
        self._history = check_history(history)
        self._kv: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # sorted, for prefix listings
        self._log: list[WatchEvent] = []  # consecutive revisions, oldest first
        self._signal = ChangeSignal()
        self.revision = 0

    async def _enter(self) -> None:
        await asyncio.sleep(0)
        if self._signal.closed:
            raise StoreError("store is closed")

    def _write(self, kind: EventType, key: str, value: bytes) -> int:
        rev = self.revision + 1
        if kind is EventType.PUT:
            old = self._kv.get(key)
            if old is None:
                bisect.insort(self._keys, key)
            create = old.create_revision if old is not None else rev
            self._kv[key] = KeyValue(key, bytes(value), create, rev)
        else:
            del self._kv[key]
            del self._keys[bisect.bisect_left(self._keys, key)]
        self._log.append(WatchEvent(kind, key, bytes(value), rev))
        self.revision = rev
        floor = compaction_floor(rev, self._history)
        if floor is not None and self._log:
            del self._log[: max(0, floor - self._log[0].revision + 1)]
        self._signal.changed()
        return rev

    async def get(self, key: str) -> KeyValue | None:
        await self._enter()
        return self._kv.get(key)

    async def put(self, key: str, value: bytes) -> int:
        await self._enter()
        return self._write(EventType.PUT, key, value)

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        await self._enter()
        current = self._kv.get(key)
        if (current.mod_revision if current is not None else 0) != expected_mod_revision:
            return None
        return self._write(EventType.PUT, key, value)

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        await self._enter()
        current = self._kv.get(key)
        if current is None or (
            expected_mod_revision is not None and current.mod_revision != expected_mod_revision
        ):
            return None
        return self._write(EventType.DELETE, key, current.value)

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        await self._enter()
        items = []
        for key in self._keys[bisect.bisect_left(self._keys, prefix) :]:
            if not key.startswith(prefix):
                break
            items.append(self._kv[key])
        return items, self.revision

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        async def read_after(after: int) -> list[WatchEvent]:
            await self._enter()
            oldest = self._log[0].revision if self._log else None
            check_watch_start(after, self.revision, oldest)
            start = after + 1 - oldest if oldest is not None else 0
            events: list[WatchEvent] = []
            for event in self._log[max(0, start) :]:
                if event.key.startswith(prefix):
                    events.append(event)
                    if len(events) == WATCH_BATCH_EVENTS:
                        break
            return events

        return follow(self._signal, lambda: self.revision, read_after, after_revision)

    async def close(self) -> None:
        self._signal.close()
