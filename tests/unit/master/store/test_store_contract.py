"""The Store contract suite (tests/contracts/store.py) against every local backend.

A backend joins with one entry in ``BACKENDS``: a function of the test's tmp dir and thread
bridge returning how to open it and what it can do. (The etcd store joins the same way in
tests/etcd/test_store_contract_etcd.py, where a real etcd runs: ``make test-etcd``.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.aio.bridge import ThreadBridge
from agent.master.store.base import Store
from agent.master.store.memory import MemoryStore
from agent.master.store.sqlite import SqliteStore
from tests.contracts.store import StoreBackend, StoreContract, StoreHarness

pytestmark = pytest.mark.usefixtures("blockbuster")


def memory_backend(tmp_path: Path, bridge: ThreadBridge) -> StoreBackend:
    async def open_store(history: int) -> Store:
        return MemoryStore(history=history)

    return StoreBackend(open=open_store, persistent=False)


def sqlite_backend(tmp_path: Path, bridge: ThreadBridge) -> StoreBackend:
    async def open_store(history: int) -> Store:
        return await SqliteStore.open(tmp_path / "store.db", bridge, history=history)

    return StoreBackend(open=open_store, persistent=True)


BACKENDS: dict[str, Callable[[Path, ThreadBridge], StoreBackend]] = {
    "memory": memory_backend,
    "sqlite": sqlite_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path, bridge: ThreadBridge
) -> AsyncIterator[StoreHarness]:
    harness = StoreHarness(BACKENDS[request.param](tmp_path, bridge))
    yield harness
    await harness.close_all()


class TestStoreContract(StoreContract):
    pass
