"""What only the etcd store has, on a real etcd: TLS with client certificates refused when
wrong, endpoints that fail over, clusters sharing one etcd under their prefixes, listings in
pages at one revision, a foreign writer's garbage refused with our error, watches across an
etcd crash."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from agent.errors import CompactedError, StoreError
from agent.master.store import etcd as etcd_module
from agent.master.store.base import EventType
from agent.master.store.etcd import EtcdStore, tls_context
from tests.contracts.store import take
from tests.etcd.server import EtcdServer
from tests.helpers import free_port

pytestmark = pytest.mark.usefixtures("blockbuster")


def context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    return tls_context(ca, cert, key)


@pytest.fixture(scope="module")
def client_tls(etcd: EtcdServer) -> ssl.SSLContext:
    assert etcd.tls is not None
    return context(etcd.tls.ca_file, etcd.tls.cert_file, etcd.tls.key_file)


@pytest.fixture(scope="module")
def refused_contexts(etcd: EtcdServer) -> dict[str, ssl.SSLContext]:
    assert etcd.tls is not None
    tls = etcd.tls
    return {
        "no client certificate": context(tls.ca_file),
        "a client certificate of another CA": context(
            tls.ca_file, tls.foreign_cert_file, tls.foreign_key_file
        ),
        "etcd's CA not trusted": context(None, tls.cert_file, tls.key_file),
    }


@pytest.mark.parametrize(
    "case",
    ["no client certificate", "a client certificate of another CA", "etcd's CA not trusted"],
)
async def test_tls_without_the_right_certificates_is_refused(
    etcd: EtcdServer, refused_contexts: dict[str, ssl.SSLContext], etcd_prefix: str, case: str
) -> None:
    with pytest.raises(StoreError, match=etcd.endpoint.removeprefix("https://")):
        await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix, tls=refused_contexts[case])


async def test_plain_http_to_a_tls_etcd_is_refused(etcd: EtcdServer, etcd_prefix: str) -> None:
    plain = etcd.endpoint.replace("https://", "http://")
    with pytest.raises(StoreError):
        await EtcdStore.open([plain], prefix=etcd_prefix, tls=None)


async def test_an_endpoint_that_does_not_answer_is_skipped(
    etcd: EtcdServer, client_tls: ssl.SSLContext, etcd_prefix: str
) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    store = await EtcdStore.open([dead, etcd.endpoint], prefix=etcd_prefix, tls=client_tls)
    try:
        rev = await store.put("/k", b"v")
        found = await store.get("/k")
        assert found is not None and found.mod_revision == rev
    finally:
        await store.close()
    with pytest.raises(StoreError, match="no etcd endpoint answers.*" + dead.split("//")[1]):
        await EtcdStore.open([dead], prefix=etcd_prefix, tls=client_tls)


async def test_clusters_sharing_an_etcd_see_only_their_prefix(
    etcd: EtcdServer, client_tls: ssl.SSLContext, etcd_prefix: str
) -> None:
    a = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix + "a/", tls=client_tls)
    b = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix + "b/", tls=client_tls)
    try:
        start = await a.revision()
        watch = a.watch("/pods/", start)
        r1 = await a.put("/pods/x", b"a1")
        r2 = await b.put("/pods/x", b"b1")  # the same key in the other cluster
        r3 = await a.put("/pods/y", b"a2")
        assert r1 < r2 < r3  # one revision for the etcd: increasing, not consecutive per store
        assert [kv.value for kv in (await a.list_prefix(""))[0]] == [b"a1", b"a2"]
        assert [kv.value for kv in (await b.list_prefix(""))[0]] == [b"b1"]
        events = await take(watch, 2)
        assert [(e.key, e.value, e.revision) for e in events] == [
            ("/pods/x", b"a1", r1),
            ("/pods/y", b"a2", r3),
        ]
        assert await b.delete("/pods/y") is None
    finally:
        await a.close()
        await b.close()


async def test_a_listing_longer_than_a_page_is_one_consistent_snapshot(
    etcd: EtcdServer,
    client_tls: ssl.SSLContext,
    etcd_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(etcd_module, "RANGE_PAGE_KEYS", 7)
    store = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix, tls=client_tls)
    writer = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix, tls=client_tls)
    try:
        for i in range(30):
            await store.put(f"/n/{i:02d}", str(i).encode())
        listing = asyncio.create_task(store.list_prefix("/n/"))
        writes = [writer.put(f"/n/{i:02d}", b"later") for i in range(30, 40)]
        await asyncio.gather(*writes)
        items, rev = await listing
        # Whatever the interleaving: exactly the keys as they were at ``rev``.
        later = [kv for kv in items if kv.value == b"later"]
        assert all(kv.mod_revision <= rev for kv in items)
        assert [kv.key for kv in items] == [f"/n/{i:02d}" for i in range(30 + len(later))]
        assert len(items) >= 30
        assert [kv.key for kv in (await store.list_prefix("/n/"))[0]] == [
            f"/n/{i:02d}" for i in range(40)
        ]
    finally:
        await store.close()
        await writer.close()


async def _raw_put(server: EtcdServer, tls: ssl.SSLContext, key: bytes, value: bytes) -> None:
    body = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.endpoint + "/v3/kv/put", data=json.dumps(body), ssl=tls) as resp,
    ):
        assert resp.status == 200


async def test_a_foreign_key_that_is_not_utf8_is_refused_with_our_error(
    etcd: EtcdServer, client_tls: ssl.SSLContext, etcd_prefix: str
) -> None:
    store = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix, tls=client_tls)
    try:
        await store.put("/pods/ok", b"1")
        await _raw_put(etcd, client_tls, etcd_prefix.encode() + b"/pods/\xff\xfe", b"x")
        with pytest.raises(StoreError, match="not UTF-8"):
            await store.list_prefix("/pods/")
        with pytest.raises(StoreError, match="not UTF-8"):
            await take(store.watch("/pods/", 0 + (await store.revision()) - 2), 2)
    finally:
        await store.close()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[tuple[EtcdServer, ssl.SSLContext]]:
    """An etcd of this test's own (it is killed and started again)."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    assert server.tls is not None
    yield server, context(server.tls.ca_file, server.tls.cert_file, server.tls.key_file)
    server.stop()


