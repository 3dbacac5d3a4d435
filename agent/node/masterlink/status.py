"""Pod status reports: each pod's latest status goes to the master when it changed, and only
the latest (a pod that changed five times during an outage is reported once). Static pods'
statuses go to their mirror pods, which are synced first.

The node's events ride along: after the statuses, what changed in the event record since the
last report (new events, and repeats that raised a count) goes to ``/v1/nodes/{node}/events``,
a page of at most EVENTS_PER_REPORT at a time; the master files them by the node's count, so
a new session sends every event held once more without doubling anything."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from agent.aio.logs import kv
from agent.errors import AgentError, ConflictError, IdentityRejectedError, NotFoundError
from agent.node.masterlink.client import MasterSession
from agent.node.masterlink.mirrors import SOURCE_FILE_PREFIX, MirrorPods
from agent.node.masterlink.watch import SOURCE_API

log = logging.getLogger(__name__)

STATUS_REPORT_S = 2.0
SOURCE_ANNOTATION = "node-agent.io/source"
EVENTS_PER_REPORT = 100  # the master's bound on one report (agent/master/nodeevents.py)
EVENT_PAGES_PER_ROUND = 5  # at most 500 events a round: a backlog drains over a few rounds

Sleep = Callable[[float], Awaitable[None]]


class PodStatuses(Protocol):
    def pod_list(self) -> list[dict[str, Any]]: ...


class EventFeed(Protocol):
    """The node's event record as the reporter reads it (agent.events.EventRecorder)."""

    def since(self, sequence: int, limit: int) -> tuple[list[dict[str, Any]], int]: ...


class StatusReporter:
    def __init__(
        self,
        pods: PodStatuses,
        mirrors: MirrorPods,
        *,
        sleep: Sleep,
        node_name: str = "",
        events: EventFeed | None = None,
    ) -> None:
        self._pods = pods
        self._mirrors = mirrors
        self._sleep = sleep
        self._node_name = node_name
        self._events = events
        self._reported: dict[str, str] = {}  # full name -> the status JSON last sent
        self._api_reported: set[str] = set()  # those of them that are the master's pods
        self._events_sent = 0  # the event record's sequence the master has taken

    async def run(self, session: MasterSession) -> None:
        """Report every ``STATUS_REPORT_S`` until the session fails. A new session sends every
        status (and every mirror) once more."""
        self._mirrors.reset()
        self._reported = {}
        self._api_reported = set()
        self._events_sent = 0
        while True:
            await self._sleep(STATUS_REPORT_S)
            await self.report_once(session)

    async def report_once(self, session: MasterSession) -> None:
        for full in await self._mirrors.sync(session):
            self._reported.pop(full, None)  # a (re)created mirror needs its status again
        items = self._pods.pod_list()
        await self._report_statuses(session, items)
        await self._report_events(session, items)

    async def _report_events(self, session: MasterSession, items: list[dict[str, Any]]) -> None:
        if self._events is None:
            return
        static = {
            (i["metadata"]["namespace"], i["metadata"]["name"])
            for i in items
            if i["metadata"].get("annotations", {}).get(SOURCE_ANNOTATION, "") != SOURCE_API
        }
        for _ in range(EVENT_PAGES_PER_ROUND):
            page, upto = self._events.since(self._events_sent, EVENTS_PER_REPORT)
            if not page:
                return
            sent = []
            for event in page:
                obj = event["involvedObject"]
                if obj["kind"] == "Pod" and (obj["namespace"], obj["name"]) in static:
                    # A static pod is known to the master by its mirror's name.
                    name = self._mirrors.target(obj["namespace"], obj["name"])
                    if name is not None:
                        sent.append({**event, "involvedObject": {**obj, "name": name}})
                    continue
                sent.append(event)
            if sent:
                try:
                    await session.call(
                        "POST", f"/v1/nodes/{self._node_name}/events", {"items": sent}
                    )
                except IdentityRejectedError:
                    raise
                except AgentError as exc:
                    log.debug("event report skipped", extra=kv(error=str(exc)))
                    return  # the same page again next round
            self._events_sent = upto

    async def _report_statuses(self, session: MasterSession, items: list[dict[str, Any]]) -> None:
        present = {f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items}
        for gone in sorted(self._reported.keys() - present):
            last = self._reported.pop(gone)  # bounded by the pods the node has now
            if gone in self._api_reported:
                self._api_reported.discard(gone)
                await self._report_gone(session, gone, last)
        for item in items:
            meta = item["metadata"]
            source = meta.get("annotations", {}).get(SOURCE_ANNOTATION, "")
            if source != SOURCE_API and not source.startswith(SOURCE_FILE_PREFIX):
                continue
            full = f"{meta['namespace']}/{meta['name']}"
            encoded = json.dumps(item["status"], sort_keys=True)
            if self._reported.get(full) == encoded:
                continue
            static = source != SOURCE_API
            # A static pod's status goes to its mirror (``<name>-<node>``), while the master
            # holds it; the flag tells the master which kind of pod the node means.
            name = self._mirrors.target(meta["namespace"], meta["name"]) if static else meta["name"]
            if name is None:
                continue
            try:
                await session.call(
                    "PUT",
                    f"/v1/namespaces/{meta['namespace']}/pods/{name}/status"
                    f"?mirror={'true' if static else 'false'}",
                    item["status"],
                )
            except IdentityRejectedError:
                raise
            except AgentError as exc:
                if static and isinstance(exc, NotFoundError | ConflictError):
                    self._mirrors.forget(full)  # the mirror is gone: the next sync says why
                log.debug("status report skipped", extra=kv(pod=full, error=str(exc)))
                continue
            self._reported[full] = encoded
            if not static:
                self._api_reported.add(full)

    async def _report_gone(self, session: MasterSession, full: str, last: str) -> None:
        """A pod of the master's that left the node (deleted: its containers stopped and were
        removed) gets one last status, its containers no longer running, so that the master
        lets a Terminating pod go now rather than at its deadline (kubelet's final status).
        One attempt: the master's deadline covers a lost one."""
        namespace, _, name = full.partition("/")
        try:
            await session.call(
                "PUT",
                f"/v1/namespaces/{namespace}/pods/{name}/status?mirror=false",
                final_status(json.loads(last)),
            )
        except IdentityRejectedError:
            raise
        except AgentError as exc:  # unbound, moved, gone already: nothing to say
            log.debug("final status report skipped", extra=kv(pod=full, error=str(exc)))


# kubelet's words for a container it can no longer see once its pod was deleted.
GONE_REASON = "ContainerStatusUnknown"
GONE_MESSAGE = (
    "The container could not be located when the pod was deleted. The container used to be Running"
)
GONE_EXIT_CODE = 137


def final_status(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` of a pod whose containers are gone from the node: every container that was
    running is terminated with kubelet's ContainerStatusUnknown, none ready."""
    out = dict(status)
    for key in ("initContainerStatuses", "containerStatuses"):
        containers = out.get(key)
        if isinstance(containers, list):
            out[key] = [_gone(c) if isinstance(c, dict) else c for c in containers]
    return out


def _gone(container: dict[str, Any]) -> dict[str, Any]:
    out = {**container, "ready": False}
    if "started" in out:
        out["started"] = False
    state = container.get("state")
    if isinstance(state, dict) and "running" in state:
        terminated = {"exitCode": GONE_EXIT_CODE, "reason": GONE_REASON, "message": GONE_MESSAGE}
        out["state"] = {"terminated": terminated}
    return out
