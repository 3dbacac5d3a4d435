"""Static pods: the manifest directory as a pod source.

Changes are noticed through inotify (``agent.aio.inotify``, milliseconds) and, as a safety net
for filesystems that never report changes, by polling (a stat per file per interval, through
the thread bridge; the 1 s default meets the 2 s pick-up target on its own). A file that fails
to parse is reported (log line + event) once per change; the pods it held before keep running,
so a typo in an edit never takes a running pod down, and other files are not affected. No file
can stop the agent, at boot or later: the loader and parser answer a hostile text with a
``ManifestError`` (``agent.manifest_loader``), a file larger than 64 KiB is parsed on the thread
bridge rather than the event loop, a file name that is not UTF-8 is shown escaped, and anything
else a file could still provoke is caught per file, logged with its traceback and reported like
a parse error.

``start()`` scans once (the start sequence relies on the directory having had its say before
containers of undesired pods are removed) and then follows the directory in the source's own
TaskScope until ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.aio.bridge import ThreadBridge
from agent.aio.inotify import DirectoryWatcher
from agent.aio.logs import kv
from agent.aio.tasks import TaskScope
from agent.errors import ManifestError
from agent.events import EventRecorder
from agent.manifest import parse_manifests
from agent.manifest_loader import MAX_MANIFEST_BYTES, OFF_LOOP_BYTES
from agent.names import escape
from agent.types import Pod

log = logging.getLogger(__name__)

SOURCE_PREFIX = "file:"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SETTLE_S = 0.05


@dataclass(frozen=True, slots=True)
class _FileState:
    signature: tuple[int, int, int]
    pods: tuple[Pod, ...]
    error: str = ""


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _listing(directory: Path) -> dict[Path, tuple[int, int, int]]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        # Editors' swap/backup files and hidden files are not manifests.
        if name.startswith(".") or not name.endswith(MANIFEST_SUFFIXES):
            continue
        path = directory / name
        sig = _signature(path)
        if sig is not None and path.is_file():
            found[path] = sig
    return found


def _shown(path: Path) -> str:
    """A file's path for messages: a name that is not UTF-8 comes from ``os.listdir`` with lone
    surrogates (``\udcff``) that nothing downstream could encode; escaped here."""
    return escape(str(path))


def _read(path: Path) -> str:
    with path.open("rb") as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"file larger than {MAX_MANIFEST_BYTES} bytes", _shown(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError("", f"not UTF-8 (at byte {exc.start})", _shown(path)) from None


class ManifestDirSource:
    name = "manifest-dir"

    def __init__(
        self,
        directory: Path,
        *,
        node_name: str,
        interval_s: float,
        bridge: ThreadBridge,
        events: EventRecorder,
        apply: Callable[[str, list[Pod]], None],
        tasks: TaskScope,
    ) -> None:
        self.directory = directory
        self._tasks = tasks
        self._node_name = node_name
        self._interval_s = interval_s
        self._bridge = bridge
        self._events = events
        self._apply = apply
        self._files: dict[Path, _FileState] = {}
        self.errors: dict[str, str] = {}  # by file (its path escaped): the message

    async def scan(self) -> None:
        """One pass: re-read changed files and hand the full pod set to the manager."""
        listing = await self._bridge.run(_listing, self.directory)
        changed = False
        for path in self._files.keys() - listing.keys():
            del self._files[path]
            self.errors.pop(_shown(path), None)
            changed = True
        for path, sig in listing.items():
            known = self._files.get(path)
            if known is not None and known.signature == sig:
                continue
            changed = True
            self._files[path] = await self._load(path, sig, known)
        if changed or not self._files:
            self._apply(SOURCE_PREFIX, self._pods())

    async def _load(
        self, path: Path, sig: tuple[int, int, int], known: _FileState | None
    ) -> _FileState:
        shown = _shown(path)
        source = f"{SOURCE_PREFIX}{shown}"
        try:
            if shown != str(path):
                raise ManifestError("", "the file name is not UTF-8: rename the file", shown)
            text = await self._bridge.run(_read, path)
            warnings: list[str] = []  # the API server's additions, dropped (kubectl output)
            if len(text) > OFF_LOOP_BYTES:
                pods = await self._bridge.run(
                    parse_manifests,
                    text,
                    source=source,
                    node_name=self._node_name,
                    warnings=warnings,
                )
            else:
                pods = parse_manifests(
                    text, source=source, node_name=self._node_name, warnings=warnings
                )
            for warning in warnings:
                log.warning("manifest field dropped", extra=kv(file=shown, warning=warning))
        except ManifestError as exc:
            message = str(exc)
        except OSError as exc:
            message = f"{shown}: {escape(str(exc))}"
        except Exception as exc:
            # A bulkhead: whatever a file provokes, the agent and its other pods carry on.
            log.exception("reading a manifest file failed", extra=kv(file=shown))
            message = f"{shown}: could not be read ({type(exc).__name__}; see the agent's log)"
        else:
            self.errors.pop(_shown(path), None)
            return _FileState(sig, tuple(pods))
        self.errors[_shown(path)] = message
        log.error(
            "bad manifest file ignored; pods it held keep running",
            extra=kv(file=shown, error=message),
        )
        self._events.record(
            kind="ManifestFile",
            name=escape(path.name),
            namespace="",
            reason="FailedToParse",
            message=message,
            warning=True,
        )
        return _FileState(sig, known.pods if known else (), error=message)

    def _pods(self) -> list[Pod]:
        by_name: dict[str, Pod] = {}
        for path in sorted(self._files):
            for pod in self._files[path].pods:
                other = by_name.get(pod.full_name)
                if other is not None:
                    first = other.source.removeprefix(SOURCE_PREFIX)
                    message = f"pod {pod.full_name} is also defined in {first}; ignored here"
                    if self.errors.get(_shown(path)) != message:
                        self.errors[_shown(path)] = message
                        log.error("duplicate static pod", extra=kv(file=str(path), error=message))
                        self._events.record(
                            kind="ManifestFile",
                            name=path.name,
                            namespace="",
                            reason="Duplicate",
                            message=message,
                            warning=True,
                        )
                    continue
                by_name[pod.full_name] = pod
        return list(by_name.values())

    async def start(self) -> None:
        await self._tasks.start()
        await self.scan()
        self._tasks.spawn("manifest-dir", self._follow, eternal=True)

    async def stop(self) -> None:
        await self._tasks.stop()

    async def _follow(self) -> None:
        watcher = DirectoryWatcher()
        try:
            while True:
                if not watcher.active and watcher.watch(self.directory):
                    await self.scan()  # catch what changed before the watch was in place
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.changed.wait(), self._interval_s)
                if watcher.changed.is_set():
                    # Editors save in several steps; let them finish before reading.
                    await asyncio.sleep(SETTLE_S)
                    watcher.changed.clear()
                await self.scan()
        finally:
            watcher.close()
