"""Pod status reports: each pod's latest status goes to the master when it changed, and only
the latest (a pod that changed five times during an outage is reported once). Static pods'
statuses go to their mirror pods, which are synced first."""

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

Sleep = Callable[[float], Awaitable[None]]


class PodStatuses(Protocol):
    def pod_list(self) -> list[dict[str, Any]]: ...


class StatusReporter:
    def __init__(self, pods: PodStatuses, mirrors: MirrorPods, *, sleep: Sleep) -> None:
        self._pods = pods
        self._mirrors = mirrors
        self._sleep = sleep
        self._reported: dict[str, str] = {}  # full name -> the status JSON last sent

    async def run(self, session: MasterSession) -> None:
        """Report every ``STATUS_REPORT_S`` until the session fails. A new session sends every
        status (and every mirror) once more."""
        self._mirrors.reset()
        self._reported = {}
        while True:
            await self._sleep(STATUS_REPORT_S)
            await self.report_once(session)

    async def report_once(self, session: MasterSession) -> None:
        for full in await self._mirrors.sync(session):
            self._reported.pop(full, None)  # a (re)created mirror needs its status again
        items = self._pods.pod_list()
        present = {f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items}
        for gone in self._reported.keys() - present:
            del self._reported[gone]  # bounded by the pods the node has now
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
