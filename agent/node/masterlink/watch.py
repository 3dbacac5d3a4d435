"""The master as a pod source: list the node's pods once, then watch; hand the full set of the
master's pods to the pod manager whenever it changes.

After a reconnect the watch resumes from the last resource version seen, so an outage costs no
relist (and no re-apply) unless the master no longer has that history (410, in the status or
in-band): then it relists at once. Mirror pods (our own static pods as the master shows them)
are not desired state and are skipped.

The watch is input from the network and is never trusted to be well-formed. A line that is not
a watch event — not UTF-8 JSON, not an object, a missing or mistyped field, an unknown type,
longer than ``MAX_EVENT_BYTES`` — is logged, counted in
``node_agent_master_watch_errors_total`` and answered by a relist (after
``JUNK_RELIST_DELAY_S``, so a master that sends only junk is not hammered): whatever the
broken line meant, the listing says it. A pod whose manifest the node cannot parse is counted
and logged too; if the node already runs an earlier version of it, that one keeps running (as
for a static manifest file with a typo). Nothing here stops a pod that is running except a
well-formed DELETED event or a listing without it.
"""

from __future__ import annotations

import json
import logging
import reprlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from agent.aio.logs import kv
from agent.errors import (
    IdentityRejectedError,
    ManifestError,
    MasterAnswerMalformedError,
    MasterUnavailableError,
)
from agent.manifest import parse_pod
from agent.node.health.metrics import NodeMetrics
from agent.node.masterlink.client import MasterSession, transport_error
from agent.quantity import INT64_MAX
from agent.types import Pod

log = logging.getLogger(__name__)

SOURCE_API = "api"
MIRROR_ANNOTATION = "node-agent.io/mirror"
# Twice the master's request body limit: a watch event carries the manifest and the status.
MAX_EVENT_BYTES = 2 << 20
JUNK_RELIST_DELAY_S = 1.0
EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "ERROR"})
GONE = 410
MAX_MESSAGE_CHARS = 300

Sleep = Callable[[float], Awaitable[None]]


class PodSink(Protocol):
    def apply_source(
        self, prefix: str, pods: Iterable[Pod], *, deletion_grace_s: Mapping[str, int] = ...
    ) -> None: ...

    def pods_of_source(self, prefix: str) -> dict[str, Pod]: ...


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    object: dict[str, Any]
    resource_version: int | None

    @property
    def full_name(self) -> str:
        meta = self.object["metadata"]
        return f"{meta['namespace']}/{meta['name']}"


def _shown(value: Any) -> str:
    """A value from the wire in a message: bounded in length and depth (``repr`` of a deeply
    nested list raises RecursionError)."""
    return reprlib.repr(value)


def _message(error: dict[str, Any]) -> str:
    """The master's message in an in-band error, bounded (JSON logs escape the rest)."""
    message = error.get("message")
    return message[:MAX_MESSAGE_CHARS] if isinstance(message, str) else _shown(message)


