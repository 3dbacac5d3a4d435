"""The cluster-wide watches of ``nodectl get pods -w`` and ``get nodes -w``: ``GET /v1/pods``
and ``GET /v1/nodes`` with ``watch=1``, answered as newline-delimited JSON events
(``ADDED``/``MODIFIED``/``DELETED`` with the object, ``BOOKMARK``, in-band ``ERROR`` 410), as
the Kubernetes API server answers a watch.

Pods are versioned by the store, so a pod watch resumes: ``resourceVersion=N`` replays every
change after N from the store's history (410 once it is compacted, or after a master restart
onto another store), and ``sendInitialEvents=true`` (or no ``resourceVersion``) starts with
the current pods as ``ADDED`` then a ``BOOKMARK`` carrying ``k8s.io/initial-events-end`` —
Kubernetes' watch-list — so a client lists and watches in one consistent request.

Nodes are not: their Ready condition comes from leases kept in memory, never stored. A node
watch always starts with the current nodes (a ``resourceVersion`` to resume from is answered
410: relist) and then reports a node when what it shows changes — the object without its
heartbeat time, compared every :data:`NODE_CHECK_S` — so a lease renewal that changes nothing
is no event, a Ready flip is one.

Every watch is bounded: the master ends it after :data:`WATCH_MAX_S` (or the client's shorter
``timeoutSeconds``) and the client re-establishes it, as the API server's request timeout
does; while nothing changes a ``BOOKMARK`` goes out every :data:`BOOKMARK_EVERY_S`, so a client
can tell a quiet watch from a dead connection and always holds a revision to resume from.
A caller holds at most :data:`WATCHES_PER_CALLER` of these watches at once
(:class:`WatchSlots`): more are 429, so one viewer cannot take the loop, the store's watchers
and the memory from every other caller. (A node's own pod watch, ``/v1/nodes/{node}/pods``,
is not counted: it sends nothing while its pods do not change, so a stream its agent reset
would keep a slot until then, and 429 would stop the node's pods.)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

from agent.aio.edge import ApiRequest, error_body
from agent.errors import BadRequestError, CompactedError, TooManyRequestsError
from agent.master.pods import PODS_PREFIX, pod_object
from agent.master.registry import NodeRegistry
from agent.master.store.base import EventType, Store
from agent.names import quote

WATCH_MAX_S = 1800.0  # a watch's longest life; the client re-establishes it (API server: 30 min)
BOOKMARK_EVERY_S = 15.0  # a quiet watch's heartbeat; nodectl gives up on one silent 3x as long
NODE_CHECK_S = 1.0  # how often a node watch compares the nodes (readiness changes with time)
WATCH_QUEUE_EVENTS = 64  # events read ahead of a slow client (then the store's watch waits)
# Watches one caller (a certificate's name) holds at once; more are 429. A watch costs a task,
# a store watch woken at every change, a queue of WATCH_QUEUE_EVENTS and what it remembers of
# the objects, for up to WATCH_MAX_S: nodectl holds one per `get -w`, an agent one.
WATCHES_PER_CALLER = 64
WATCH_RETRY_AFTER_S = 10  # the 429's Retry-After, seconds
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
GONE = 410


@dataclass(frozen=True, slots=True)
class WatchParams:
    resource_version: int | None  # resume after this revision; None: start with the list
    send_initial: bool  # the current objects first, then a BOOKMARK ending them
    timeout_s: float  # the watch ends after this long (at most WATCH_MAX_S)
    namespace: str | None  # pods of one namespace; None: every namespace


def watch_params(request: ApiRequest, max_s: float = WATCH_MAX_S) -> WatchParams:
    """``resourceVersion``, ``sendInitialEvents``, ``timeoutSeconds`` and ``namespace`` of a
    watch request; BadRequestError naming the parameter that is wrong."""
    raw = request.query("resourceVersion")
    version: int | None = None
    if raw not in (None, ""):
        if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
            raise BadRequestError(f"resourceVersion must be a revision (digits), not {raw!r}")
        version = int(raw) or None  # 0: "any", as Kubernetes: start from the list
    initial = request.query("sendInitialEvents")
    if initial not in (None, "true", "false"):
        raise BadRequestError(f"sendInitialEvents must be true or false, not {initial!r}")
    raw_timeout = request.query("timeoutSeconds")
    timeout_s = max_s
    if raw_timeout not in (None, ""):
        try:
            asked = float(raw_timeout)
        except ValueError:
            asked = -1.0
        if not math.isfinite(asked) or asked <= 0:
            raise BadRequestError(
                f"timeoutSeconds must be a positive number of seconds, not {raw_timeout!r}"
            )
        timeout_s = min(asked, max_s)
    return WatchParams(
        resource_version=version,
        send_initial=initial == "true" or version is None,
        timeout_s=timeout_s,
        namespace=request.query("namespace"),
    )


def _event(kind: str, obj: dict[str, Any], revision: int) -> dict[str, Any]:
    return {"type": kind, "object": obj, "resourceVersion": revision}


def _bookmark(revision: int, *, initial_end: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": str(revision)}
    if initial_end:
        metadata["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"type": "BOOKMARK", "object": {"metadata": metadata}, "resourceVersion": revision}


def _gone(message: str) -> dict[str, Any]:
    return {"type": "ERROR", "object": error_body(GONE, message)}


def _pod(obj: dict[str, Any], revision: int) -> dict[str, Any]:
    shown = pod_object(obj)
    shown["metadata"]["resourceVersion"] = str(revision)
    return shown


# One step of a watch's source: the revision it has looked at, and the event to send (None: a
# change the client does not see, which still moves its revision on).
Step = tuple[int, dict[str, Any] | None]


async def pod_steps(store: Store, params: WatchParams) -> AsyncGenerator[Step, None]:
    """Every pod change (of the namespace asked) as watch events, from the store."""

    def wanted(obj: dict[str, Any]) -> bool:
        ns = obj["manifest"]["metadata"]["namespace"]
        return params.namespace is None or ns == params.namespace

    items, revision = await store.list_prefix(PODS_PREFIX)
    if params.send_initial:
        after = revision
        known = {item.key for item in items}
        items.reverse()  # popped in key order: each pod let go once sent
        while items:
            item = items.pop()
            obj = json.loads(item.value)
            if wanted(obj):
                yield revision, _event("ADDED", _pod(obj, item.mod_revision), item.mod_revision)
        yield revision, _bookmark(revision, initial_end=True)
    else:
        assert params.resource_version is not None  # send_initial otherwise
        after = params.resource_version
        # What existed at ``after``: the keys created by then that still exist (a key deleted
        # meanwhile is reported as it was replayed: its first change then reads ADDED).
        known = {item.key for item in items if item.create_revision <= after}
    del items  # the values of every pod, else held by this frame as long as the watch lasts
    async for change in store.watch(PODS_PREFIX, after):
        obj = json.loads(change.value)
        if not wanted(obj):
            yield change.revision, None
            continue
        if change.type is EventType.DELETE:
            known.discard(change.key)
            kind = "DELETED"
        else:
            kind = "MODIFIED" if change.key in known else "ADDED"
            known.add(change.key)
        yield change.revision, _event(kind, _pod(obj, change.revision), change.revision)


def node_view(node: dict[str, Any]) -> dict[str, Any]:
    """What a node watch compares: the node object without the heartbeat time, which every
    lease renewal moves without changing anything shown."""
    view = copy.deepcopy(node)
    for condition in view.get("status", {}).get("conditions", []):
        condition.pop("lastHeartbeatTime", None)
    return view


async def node_steps(
    registry: NodeRegistry, params: WatchParams, check_s: float = NODE_CHECK_S
) -> AsyncGenerator[Step, None]:
    """The nodes as ADDED, a BOOKMARK, then each change of what a node shows."""
    if not params.send_initial:
        yield 0, _gone("node watches do not resume (readiness is not stored): relist")
        return
    shown: dict[str, dict[str, Any]] = {}
    for record in await registry.records():
        node = registry.node_object(record)
        shown[record["name"]] = node_view(node)
        yield 0, _event("ADDED", node, 0)
    yield 0, _bookmark(0, initial_end=True)
    while True:
        await asyncio.sleep(check_s)
        now: dict[str, dict[str, Any]] = {}
        for record in await registry.records():
            node = registry.node_object(record)
            view = now[record["name"]] = node_view(node)
            before = shown.get(record["name"])
            if before != view:
                yield 0, _event("ADDED" if before is None else "MODIFIED", node, 0)
        for name in shown.keys() - now.keys():
            yield 0, _event("DELETED", shown[name], 0)
        shown = now
        yield 0, None


async def paced(
    steps: AsyncGenerator[Step, None],
    timeout_s: float,
    bookmark_every_s: float = BOOKMARK_EVERY_S,
) -> AsyncIterator[bytes]:
    """A watch's NDJSON lines: the source's events, a BOOKMARK with the revision reached when
    nothing was sent for ``bookmark_every_s``, the end after ``timeout_s``; a compacted history
    is an in-band ERROR 410 (the client relists), as Kubernetes answers it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    end = object()  # the source ended
    queue: asyncio.Queue[Step | BaseException | object] = asyncio.Queue(WATCH_QUEUE_EVENTS)

    async def pump() -> None:
        try:
            async for step in steps:
                await queue.put(step)
        except Exception as exc:  # handed to the reader, which answers or raises it
            await queue.put(exc)
        else:
            await queue.put(end)

    task = asyncio.create_task(pump())
    revision = 0
    # Counted from the last line sent, not the last step: a node watch steps every NODE_CHECK_S
    # without sending, and must still send BOOKMARKs (its client's silence timer; and a write
    # is how a client gone without a word is found).
    sent_at = loop.time()
    try:
        while True:
            now = loop.time()
            left = deadline - now
            if left <= 0:
                return
            quiet_left = sent_at + bookmark_every_s - now
            if quiet_left <= 0:
                sent_at = now
                yield json.dumps(_bookmark(revision)).encode() + b"\n"
                continue
            try:
                item = await asyncio.wait_for(queue.get(), min(left, quiet_left))
            except TimeoutError:
                continue
            if item is end:
                return
            if isinstance(item, CompactedError):
                yield json.dumps(_gone(str(item))).encode() + b"\n"
                return
            if isinstance(item, BaseException):
                raise item
            step = cast(Step, item)
            revision = max(revision, step[0])
            if step[1] is not None:
                sent_at = loop.time()
                yield json.dumps(step[1]).encode() + b"\n"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await steps.aclose()


