"""Mirror pods: this node's static pods shown on the master, read-only (kubelet's mirror pods).

A static pod is put on the master once per spec (``PUT …/mirrorpods/<ns>/<name>``) and deleted
there when its manifest file goes. A refusal (say, a pod of the master's with that name) is
logged and not retried until the spec changes; a put or delete the master could not answer
(:class:`MasterUnavailableError`: a 5xx, a time-out) is retried at the next sync.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from agent.aio.logs import kv
from agent.errors import AgentError, IdentityRejectedError, MasterUnavailableError
from agent.node.masterlink.client import MasterSession
from agent.types import Pod

log = logging.getLogger(__name__)

SOURCE_FILE_PREFIX = "file:"


class StaticPods(Protocol):
    def pods_of_source(self, prefix: str) -> dict[str, Pod]: ...


class MirrorPods:
    def __init__(self, node_name: str, pods: StaticPods) -> None:
        self._node_name = node_name
        self._pods = pods
        self._mirrored: dict[str, str] = {}  # full name -> spec hash put on the master

    def reset(self) -> None:
        """A new session: put every mirror again (the master may have lost them)."""
        self._mirrored = {}

    def _path(self, namespace: str, name: str) -> str:
        return f"/v1/nodes/{self._node_name}/mirrorpods/{namespace}/{name}"

    async def sync(self, session: MasterSession) -> list[str]:
        """Bring the master's mirrors in line; returns the full names (re)put this time."""
        static = {p.full_name: p for p in self._pods.pods_of_source(SOURCE_FILE_PREFIX).values()}
        put: list[str] = []
        for full, pod in static.items():
            if self._mirrored.get(full) == pod.spec_hash:
                continue
            path = self._path(pod.metadata.namespace, pod.metadata.name)
            if await self._decided(session, "PUT", path, dict(pod.manifest), full):
                self._mirrored[full] = pod.spec_hash  # also after a refusal: not every loop
                put.append(full)
        for full in list(self._mirrored.keys() - static.keys()):
            namespace, name = full.split("/", 1)
            if await self._decided(session, "DELETE", self._path(namespace, name), None, full):
                del self._mirrored[full]
        return put

    async def _decided(
        self, session: MasterSession, method: str, path: str, body: Any, full: str
    ) -> bool:
        """Whether the master decided the call (done, or refused: not retried until the spec
        changes); False when it could not answer (retried at the next sync)."""
        try:
            await session.call(method, path, body)
        except IdentityRejectedError:
            raise
        except MasterUnavailableError as exc:
            log.info("mirror pod not synced yet", extra=kv(pod=full, call=method, error=str(exc)))
            return False
        except AgentError as exc:
            log.warning(
                "mirror pod refused by the master",
                extra=kv(pod=full, call=method, error=str(exc)),
            )
        return True