def _revision(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MasterAnswerMalformedError(f"resourceVersion {_shown(value)} is not an integer")
    try:
        revision = int(value)
    except ValueError:
        raise MasterAnswerMalformedError(
            f"resourceVersion {_shown(value)} is not an integer"
        ) from None
    if revision < 0:
        raise MasterAnswerMalformedError(f"resourceVersion {value!r} is negative")
    return revision


def _pod_object(value: Any) -> dict[str, Any]:
    """A pod object with the fields the watch relies on, or MasterAnswerMalformedError."""
    if not isinstance(value, dict):
        raise MasterAnswerMalformedError("object is not a JSON object")
    meta = value.get("metadata")
    if not isinstance(meta, dict):
        raise MasterAnswerMalformedError("object.metadata is not an object")
    for key in ("namespace", "name"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise MasterAnswerMalformedError(f"object.metadata.{key} is not a non-empty string")
    annotations = meta.get("annotations", {})
    if not isinstance(annotations, dict):
        raise MasterAnswerMalformedError("object.metadata.annotations is not an object")
    return value


def decode_event(line: bytes) -> WatchEvent:
    """One NDJSON line of the pod watch; MasterAnswerMalformedError for anything else."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting
        raise MasterAnswerMalformedError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MasterAnswerMalformedError("event is not a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:  # (a dict is not hashable)
        raise MasterAnswerMalformedError(
            f"event type {_shown(kind)} is not one of {sorted(EVENT_TYPES)}"
        )
    revision = _revision(data["resourceVersion"]) if "resourceVersion" in data else None
    obj = data.get("object")
    if kind == "ERROR":
        error = obj.get("error") if isinstance(obj, dict) else None
        if not isinstance(error, dict):
            raise MasterAnswerMalformedError("ERROR event without object.error")
        return WatchEvent(kind, {"error": error}, revision)
    return WatchEvent(kind, _pod_object(obj), revision)


def decode_listing(data: Any) -> tuple[list[dict[str, Any]], int]:
    """The items and revision of ``GET /v1/nodes/<node>/pods``; MasterAnswerMalformedError else."""
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise MasterAnswerMalformedError("pod listing without an items list")
    if "resourceVersion" not in data:
        raise MasterAnswerMalformedError("pod listing without a resourceVersion")
    return [_pod_object(item) for item in data["items"]], _revision(data["resourceVersion"])


async def bounded_lines(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    """Complete lines of a stream, each without its newline; MasterAnswerMalformedError for a line
    longer than ``limit`` bytes. A last line cut off by the end of the stream is dropped
    (the connection ended mid-event: the resumed watch sends it again)."""
    buffer = bytearray()
    async for chunk in content.iter_any():
        scan_from = len(buffer)
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", max(scan_from, start))) >= 0:
            if end - start > limit:
                raise MasterAnswerMalformedError(f"event line longer than {limit} bytes")
            yield bytes(buffer[start:end])
            start = end + 1
        del buffer[:start]
        if len(buffer) > limit:
            raise MasterAnswerMalformedError(f"event line longer than {limit} bytes")


class MasterPodSource:
    def __init__(
        self,
        node_name: str,
        pods: PodSink,
        metrics: NodeMetrics,
        *,
        sleep: Sleep,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._node_name = node_name
        self._pods = pods
        self._metrics = metrics
        self._sleep = sleep
        self._max_event_bytes = max_event_bytes
        self.revision: int | None = None  # None: list before watching
        self.pods: dict[str, Pod] = {}  # full name -> the master's pod
        # uid -> the grace period a deletion gave (``nodectl delete --grace-period``), for the
        # next apply: the pod stops within it rather than its own terminationGracePeriodSeconds.
        self._deletion_grace_s: dict[str, int] = {}

    def forget_revision(self) -> None:
        """List before the next watch (a new identity, history gone)."""
        self.revision = None

    async def run(self, session: MasterSession) -> None:
        """List (when needed) and watch until the session fails; relists in place after a 410
        or a malformed event. Raises MasterUnavailableError/IdentityRejectedError."""
        while True:
            if self.revision is None:
                await self.relist(session)
            else:
                log.info("resuming the pod watch", extra=kv(resource_version=self.revision))
            if await self._watch(session):
                await self._sleep(JUNK_RELIST_DELAY_S)

    async def relist(self, session: MasterSession) -> None:
        listing = await session.call("GET", f"/v1/nodes/{self._node_name}/pods")
        try:
            items, revision = decode_listing(listing)
        except MasterAnswerMalformedError as exc:
            self._count_error("malformed pod listing", exc)
            raise
        running = self._running()
        wanted: dict[str, Pod] = {}
        for obj in items:
            full = _full_name(obj)
            pod = self._accept(obj, self.pods.get(full) or running.get(full))
            if pod is not None:
                wanted[full] = pod
        self.pods = wanted
        self._apply()
        self.revision = revision

    async def _watch(self, session: MasterSession) -> bool:
        """One watch request. Returns when a relist is due (True: after a malformed event);
        raises when the watch failed or ended."""
        path = f"/v1/nodes/{self._node_name}/pods?watch=1&resourceVersion={self.revision}"
        try:
            async with session.http.get(session.url(path)) as resp:
                if resp.status in (401, 403):
                    raise IdentityRejectedError(f"pod watch: {resp.status}")
                if resp.status == GONE:
                    log.info("pod watch history compacted; relisting")
                    self.revision = None
                    return False
                if resp.status != 200:
                    raise MasterUnavailableError(f"pod watch: {resp.status}")
                try:
                    async for line in bounded_lines(resp.content, self._max_event_bytes):
                        if line.strip() and not self._on_line(line):
                            return False
                except MasterAnswerMalformedError as exc:
                    self._count_error("malformed pod watch event; relisting", exc)
                    self.revision = None
                    return True
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # as MasterSession.request
            raise transport_error("pod watch", exc) from exc
        raise MasterUnavailableError("pod watch ended")

    def _on_line(self, line: bytes) -> bool:
        """Apply one event; False when the watch must stop for a relist (410 in-band)."""
        event = decode_event(line)
        if event.type == "ERROR":
            error = event.object["error"]
            if error.get("code") == GONE:
                log.info(
                    "pod watch history compacted; relisting",
                    extra=kv(detail=_message(error)),
                )
                self.revision = None
                return False
            raise MasterUnavailableError(f"pod watch: {_message(error)}")
        full = event.full_name
        changed = True
        if event.type == "DELETED":
            gone = self.pods.pop(full, None)
            changed = gone is not None
            grace = event.object["metadata"].get("deletionGracePeriodSeconds")
            if gone is not None and type(grace) is int and 0 <= grace <= INT64_MAX:
                self._deletion_grace_s[gone.uid] = grace
        else:
            known = self.pods.get(full)
            pod = self._accept(event.object, known or self._running().get(full))
            if (
                pod is None
                or pod is known
                or (known is not None and known.uid == pod.uid and known.spec_hash == pod.spec_hash)
            ):
                changed = False  # a status echo, a mirror pod, an unusable manifest
            else:
                self.pods[full] = pod
        if event.resource_version is not None:
            self.revision = event.resource_version
        if changed:
            self._apply()
        return True

    def _accept(self, obj: dict[str, Any], known: Pod | None) -> Pod | None:
        """The pod of a well-formed object; None for a mirror pod; ``known`` (the version
        the node runs, if any) when the manifest cannot be parsed."""
        if obj["metadata"].get("annotations", {}).get(MIRROR_ANNOTATION):
            return None  # our own static pods as the master shows them: not desired state
        try:
            return parse_pod(
                {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in obj},
                source=SOURCE_API,
            )
        except ManifestError as exc:
            self._count_error("pod from the master rejected", exc, pod=_full_name(obj))
            return known

    def _running(self) -> dict[str, Pod]:
        """The master's pods the node runs, by full name. After a restart ``self.pods`` is
        empty while the checkpoint's pods run: they are what "the version the node runs" is
        until the first listing."""
        return {p.full_name: p for p in self._pods.pods_of_source(SOURCE_API).values()}

    def _apply(self) -> None:
        grace, self._deletion_grace_s = self._deletion_grace_s, {}
        self._pods.apply_source(SOURCE_API, list(self.pods.values()), deletion_grace_s=grace)

    def _count_error(self, what: str, exc: Exception, **fields: str) -> None:
        self._metrics.master_watch_error()
        log.error(what, extra=kv(error=str(exc)[:500], **fields))


def _full_name(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}"
