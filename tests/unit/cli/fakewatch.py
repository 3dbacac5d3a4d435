"""A fake of the master's cluster-wide pod watch for ``nodectl get -w``'s unit tests: pods with
revisions and a history in memory, served through the watch's :class:`Transport` as the master
serves them (initial events and their bookmark, resume after a revision, in-band 410 for a
revision it cannot resume from, 400 for one that is not a revision), with faults a test injects
per connection. Held to tests/contracts/watch_wire.py like the real master."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.cli.nodectl_watch import INITIAL_EVENTS_END
from agent.errors import ServerError, WatchDroppedError


def fake_pod(name: str, namespace: str, phase: str = "Pending") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": phase},
    }


@dataclass
class Change:
    revision: int
    type: str  # ADDED (the key's creation), MODIFIED, DELETED
    obj: dict[str, Any]


@dataclass
class FakeWatchMaster:
    revision: int = 0
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    history: list[Change] = field(default_factory=list)
    oldest: int = 0  # changes up to this revision are compacted away
    # Per connection, in order: None (served), "refuse" (cannot connect), "break" (the
    # connection breaks after what is served). Past the list: served.
    faults: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def _change(self, kind: str, obj: dict[str, Any]) -> None:
        self.revision += 1
        self.history.append(Change(self.revision, kind, obj))

    def create(self, name: str, namespace: str = "default") -> None:
        self.put(fake_pod(name, namespace))

    def put(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        kind = "MODIFIED" if key in self.pods else "ADDED"
        self.pods[key] = obj
        self._change(kind, obj)

    def remove(self, name: str, namespace: str = "default") -> None:
        self._change("DELETED", self.pods.pop((namespace, name)))

    def compact(self) -> None:
        self.oldest = self.revision
        self.history.clear()

    def transport(self) -> FakeTransport:
        return FakeTransport(self)

    def unreachable(self) -> FakeTransport:
        return FakeTransport(None)


@dataclass
class FakeTransport:
    master: FakeWatchMaster | None

    @contextlib.contextmanager
    def lines(self, path: str) -> Iterator[Iterator[bytes]]:
        master = self.master
        if master is None:
            raise WatchDroppedError("cannot reach the master: connection refused")
        master.paths.append(path)
        fault = master.faults.pop(0) if master.faults else None
        if fault == "refuse":
            raise WatchDroppedError("cannot reach the master: connection refused")
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
        raw = query.get("resourceVersion")
        if raw is not None and not raw.isdigit():
            raise ServerError(400, "BadRequest", f"resourceVersion must be a revision, not {raw!r}")
        namespace = query.get("namespace")
        served = list(self._serve(master, int(raw) if raw else None, namespace, query))

        def read() -> Iterator[bytes]:
            yield from served
            if fault == "break":
                raise WatchDroppedError("the watch broke: IncompleteRead")

        yield read()

    @staticmethod
    def _serve(
        master: FakeWatchMaster, after: int | None, namespace: str | None, query: dict[str, str]
    ) -> Iterator[bytes]:
        def line(event: dict[str, Any]) -> bytes:
            return json.dumps(event).encode() + b"\n"

        def wanted(obj: dict[str, Any]) -> bool:
            return namespace is None or obj["metadata"]["namespace"] == namespace

        if after is None or query.get("sendInitialEvents") == "true":
            for _, obj in sorted(master.pods.items()):
                if wanted(obj):
                    yield line({"type": "ADDED", "object": obj, "resourceVersion": master.revision})
            meta = {
                "resourceVersion": str(master.revision),
                "annotations": {INITIAL_EVENTS_END: "true"},
            }
            bookmark = {"type": "BOOKMARK", "object": {"metadata": meta}}
            yield line({**bookmark, "resourceVersion": master.revision})
            after = master.revision
        elif after > master.revision or after < master.oldest:
            error = {"error": {"code": 410, "message": f"revision {after} is gone; relist"}}
            yield line({"type": "ERROR", "object": error})
            return
        for change in master.history:
            if change.revision > after and wanted(change.obj):
                event = {"type": change.type, "object": change.obj}
                yield line({**event, "resourceVersion": change.revision})
