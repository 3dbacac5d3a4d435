"""What only the SQLite store has: a file on disk (created private, refused when corrupt) and
transactions that roll back. The behaviour it shares with every store is in the contract suite
(test_store_contract.py)."""

from __future__ import annotations

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
