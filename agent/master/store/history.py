"""The change history of the backends that keep their own (memory, SQLite): when to compact it,
whether a watch can start from a revision, waking watchers, and the watch loop itself.

A backend in front of a server that keeps history itself (etcd) uses none of this.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from agent.errors import CompactedError, StoreError
from agent.master.store.base import WatchEvent

HISTORY_REVISIONS = 10_000
COMPACT_EVERY_REVISIONS = 1000
WATCH_BATCH_EVENTS = 500


def check_history(history: int) -> int:
    if history < 1:
        raise ValueError(f"history must be >= 1 revision, not {history}")
    return history


def compaction_floor(revision: int, history: int) -> int | None:
    """After the change at ``revision``: drop the history up to this revision (inclusive), or
    None when this change does not compact. In batches (a delete per write would double the
    write cost), but at least as often as the history is long, so a short history really is
    short: between ``history`` and ``history + min(history, COMPACT_EVERY_REVISIONS) - 1``
    revisions are kept."""
    if revision % min(COMPACT_EVERY_REVISIONS, history) == 0:
        return revision - history
    return None


def check_watch_start(after: int, revision: int, oldest_kept: int | None) -> None:
    """Raise CompactedError unless every change after ``after`` is still kept (``oldest_kept``
    is the revision of the oldest kept change, None when none is)."""
    if after > revision:
        raise CompactedError(f"revision {after} is newer than the store ({revision}); relist")
    if after < revision and oldest_kept is not None and after + 1 < oldest_kept:
        raise CompactedError(
            f"revision {after} is compacted (oldest kept: {oldest_kept - 1}); relist"
        )


class ChangeSignal:
    """Wakes every waiting watcher at each change, and at close."""

    def __init__(self) -> None:
        self._next = asyncio.Event()
        self.closed = False

    def next(self) -> asyncio.Event:
        """The event set at the next change (take it before looking, then wait on it)."""
        return self._next

    def changed(self) -> None:
        event, self._next = self._next, asyncio.Event()
        event.set()

    def close(self) -> None:
        self.closed = True
        self.changed()


async def follow(
    signal: ChangeSignal,
    revision: Callable[[], int],
    read_after: Callable[[int], Awaitable[list[WatchEvent]]],
    after_revision: int,
) -> AsyncIterator[WatchEvent]:
    """The watch loop: ``read_after(rev)`` returns up to WATCH_BATCH_EVENTS kept changes under
    the watched prefix after ``rev`` (raising CompactedError when they are gone); this yields
    them and waits for the next change when it has caught up."""
    last = after_revision
    while True:
        if signal.closed:
            raise StoreError("store is closed")
        changed = signal.next()
        scanned_to = revision()
        events = await read_after(last)
        for event in events:
            last = event.revision
            yield event
        if len(events) == WATCH_BATCH_EVENTS:
            continue
        # Changes up to ``scanned_to`` outside the prefix need not be looked at again.
        last = max(last, scanned_to)
        if revision() == scanned_to:
            await changed.wait()