async def test_a_watch_across_an_etcd_crash(own_etcd: tuple[EtcdServer, ssl.SSLContext]) -> None:
    """etcd killed under a waiting watch: the watch fails (StoreError, the master's watchers
    end and resume); etcd back, a watch from the last revision yields what followed, once."""
    server, tls = own_etcd
    store = await EtcdStore.open([server.endpoint], prefix="/crash/", tls=tls)
    try:
        first = await store.put("/k/a", b"1")
        watch = store.watch("/k/", first - 1)
        [seen] = await take(watch, 1)
        waiting = asyncio.create_task(take(watch, 1))
        await asyncio.to_thread(server.stop)
        with pytest.raises(StoreError):
            await waiting
        with pytest.raises(StoreError):
            await store.put("/k/b", b"down")
        await asyncio.to_thread(server.start)
        second = await store.put("/k/b", b"2")
        await store.delete("/k/a")
        resumed = await take(store.watch("/k/", seen.revision), 2)
        assert [(e.type, e.key, e.revision) for e in resumed] == [
            (EventType.PUT, "/k/b", second),
            (EventType.DELETE, "/k/a", second + 1),
        ]
        with pytest.raises(CompactedError, match="newer"):
            await take(store.watch("/k/", second + 100), 1)
    finally:
        await store.close()


async def test_watches_from_before_a_migration_relist(
    etcd: EtcdServer, client_tls: ssl.SSLContext, etcd_prefix: str
) -> None:
    """After ``set_history_floor`` (what ``node-master migrate`` does once it copied the keys)
    a watch from an earlier revision is 410, in this store and in one opened later."""
    store = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix, tls=client_tls)
    try:
        before = await store.put("/pods/a", b"copied")
        floor = await store.set_history_floor()
        assert floor >= before
        assert (await store.list_prefix(""))[0][0].key == "/pods/a"  # the floor is no key
        with pytest.raises(CompactedError, match="before the store's history"):
            await take(store.watch("/pods/", before - 1), 1)
        after = await store.put("/pods/b", b"new")
        reopened = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix, tls=client_tls)
        try:
            with pytest.raises(CompactedError, match="relist"):
                await take(reopened.watch("/pods/", floor - 1), 1)
            [event] = await take(reopened.watch("/pods/", floor), 1)
            assert (event.key, event.revision) == ("/pods/b", after)
        finally:
            await reopened.close()
    finally:
        await store.close()
