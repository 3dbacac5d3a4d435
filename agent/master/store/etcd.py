"""etcd backend of the master store: etcd v3 through its JSON gateway (``/v3/``, etcd 3.4 and
later) over aiohttp, TLS with a client certificate when the endpoints are ``https://``.

Why the gateway and not a gRPC client: docs/decisions.md ("The etcd store", measured with
bench/etcd_client.py). The mapping onto the Store contract (agent/master/store/base.py):

* Revisions are etcd's: a change's revision is the ``header.revision`` of its answer, a key's
  ``create_revision``/``mod_revision`` etcd's own. In an etcd this cluster owns alone they follow
  each other one by one, as in the other backends; in an etcd shared with other clusters (each
  under its own ``prefix``) theirs come in between: increasing, not consecutive.
* Every read-modify-write is a transaction comparing the key's ``mod_revision``
  (``compare_and_swap``, ``delete`` with an expectation), so two masters never both win.
* Watches are etcd watches from ``after_revision + 1`` with the previous value (a deletion
  carries the last value); etcd's ``compact_revision`` answer is :class:`CompactedError` (410,
  relist). A watch stream that breaks resumes from the last revision it yielded on the next
  endpoint, once per endpoint; then the watch fails with StoreError (the agent's watch of the
  master ends and resumes from its revision).
* History: the store compacts etcd (every ``min(history, 1000)`` revisions, keeping ``history``
  of them), and a watcher whose next event is older than that gets CompactedError, as in the
  other backends. Compaction is etcd-wide: an etcd shared with others wants one compaction
  policy (etcd's ``--auto-compaction-*``, ``history=None`` here).

Writes are never retried on another endpoint after the request may have reached etcd (a
transaction applied whose answer was lost would read as failed): only a connection that could
not be opened moves to the next endpoint. Everything etcd answers is parsed by
``etcd_wire`` (bounded, checked, our errors).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from agent.errors import CompactedError, StoreError
from agent.master.store.base import KeyValue, Store, WatchEvent
from agent.master.store.etcd_wire import (
    MAX_ANSWER_BYTES,
    MAX_WATCH_MESSAGE_BYTES,
    KeyCodec,
    b64,
    check_error,
    create_request,
    load_json,
    parse_create,
    parse_delete,
    parse_keepalive,
    parse_lease_grant,
    parse_put,
    parse_range,
    parse_txn,
    parse_watch_message,
    prefix_end,
    put_request,
    range_request,
    txn_on_mod_revision,
    watch_request,
)
from agent.master.store.history import COMPACT_EVERY_REVISIONS, HISTORY_REVISIONS, check_history

REQUEST_TIMEOUT_S = 10.0  # one unary call, connecting included
CONNECT_TIMEOUT_S = 5.0
RANGE_PAGE_KEYS = 500  # a listing is read in pages of this many keys, at one revision
LIST_ATTEMPTS = 3  # a listing whose revision is compacted between its pages starts again
UNARY_CONNECTIONS = 32  # unary calls share these; every watch has a connection of its own
DEFAULT_PREFIX = "/node-master/"


def tls_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """The client context for ``https://`` endpoints (blocking: reads the files): trust
    ``ca_file`` only (the system store when None), present the client certificate if given."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class _Broken(Exception):
    """A watch stream ended or broke without an answer from etcd: resume elsewhere."""


