"""Mirror pods: this node's static pods shown on the master, read-only (kubelet's mirror pods).

A static pod ``<ns>/<name>`` is mirrored as ``<ns>/<name>-<node>``, the name kubelet gives its
mirror pods, so a node can only ever take names ending in its own. It is put on the master once
per spec (``PUT …/mirrorpods/<ns>/<name>-<node>``) and deleted there when its manifest file goes.
A refusal (a pod applied on the master holds the name: the master's name wins) is logged and
not retried until the spec changes; a put or delete the master could not answer
(:class:`MasterUnavailableError`: a 5xx, a time-out) is retried at the next sync. Only a mirror
the master accepted gets the static pod's status (:meth:`MirrorPods.target`); when a status
report finds it gone (an administrator applied a pod of that name over it), :meth:`forget`
makes the next sync put it again, and log the refusal.
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
        self._accepted: set[str] = set()  # full names whose mirror the master holds

    def reset(self) -> None:
        """A new session: put every mirror again (the master may have lost them)."""
        self._mirrored = {}
        self._accepted = set()

    def forget(self, full: str) -> None:
        """The master no longer holds this static pod's mirror: put it again at the next sync."""
        self._mirrored.pop(full, None)
        self._accepted.discard(full)

    def mirror_name(self, name: str) -> str:
        """``<name>-<node>``: the master's name of static pod ``name`` (kubelet's naming)."""
        return f"{name}-{self._node_name}"

    def target(self, namespace: str, name: str) -> str | None:
        """The master's name for the static pod's status: its mirror's, while the master holds
        it; None when the master refused it (or it is not synced yet)."""
        return self.mirror_name(name) if f"{namespace}/{name}" in self._accepted else None

    def _path(self, namespace: str, name: str) -> str:
        mirror = self.mirror_name(name)
        return f"/v1/nodes/{self._node_name}/mirrorpods/{namespace}/{mirror}"

    def _manifest(self, pod: Pod) -> dict[str, Any]:
        manifest = dict(pod.manifest)
        metadata = manifest["metadata"]
        manifest["metadata"] = {**metadata, "name": self.mirror_name(metadata["name"])}
        return manifest

    async def sync(self, session: MasterSession) -> list[str]:
        """Bring the master's mirrors in line; returns the full names (re)put this time."""
        static = {p.full_name: p for p in self._pods.pods_of_source(SOURCE_FILE_PREFIX).values()}
        put: list[str] = []
        for full, pod in static.items():
            if self._mirrored.get(full) == pod.spec_hash:
                continue
            path = self._path(pod.metadata.namespace, pod.metadata.name)
            decided = await self._decided(session, "PUT", path, self._manifest(pod), full)
            if decided is not None:
                self._mirrored[full] = pod.spec_hash  # also after a refusal: not every loop
                if decided:
                    self._accepted.add(full)
                else:
                    self._accepted.discard(full)
                put.append(full)
        for full in list(self._mirrored.keys() - static.keys()):
            namespace, name = full.split("/", 1)
            path = self._path(namespace, name)
            if await self._decided(session, "DELETE", path, None, full) is not None:
                del self._mirrored[full]
                self._accepted.discard(full)
        return put

    async def _decided(
        self, session: MasterSession, method: str, path: str, body: Any, full: str
    ) -> bool | None:
        """Whether the master did the call (True) or refused it (False: not retried until the
        spec changes); None when it could not answer (retried at the next sync)."""
        try:
            await session.call(method, path, body)
        except IdentityRejectedError:
            raise
        except MasterUnavailableError as exc:
            log.info("mirror pod not synced yet", extra=kv(pod=full, call=method, error=str(exc)))
            return None
        except AgentError as exc:
            log.warning(
                "mirror pod refused by the master",
                extra=kv(pod=full, mirror=path.rsplit("/", 1)[-1], call=method, error=str(exc)),
            )
            return False
        return True
