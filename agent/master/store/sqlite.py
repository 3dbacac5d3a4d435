"""SQLite backend of the master store (embedded, zero set-up), in WAL mode.

Every change is one transaction that updates the ``kv`` table and appends to the ``log`` table
under a new revision, so a watcher resumes from any kept revision without missing or replaying
changes. The log is compacted to the last ``history`` revisions (``store/history.py``, the
same rule as the memory store); a watch from before that gets :class:`CompactedError` (HTTP
410, like Kubernetes' "too old resource version") and relists. All sqlite calls run in the
thread bridge under one lock (one connection, serialized writes, which is what SQLite does
anyway); ``synchronous=FULL`` so an acknowledged change survives a power cut, not only a crash.

Writes are committed in groups: the writes that arrive while a commit is in its thread wait
together and go in the next transaction (at most ``GROUP_COMMIT_WRITES``), one thread call and
one fsync for all of them, each still applied in its turn (a compare-and-swap sees the writes
before it) and acknowledged only once the transaction is durable. One transaction per write
cost a thread hand-off and up to five GIL hand-backs per statement; with the event loop busy
(5,000 nodes' TLS handshakes) each hand-back waited out the interpreter's 5 ms switch interval
and writes fell from ~1,000/s to ~60/s, which stalled registrations and first lease renewals
(BENCHMARKS.md, 2026-12-03). A failed transaction fails every write of its group.

The files are the owner's only (0600, the directory 0700: set explicitly, whatever the umask),
and deleted values do not linger in them: ``secure_delete`` zeroes freed content, and every
compaction of the history ends with a truncating WAL checkpoint, so a deleted object (kept in
the history for watchers, as etcd keeps it until compaction) is gone from the database and the
``-wal`` file at the first compaction after it left the history window.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from agent.aio.bridge import ThreadBridge
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

T = TypeVar("T")
GROUP_COMMIT_WRITES = 256  # writes in one transaction at most (bounded time under the lock)
DIR_MODE = 0o700
FILE_MODE = 0o600
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


_LAST_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def _prefix_range(prefix: str) -> tuple[str, str | bytes]:
    """``(low, high)`` such that a key starts with ``prefix`` iff ``low <= key < high`` (a
    range the primary key index answers). ``high`` is the prefix with its last code point
    incremented, so keys containing U+10FFFF are in range too (SQLite compares UTF-8 bytes,
    which orders like code points). No string is above every key that starts with an empty
    prefix or one of only U+10FFFF: then ``high`` is a blob, which SQLite orders after all
    text."""
    stem = prefix.rstrip(chr(_LAST_CODE_POINT))
    if not stem:
        return prefix, b""
    following = ord(stem[-1]) + 1
    if following in _SURROGATES:  # not encodable, so in no key: skip to the next one
        following = _SURROGATES.stop
    return prefix, stem[:-1] + chr(following)


Body = Callable[[sqlite3.Connection, int], int | None]
"""One write: applied in the open transaction with the next free revision; returns the
revision it used, or None when it wrote nothing (a failed compare-and-swap)."""


@dataclass(slots=True)
class _PendingWrite:
    body: Body
    done: asyncio.Future[int | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
            # Retrieved here: a caller that was cancelled meanwhile no longer awaits it.
            self.done.add_done_callback(lambda done: done.exception())


class SqliteStore(Store):
    def __init__(
        self, path: Path, bridge: ThreadBridge, *, history: int = HISTORY_REVISIONS
    ) -> None:
        self._path = path
        self._bridge = bridge
        self._history = check_history(history)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._signal = ChangeSignal()
        self.revision = 0
        self._pending: list[_PendingWrite] = []
        self._committer: asyncio.Task[None] | None = None
        self.transactions = 0  # committed write transactions (tests see the grouping)

    @classmethod
    async def open(
        cls, path: Path, bridge: ThreadBridge, *, history: int = HISTORY_REVISIONS
    ) -> SqliteStore:
        store = cls(path, bridge, history=history)
        await store._run(store._open)
        return store

    def _open(self, db: sqlite3.Connection | None) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        # Created private before SQLite opens it; SQLite gives -wal and -shm the database
        # file's mode, and they are set again below in case an older version made them.
        os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for path in (self._path, *self.side_files()):
            with contextlib.suppress(FileNotFoundError):
                path.chmod(FILE_MODE)
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        self.revision = int(row[0]) if row else 0
        self._db = conn

    def side_files(self) -> tuple[Path, Path]:
        """The ``-wal`` and ``-shm`` files SQLite keeps beside the database."""
        return (
            self._path.with_name(self._path.name + "-wal"),
            self._path.with_name(self._path.name + "-shm"),
        )

    async def _run(self, func: Callable[[sqlite3.Connection | None], T]) -> T:
        def locked() -> T:
            with self._lock:
                return func(self._db)

        try:
            return await self._bridge.run(locked)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: {exc}") from exc

    def _conn(self, db: sqlite3.Connection | None) -> sqlite3.Connection:
        if db is None:
            raise StoreError("store is closed")
        return db

    def _write(
        self,
        db: sqlite3.Connection,
        key: str,
        value: bytes,
        kind: EventType,
        create_rev: int | None,
        rev: int,
    ) -> int:
        if kind is EventType.PUT:
            db.execute(
                "INSERT INTO kv(key, value, create_rev, mod_rev) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, mod_rev=excluded.mod_rev",
                (key, value, create_rev or rev, rev),
            )
        else:
            db.execute("DELETE FROM kv WHERE key=?", (key,))
        db.execute(
            "INSERT INTO log(rev, key, type, value) VALUES (?, ?, ?, ?)",
            (rev, key, kind.value, value),
        )
        db.execute(
            "INSERT INTO meta(name, value) VALUES ('revision', ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (rev,),
        )
        floor = compaction_floor(rev, self._history)
        if floor is not None:
            db.execute("DELETE FROM log WHERE rev <= ?", (floor,))
        return rev

    def _transaction(self, db: sqlite3.Connection | None, bodies: list[Body]) -> list[int | None]:
        """Applies ``bodies`` in order in one transaction; the store's revision moves (and the
        results count) only once it is committed."""
        conn = self._conn(db)
        conn.execute("BEGIN IMMEDIATE")
        results: list[int | None] = []
        revision = self.revision
        try:
            for body in bodies:
                result = body(conn, revision + 1)
                results.append(result)
                if result is not None:
                    revision = result
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.transactions += 1
        if revision != self.revision:
            compacted = any(
                compaction_floor(rev, self._history) is not None
                for rev in range(self.revision + 1, revision + 1)
            )
            self.revision = revision
            if compacted:
                # What the compaction freed is zeroed in the WAL's pages; this moves them into
                # the database and empties the WAL, whose older frames still hold the values.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return results

    async def _commit(self, body: Body) -> int | None:
        """``body`` written in the next group commit; its result once that is durable.
        Cancelling the caller abandons the wait, not the write (as ``ThreadBridge.run``)."""
        write = _PendingWrite(body)
        self._pending.append(write)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(
                self._commit_pending(), name="sqlite-group-commit"
            )
        return await asyncio.shield(write.done)

    async def _commit_pending(self) -> None:
        """Commits the waiting writes, a group at a time, until none is left."""
        while self._pending:
            group = self._pending[:GROUP_COMMIT_WRITES]
            del self._pending[:GROUP_COMMIT_WRITES]
            try:
                results = await self._run(
                    functools.partial(self._transaction, bodies=[w.body for w in group])
                )
            except Exception as exc:  # every write of the group failed with it
                for write in group:
                    write.fail(exc)
                continue
            except BaseException:  # cancelled: the loop is going away; nobody is left to wait
                for write in (*group, *self._pending):
                    write.fail(StoreError("store is closing"))
                self._pending.clear()
                raise
            for write, result in zip(group, results, strict=True):
                if not write.done.done():
                    write.done.set_result(result)
            if any(result is not None for result in results):
                self._signal.changed()

    async def get(self, key: str) -> KeyValue | None:
        def read(db: sqlite3.Connection | None) -> KeyValue | None:
            row = (
                self._conn(db)
                .execute("SELECT key, value, create_rev, mod_rev FROM kv WHERE key=?", (key,))
                .fetchone()
            )
            return KeyValue(row[0], row[1], row[2], row[3]) if row else None

        return await self._run(read)

    async def put(self, key: str, value: bytes) -> int:
        def body(db: sqlite3.Connection, rev: int) -> int:
            row = db.execute("SELECT create_rev FROM kv WHERE key=?", (key,)).fetchone()
            return self._write(db, key, value, EventType.PUT, row[0] if row else None, rev)

        rev = await self._commit(body)
        assert rev is not None
        return rev

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        def body(db: sqlite3.Connection, rev: int) -> int | None:
            row = db.execute("SELECT create_rev, mod_rev FROM kv WHERE key=?", (key,)).fetchone()
            current = row[1] if row else 0
            if current != expected_mod_revision:
                return None
            return self._write(db, key, value, EventType.PUT, row[0] if row else None, rev)

        return await self._commit(body)

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        def body(db: sqlite3.Connection, rev: int) -> int | None:
            row = db.execute("SELECT value, mod_rev FROM kv WHERE key=?", (key,)).fetchone()
            if row is None or (
                expected_mod_revision is not None and row[1] != expected_mod_revision
            ):
                return None
            return self._write(db, key, row[0], EventType.DELETE, None, rev)

        return await self._commit(body)

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        def read(db: sqlite3.Connection | None) -> tuple[list[KeyValue], int]:
            rows = (
                self._conn(db)
                .execute(
                    "SELECT key, value, create_rev, mod_rev FROM kv "
                    "WHERE key >= ? AND key < ? ORDER BY key",
                    _prefix_range(prefix),
                )
                .fetchall()
            )
            return [KeyValue(*row) for row in rows], self.revision

        return await self._run(read)

    def _history_after(
        self, db: sqlite3.Connection | None, *, prefix: str, after: int
    ) -> list[WatchEvent]:
        conn = self._conn(db)
        oldest = conn.execute("SELECT MIN(rev) FROM log").fetchone()[0]
        check_watch_start(after, self.revision, oldest)
        rows = conn.execute(
            "SELECT rev, key, type, value FROM log "
            "WHERE rev > ? AND key >= ? AND key < ? ORDER BY rev LIMIT ?",
            (after, *_prefix_range(prefix), WATCH_BATCH_EVENTS),
        ).fetchall()
        return [WatchEvent(EventType(r[2]), r[1], r[3], r[0]) for r in rows]

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        async def read_after(after: int) -> list[WatchEvent]:
            return await self._run(
                functools.partial(self._history_after, prefix=prefix, after=after)
            )

        return follow(self._signal, lambda: self.revision, read_after, after_revision)

    async def close(self) -> None:
        def close(db: sqlite3.Connection | None) -> None:
            if db is not None:
                db.close()
            self._db = None

        if self._committer is not None:
            with contextlib.suppress(Exception):
                await self._committer  # the writes already acknowledged to nobody yet
        if self._db is not None:
            await self._run(close)
        self._signal.close()