class WatchSlots:
    """The watches each caller holds, by its principal's name, at most ``per_caller`` at once
    (:data:`WATCHES_PER_CALLER`); the edge closes a watch's lines however it ends (the client
    gone, the master stopping), which gives its slot back: a client that went away silently is
    found at the next write, a BOOKMARK at the latest (:data:`BOOKMARK_EVERY_S`)."""

    def __init__(self, per_caller: int = WATCHES_PER_CALLER) -> None:
        self.per_caller = per_caller
        self._held: dict[str, int] = {}

    def held(self, caller: str) -> int:
        return self._held.get(caller, 0)

    def hold(self, caller: str, lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``lines`` counted against ``caller`` until they end or are closed, started or not;
        TooManyRequestsError (429, ``Retry-After``) when ``caller`` holds ``per_caller``."""
        count = self.held(caller)
        if count >= self.per_caller:
            raise TooManyRequestsError(
                f"{quote(caller)} holds {count} watches already, the most one caller may: "
                f"end one, or retry in {WATCH_RETRY_AFTER_S} s",
                WATCH_RETRY_AFTER_S,
            )
        self._held[caller] = count + 1
        return _Held(lines, lambda: self._release(caller))

    def _release(self, caller: str) -> None:
        left = self._held.get(caller, 0) - 1
        if left > 0:
            self._held[caller] = left
        else:
            self._held.pop(caller, None)


class _Held:
    """A watch's lines holding a slot: given back once, at their end, failure or close."""

    __slots__ = ("_lines", "_release")

    def __init__(self, lines: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        self._lines = lines
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._lines)
        except BaseException:  # the end (StopAsyncIteration) or a failure: the watch is over
            self._give_back()
            raise

    async def aclose(self) -> None:
        self._give_back()
        aclose = getattr(self._lines, "aclose", None)
        if aclose is not None:
            await aclose()

    def _give_back(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
