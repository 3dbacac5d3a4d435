"""What only the SQLite store has: a file on disk (created private, refused when corrupt) and
transactions that roll back. The behaviour it shares with every store is in the contract suite
(test_store_contract.py)."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest

from agent.aio.bridge import ThreadBridge
from agent.errors import StoreError
from agent.master.store.sqlite import SqliteStore

pytestmark = pytest.mark.usefixtures("blockbuster")


async def test_creates_its_directory_private_and_reopens_its_data(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    path = tmp_path / "data" / "master" / "store.db"
    store = await SqliteStore.open(path, bridge)
    rev = await store.put("/nodes/a", b"1")
    await store.close()
    mode = (await bridge.run(path.parent.stat)).st_mode
    assert stat.S_IMODE(mode) == 0o700
    reopened = await SqliteStore.open(path, bridge)
    assert reopened.revision == rev
    assert await reopened.list_prefix("/nodes/") == (
        [await reopened.get("/nodes/a")],
        rev,
    )
    await reopened.close()


async def test_a_corrupt_file_is_a_store_error_naming_it(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    path = tmp_path / "store.db"
    await bridge.run(path.write_bytes, b"this is not a database, " * 100)
    with pytest.raises(StoreError, match=re.escape(f"store {path}: file is not a database")):
        await SqliteStore.open(path, bridge)


async def test_a_failed_write_rolls_back_and_the_store_goes_on(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    store = await SqliteStore.open(tmp_path / "store.db", bridge)
    rev = await store.put("/k", b"1")
    with pytest.raises(StoreError, match=r"^store .*/store\.db: "):
        await store.put("/k", object())  # type: ignore[arg-type]  # not bindable: fails mid-way
    assert store.revision == rev
    assert await store.list_prefix("/") == ([await store.get("/k")], rev)
    assert await store.put("/k", b"2") == rev + 1
    await store.close()


def _files_of(store: SqliteStore, path: Path) -> dict[str, tuple[int, bytes]]:
    """Mode and bytes of the database and the side files that exist (blocking)."""
    found = {}
    for each in (path, *store.side_files()):
        if each.exists():
            found[each.name] = (stat.S_IMODE(each.stat().st_mode), each.read_bytes())
    return found


async def test_its_files_are_private_whatever_the_umask(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    path = tmp_path / "data" / "store.db"
    loose = os.umask(0o022)  # the usual shell umask: files 0644 unless set explicitly
    try:
        store = await SqliteStore.open(path, bridge)
        await store.put("/k", b"v")
        files = await bridge.run(_files_of, store, path)
    finally:
        os.umask(loose)
    assert set(files) == {"store.db", "store.db-wal", "store.db-shm"}
    assert {name: mode for name, (mode, _) in files.items()} == dict.fromkeys(files, 0o600)
    assert stat.S_IMODE((await bridge.run(path.parent.stat)).st_mode) == 0o700
    await store.close()


SECRET = b"DB_PASSWORD-hunter2-d7c1f0"


async def test_a_deleted_value_is_gone_from_the_files_once_the_history_drops_it(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    path = tmp_path / "store.db"
    store = await SqliteStore.open(path, bridge, history=4)
    await store.put("/pods/default/db", b'{"env": "' + SECRET + b'"}' + b" " * 3000)
    files = await bridge.run(_files_of, store, path)
    assert any(SECRET in data for _, data in files.values())  # the grep below can see it
    await store.delete("/pods/default/db")
    for n in range(8):  # past the history window: the log's copies are compacted
        await store.put(f"/nodes/n{n}", b"x" * 100)
    files = await bridge.run(_files_of, store, path)
    assert not [name for name, (_, data) in files.items() if SECRET in data]
    assert await store.get("/nodes/n7") is not None
    await store.close()
    assert SECRET not in await bridge.run(path.read_bytes)


async def test_concurrent_writes_share_transactions_and_each_sees_those_before_it(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    """Group commit: writes that arrive while a commit runs go in one transaction together,
    each with its own revision, applied in turn (one compare-and-swap of a key wins)."""
    store = await SqliteStore.open(tmp_path / "store.db", bridge)
    puts = [store.put(f"/nodes/n{i}", b"x") for i in range(100)]
    swaps = [store.compare_and_swap("/nodes/race", f"{i}".encode(), 0) for i in range(20)]
    results = await asyncio.gather(*puts, *swaps)
    revisions = [r for r in results if r is not None]
    assert sorted(revisions) == list(range(1, 102))  # 100 puts and the one swap that won
    assert store.revision == 101
    assert store.transactions < 100  # grouped (the first write commits alone)
    winner = await store.get("/nodes/race")
    assert winner is not None and winner.mod_revision in revisions
    assert (await store.list_prefix("/nodes/"))[1] == 101
    await store.close()
    reopened = await SqliteStore.open(tmp_path / "store.db", bridge)
    assert reopened.revision == 101 and len((await reopened.list_prefix("/nodes/"))[0]) == 101
    await reopened.close()


async def test_a_failed_group_fails_each_of_its_writes_and_the_store_goes_on(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    store = await SqliteStore.open(tmp_path / "store.db", bridge)
    rev = await store.put("/k", b"1")
    # Every write of the next group fails (a read-only database), none is half-applied.
    await bridge.run(lambda: store._db and store._db.execute("PRAGMA query_only=ON"))
    results = await asyncio.gather(
        *(store.put(f"/n{i}", b"x") for i in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, StoreError) and "readonly" in str(r) for r in results), results
    assert store.revision == rev
    assert await store.list_prefix("/") == ([await store.get("/k")], rev)
    await bridge.run(lambda: store._db and store._db.execute("PRAGMA query_only=OFF"))
    assert await store.put("/n0", b"y") == rev + 1
    await store.close()