class EtcdStore(Store):
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        tls: ssl.SSLContext | None = None,
        history: int | None = HISTORY_REVISIONS,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd store: no endpoints")
        if not prefix:
            raise ValueError("etcd store: the key prefix must not be empty")  # etcd has no key ""
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0  # index of the endpoint tried first
        self._codec = KeyCodec(prefix)
        self._tls = tls
        self._history = check_history(history) if history is not None else None
        self._compacted = 0  # revisions below this one are compacted (by this store)
        self._compact_mark = 0  # the revision of the last compaction (or of the open)
        self._compacting: asyncio.Lock | None = None
        # Whether this store compacts etcd now: with several masters only the leader does
        # (agent.master.leader sets it); alone, always.
        self.may_compact: Callable[[], bool] = lambda: True
        self._unary: aiohttp.ClientSession | None = None
        self._watches: aiohttp.ClientSession | None = None
        self._streams: set[aiohttp.ClientResponse] = set()
        self._closed = False
        self._floor = 0  # watches from before this revision relist (a migration's floor)
        # Outside the store's key range (no valid prefix holds a NUL): "/node-master\0floor".
        self._floor_key = self._codec.prefix.rstrip(b"/") + b"\0history-floor"

    @classmethod
    async def open(
        cls,
        endpoints: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        tls: ssl.SSLContext | None = None,
        history: int | None = HISTORY_REVISIONS,
    ) -> EtcdStore:
        """Connect and check that etcd answers (StoreError naming the endpoints otherwise)."""
        store = cls(endpoints, prefix=prefix, tls=tls, history=history)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        store._unary = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls or False, limit=UNARY_CONNECTIONS),
            timeout=timeout,
        )
        store._watches = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls or False, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S),
        )
        store._compacting = asyncio.Lock()
        try:
            store._compact_mark = await store.revision()
            store._floor = await store._read_floor()
        except BaseException:
            await store.close()
            raise
        return store

    # -- transport ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _order(self) -> list[str]:
        n = len(self._endpoints)
        return [self._endpoints[(self._current + i) % n] for i in range(n)]

    async def _call(self, path: str, body: dict[str, Any], what: str) -> bytes:
        """POST ``body`` to ``path`` on the first endpoint that accepts a connection; the
        answer's body (bounded). StoreError when none does or the call fails."""
        self._check_open()
        assert self._unary is not None
        data = json.dumps(body).encode()
        failures: list[str] = []
        for index, endpoint in enumerate(self._order()):
            try:
                async with self._unary.post(
                    endpoint + path, data=data, headers={"Content-Type": "application/json"}
                ) as resp:
                    answer = await _read_bounded(resp, MAX_ANSWER_BYTES, what)
                    if resp.status != 200 and not answer.lstrip().startswith(b"{"):
                        raise StoreError(f"{what}: etcd {endpoint} answered HTTP {resp.status}")
                    self._current = (self._current + index) % len(self._endpoints)
                    return answer
            except aiohttp.ClientConnectorError as exc:  # never reached etcd: try the next
                failures.append(f"{endpoint}: {exc.os_error or exc}")
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._check_open()
                raise StoreError(
                    f"{what}: etcd {endpoint}: {exc.__class__.__name__}: {exc}"
                ) from exc
        self._check_open()
        raise StoreError(f"{what}: no etcd endpoint answers ({'; '.join(failures)})")

    # -- the Store ----------------------------------------------------------------------------

    async def revision(self) -> int:
        """etcd's current revision (the header of a read of one key)."""
        key = self._codec.prefix
        answer = await self._call("/v3/kv/range", range_request(key), "etcd revision")
        return parse_range(answer, self._codec, "", None, "etcd revision").revision

    async def get(self, key: str) -> KeyValue | None:
        what = f"get {key[:80]!r}"
        raw = self._codec.encode(key)
        page = parse_range(
            await self._call("/v3/kv/range", range_request(raw), what), self._codec, key, None, what
        )
        if len(page.items) > 1 or (page.items and page.items[0].key != key):
            raise StoreError(f"{what}: etcd answered other keys")
        return page.items[0] if page.items else None

    async def put(self, key: str, value: bytes) -> int:
        what = f"put {key[:80]!r}"
        raw = self._codec.encode(key)
        revision = parse_put(await self._call("/v3/kv/put", put_request(raw, value), what), what)
        await self._maybe_compact(revision)
        return revision

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        what = f"compare-and-swap {key[:80]!r}"
        raw = self._codec.encode(key)
        body = txn_on_mod_revision(
            raw, expected_mod_revision, {"request_put": put_request(raw, value)}
        )
        revision, succeeded = parse_txn(await self._call("/v3/kv/txn", body, what), what)
        if not succeeded:
            return None
        await self._maybe_compact(revision)
        return revision

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        what = f"delete {key[:80]!r}"
        raw = self._codec.encode(key)
        if expected_mod_revision == 0:  # "must not exist": nothing to delete
            self._check_open()
            return None
        if expected_mod_revision is None:
            revision, deleted = parse_delete(
                await self._call("/v3/kv/deleterange", {"key": range_request(raw)["key"]}, what),
                what,
            )
            if not deleted:
                return None
        else:
            body = txn_on_mod_revision(
                raw,
                expected_mod_revision,
                {"request_delete_range": {"key": range_request(raw)["key"]}},
            )
            revision, succeeded = parse_txn(await self._call("/v3/kv/txn", body, what), what)
            if not succeeded:
                return None
        await self._maybe_compact(revision)
        return revision

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        what = f"list {prefix[:80]!r}"
        low = self._codec.encode(prefix)
        end = prefix_end(low)
        for _ in range(LIST_ATTEMPTS):
            items: list[KeyValue] = []
            start, at, last = low, 0, None
            try:
                while True:
                    body = range_request(start, end, limit=RANGE_PAGE_KEYS, revision=at)
                    page = parse_range(
                        await self._call("/v3/kv/range", body, what),
                        self._codec,
                        prefix,
                        last,
                        what,
                    )
                    at = at or page.revision
                    items.extend(page.items)
                    if not page.more or not page.items:
                        return items, at
                    last = page.items[-1].key
                    start = self._codec.encode(last) + b"\0"
            except CompactedError:
                continue  # the listing's revision was compacted between two pages: again
        raise StoreError(f"{what}: compacted under the listing {LIST_ATTEMPTS} times")

    async def _read_floor(self) -> int:
        what = "history floor"
        answer = await self._call("/v3/kv/range", range_request(self._floor_key), what)
        data = load_json(answer, what)
        check_error(data, what)
        kvs = data.get("kvs") or []
        if not kvs:
            return 0
        raw = kvs[0].get("value", "") if isinstance(kvs[0], dict) else ""
        try:
            text = base64.b64decode(str(raw), validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            text = ""
        if not text.isdigit() or len(text) > 19:
            raise StoreError(f"{what}: {self._floor_key!r} holds {text[:40]!r}, not a revision")
        return int(text)

    async def set_history_floor(self) -> int:
        """Make watches from a revision before now relist (CompactedError): after copying
        another store's keys in (``node-master migrate``), a revision a client got from that
        store means nothing here. Returns the floor."""
        floor = await self.revision()
        body = {"key": range_request(self._floor_key)["key"], "value": b64(str(floor).encode())}
        parse_put(await self._call("/v3/kv/put", body, "history floor"), "history floor")
        self._floor = floor
        return floor

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        return self._watch(prefix, after_revision)

    async def _watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        what = f"watch {prefix[:80]!r}"
        current = await self.revision()
        if after_revision > current:
            raise CompactedError(
                f"revision {after_revision} is newer than the store ({current}); relist"
            )
        if after_revision < self._floor:
            raise CompactedError(
                f"revision {after_revision} is compacted (from before the store's history, "
                f"which begins at {self._floor}: a migration); relist"
            )
        low = self._codec.encode(prefix)
        end = prefix_end(low)
        last = after_revision
        breaks = 0
        while True:
            self._check_open()
            endpoint = self._endpoints[(self._current + breaks) % len(self._endpoints)]
            try:
                stream = self._stream(endpoint, watch_request(low, end, last + 1), what)
                async with contextlib.aclosing(stream) as batches:
                    async for batch in batches:
                        breaks = 0
                        for event in batch:
                            if event.revision <= last:
                                continue  # yielded before the stream was resumed
                            if event.revision < self._compacted:
                                # Compacted by this store while the watcher lagged behind.
                                raise CompactedError(
                                    f"revision {last} is compacted (oldest kept: "
                                    f"{self._compacted - 1}); relist"
                                )
                            last = event.revision
                            yield event
            except _Broken as exc:
                self._check_open()
                breaks += 1
                if breaks > len(self._endpoints):
                    raise StoreError(f"{what}: the watch stream broke: {exc}") from None

    async def _stream(
        self, endpoint: str, body: dict[str, Any], what: str
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """The event batches of one watch stream (a batch split in fragments put together)."""
        assert self._watches is not None
        try:
            async with self._watches.post(
                endpoint + "/v3/watch",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            ) as resp:
                self._streams.add(resp)
                try:
                    if resp.status != 200:
                        answer = await _read_bounded(resp, MAX_ANSWER_BYTES, what)
                        raise StoreError(
                            f"{what}: etcd answered HTTP {resp.status}: {answer[:200]!r}"
                        )
                    pending: list[WatchEvent] = []
                    async for line in _lines(resp, MAX_WATCH_MESSAGE_BYTES, what):
                        message = parse_watch_message(line, self._codec, what)
                        if message.compact_revision:
                            after = int(body["create_request"]["start_revision"]) - 1
                            raise CompactedError(
                                f"revision {after} is compacted (oldest kept: "
                                f"{message.compact_revision - 1}); relist"
                            )
                        if message.canceled:
                            raise StoreError(f"{what}: etcd canceled the watch: {message.reason}")
                        pending.extend(message.events)
                        if pending and not message.fragment:
                            yield pending
                            pending = []
                finally:
                    self._streams.discard(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._check_open()
            raise _Broken(f"{endpoint}: {exc.__class__.__name__}: {exc}") from exc
        self._check_open()
        raise _Broken(f"{endpoint}: the stream ended")

    # -- leases (the leader election, agent.master.leader) ------------------------------------

    async def lease_grant(self, ttl_s: int) -> tuple[int, int]:
        """A new etcd lease: (its ID, the TTL granted in seconds; etcd raises a TTL under its
        minimum)."""
        answer = await self._call("/v3/lease/grant", {"TTL": str(ttl_s)}, "lease grant")
        return parse_lease_grant(answer, "lease grant")

    async def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``: the TTL it has again, 0 when it is gone (expired, revoked)."""
        what = "lease keep-alive"
        return parse_keepalive(
            await self._call("/v3/lease/keepalive", {"ID": str(lease)}, what), lease, what
        )

    async def lease_revoke(self, lease: int) -> None:
        """Drop ``lease`` and the keys bound to it (gone already: nothing to do)."""
        what = "lease revoke"
        data = load_json(await self._call("/v3/lease/revoke", {"ID": str(lease)}, what), what)
        if "not found" in str(data.get("message") or data.get("error") or ""):
            return
        check_error(data, what)

    async def create_with_lease(
        self, key: str, value: bytes, lease: int
    ) -> tuple[bool, KeyValue | None, int]:
        """Create ``key`` bound to ``lease`` if absent: (True, None, revision); else (False,
        the key as it stands (None if it went meanwhile), the revision it was read at)."""
        what = f"create {key[:80]!r}"
        body = create_request(self._codec.encode(key), value, lease)
        return parse_create(await self._call("/v3/kv/txn", body, what), self._codec, key, what)

    async def compact_if_due(self) -> None:
        """Compact by the rule of :meth:`_maybe_compact` at etcd's current revision (the
        leader's periodic check: the changes are mostly other masters')."""
        await self._maybe_compact(await self.revision())

    async def _maybe_compact(self, revision: int) -> None:
        """Compact etcd to keep the last ``history`` revisions, every ``min(history, 1000)``."""
        if self._history is None or self._compacting is None or not self.may_compact():
            return
        step = min(COMPACT_EVERY_REVISIONS, self._history)
        if revision - self._compact_mark < step:
            return
        async with self._compacting:
            if revision - self._compact_mark < step:
                return
            floor = revision - self._history + 1
            self._compact_mark = revision
            if floor <= self._compacted:
                return
            try:
                answer = await self._call(
                    "/v3/kv/compaction", {"revision": str(floor)}, "compaction"
                )
                parse_put(answer, "compaction")
            except CompactedError:
                pass  # someone (another master, etcd's own policy) compacted further already
            self._compacted = max(self._compacted, floor)

    async def close(self) -> None:
        self._closed = True
        for resp in list(self._streams):
            resp.close()
        for session in (self._unary, self._watches):
            if session is not None and not session.closed:
                await session.close()


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise StoreError(f"{what}: etcd's answer is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise StoreError(f"{what}: etcd's answer is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _lines(resp: aiohttp.ClientResponse, limit: int, what: str) -> AsyncIterator[bytes]:
    """The newline-delimited messages of a stream, each at most ``limit`` bytes."""
    buffer = bytearray()
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line
        if len(buffer) > limit:
            raise StoreError(f"{what}: a watch message of etcd is over {limit} bytes")
