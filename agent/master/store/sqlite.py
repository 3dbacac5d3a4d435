"""SQLite backend of the master store (embedded, zero set-up), in WAL mode.

Every change is one transaction that updates the ``kv`` table and appends to the ``log`` table
under a new revision, so a watcher resumes from any kept revision without missing or replaying
changes. The log is compacted to the last ``history`` revisions (``store/history.py``, the
same rule as the memory store); a watch from before that gets :class:`CompactedError` (HTTP
410, like Kubernetes' "too old resource version") and relists. All sqlite calls run in the
thread bridge under one lock (one connection, serialized writes, which is what SQLite does
anyway); ``synchronous=FULL`` so an acknowledged change survives a power cut, not only a crash.

The files are the owner's only (0600, the directory 0700: set explicitly, whatever the umask),
and deleted values do not linger in them: ``secure_delete`` zeroes freed content, and every
compaction of the history ends with a truncating WAL checkpoint, so a deleted object (kept in
the history for watchers, as etcd keeps it until compaction) is gone from the database and the
``-wal`` file at the first compaction after it left the history window.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
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
    ) -> int:
        rev = self.revision + 1
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

    def _transaction(
        self, db: sqlite3.Connection | None, body: Callable[[sqlite3.Connection], int | None]
    ) -> int | None:
        conn = self._conn(db)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if result is not None:
            self.revision = result
            if compaction_floor(result, self._history) is not None:
                # What the compaction freed is zeroed in the WAL's pages; this moves them into
                # the database and empties the WAL, whose older frames still hold the values.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return result

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
        def body(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT create_rev FROM kv WHERE key=?", (key,)).fetchone()
            return self._write(db, key, value, EventType.PUT, row[0] if row else None)

        rev = await self._run(lambda db: self._transaction(db, body))
        assert rev is not None
        self._signal.changed()
        return rev

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        def body(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT create_rev, mod_rev FROM kv WHERE key=?", (key,)).fetchone()
            current = row[1] if row else 0
            if current != expected_mod_revision:
                return None
            return self._write(db, key, value, EventType.PUT, row[0] if row else None)

        rev = await self._run(lambda db: self._transaction(db, body))
        if rev is not None:
            self._signal.changed()
        return rev

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        def body(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT value, mod_rev FROM kv WHERE key=?", (key,)).fetchone()
            if row is None or (
                expected_mod_revision is not None and row[1] != expected_mod_revision
            ):
                return None
            return self._write(db, key, row[0], EventType.DELETE, None)

        rev = await self._run(lambda db: self._transaction(db, body))
        if rev is not None:
            self._signal.changed()
        return rev

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

        if self._db is not None:
            await self._run(close)
        self._signal.close()
