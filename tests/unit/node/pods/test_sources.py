"""The manifest directory as a pod source (``agent.node.pods.sources``): scans hand the whole
static pod set over; bad files are events that leave the pods they held running; removed,
renamed, oversized and non-UTF-8 files; duplicates; following the directory by inotify and by
polling (a directory that appears later); hostile files (issue 14, item 9) at boot and later, a
file name that is not UTF-8, the bulkhead around each file, large files parsed off the loop."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.aio.bridge import ThreadBridge
from agent.aio.tasks import Supervisor
from agent.events import EventRecorder
from agent.manifest import parse_manifests
from agent.manifest_loader import OFF_LOOP_BYTES
from agent.node.pods.sources import MAX_MANIFEST_BYTES, SOURCE_PREFIX, ManifestDirSource
from agent.types import Pod
from tests.hostile_manifests import FILES
from tests.unit.node.asyncwait import until

pytestmark = pytest.mark.usefixtures("blockbuster")

NODE = "n1"


def manifest(name: str, image: str = "busybox:1") -> str:
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{containers: [{{name: main, image: '{image}'}}]}}\n"
    )


@dataclass
class Dir:
    path: Path
    source: ManifestDirSource
    bridge: ThreadBridge
    events: EventRecorder
    applied: list[tuple[str, list[Pod]]] = field(default_factory=list)

    @property
    def names(self) -> set[str]:
        """The pod names of the last hand-over."""
        return {p.metadata.name for p in self.applied[-1][1]}

    def images(self) -> dict[str, str]:
        return {p.metadata.name: p.spec.containers[0].image for p in self.applied[-1][1]}

    async def write(self, name: str, text: str | bytes) -> Path:
        target = self.path / name

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            data = text.encode() if isinstance(text, str) else text
            # Written aside and renamed in, as editors do: never read half-written.
            aside = target.parent / f".{name}.tmp"
            aside.write_bytes(data)
            os.replace(aside, target)

        await self.bridge.run(write)
        return target

    async def run(self, func: object, *args: object) -> None:
        await self.bridge.run(func, *args)  # type: ignore[arg-type]

    def warnings(self) -> list[tuple[str, str]]:
        return [(e["reason"], e["involvedObject"]["name"]) for e in self.events.list()]


@pytest.fixture
async def manifests(tmp_path: Path) -> AsyncIterator[Dir]:
    bridge = ThreadBridge(2, name="test-sources")
    events = EventRecorder(NODE)
    supervisor = Supervisor()
    applied: list[tuple[str, list[Pod]]] = []
    async with supervisor:
        source = ManifestDirSource(
            tmp_path / "manifests",
            node_name=NODE,
            interval_s=3600.0,
            bridge=bridge,
            events=events,
            apply=lambda prefix, pods: applied.append((prefix, pods)),
            tasks=supervisor.scope("manifest-dir"),
        )
        made = Dir(tmp_path / "manifests", source, bridge, events, applied)
        try:
            yield made
        finally:
            await source.stop()
            bridge.close()


async def test_a_missing_directory_is_an_empty_set_and_every_scan_says_so(manifests: Dir) -> None:
    await manifests.source.scan()
    await manifests.source.scan()
    assert manifests.applied == [(SOURCE_PREFIX, []), (SOURCE_PREFIX, [])]


async def test_files_added_changed_removed_and_renamed(manifests: Dir) -> None:
    await manifests.write("a.yaml", manifest("a"))
    await manifests.write(
        "b.json",
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"},'
        ' "spec": {"containers": [{"name": "main", "image": "x:1"}]}}',
    )
    await manifests.write("notes.txt", "not a manifest")
    await manifests.write(".hidden.yaml", manifest("hidden"))
    await manifests.run(os.mkdir, manifests.path / "dir.yaml")  # a directory, not a file
    await manifests.source.scan()
    assert manifests.names == {"a", "b"}
    (pod_a,) = [p for p in manifests.applied[-1][1] if p.metadata.name == "a"]
    assert pod_a.source == f"{SOURCE_PREFIX}{manifests.path / 'a.yaml'}"

    count = len(manifests.applied)
    await manifests.source.scan()  # nothing changed: nothing handed over
    assert len(manifests.applied) == count

    await manifests.write("a.yaml", manifest("a", "busybox:2"))
    await manifests.source.scan()
    assert manifests.images()["a"] == "busybox:2"

    await manifests.run(os.rename, manifests.path / "a.yaml", manifests.path / "c.yml")
    await manifests.source.scan()
    assert manifests.names == {"a", "b"}
    (renamed,) = [p for p in manifests.applied[-1][1] if p.metadata.name == "a"]
    assert renamed.source.endswith("c.yml")

    await manifests.run(os.unlink, manifests.path / "b.json")
    await manifests.source.scan()
    assert manifests.names == {"a"}


async def test_a_bad_file_is_an_event_and_its_pods_keep_running(manifests: Dir) -> None:
    await manifests.write("a.yaml", manifest("a"))
    await manifests.write("b.yaml", manifest("b"))
    await manifests.source.scan()
    path = str(manifests.path / "a.yaml")

    await manifests.write("a.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [broken\n")
    await manifests.source.scan()
    assert manifests.names == {"a", "b"}  # a's pod from before is still wanted
    assert path in manifests.source.errors
    assert manifests.warnings() == [("FailedToParse", "a.yaml")]

    await manifests.write("a.yaml", manifest("a", "busybox:3"))
    await manifests.source.scan()
    assert manifests.images()["a"] == "busybox:3"
    assert manifests.source.errors == {}


async def test_a_new_bad_file_holds_no_pods_and_removing_it_clears_its_error(
    manifests: Dir,
) -> None:
    await manifests.write("big.yaml", b"#" * (MAX_MANIFEST_BYTES + 1))
    await manifests.write("latin.yaml", b"metadata: {name: caf\xe9}\n")
    await manifests.source.scan()
    assert manifests.names == set()
    errors = manifests.source.errors
    assert f"larger than {MAX_MANIFEST_BYTES} bytes" in errors[str(manifests.path / "big.yaml")]
    assert "not UTF-8" in errors[str(manifests.path / "latin.yaml")]
    await manifests.run(os.unlink, manifests.path / "big.yaml")
    await manifests.source.scan()
    assert str(manifests.path / "big.yaml") not in manifests.source.errors


async def test_an_unreadable_file_is_reported_like_a_bad_one(
    manifests: Dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    await manifests.write("a.yaml", manifest("a"))

    def unreadable(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("agent.node.pods.sources._read", unreadable)
    await manifests.source.scan()
    (error,) = manifests.source.errors.values()
    assert "Permission denied" in error and error.startswith(str(manifests.path / "a.yaml"))


async def test_a_pod_defined_twice_is_taken_from_the_first_file_once_reported(
    manifests: Dir,
) -> None:
    await manifests.write("1.yaml", manifest("web", "busybox:1"))
    await manifests.write("2.yaml", manifest("web", "busybox:2"))
    await manifests.source.scan()
    assert manifests.images() == {"web": "busybox:1"}
    message = manifests.source.errors[str(manifests.path / "2.yaml")]
    assert message.startswith("pod default/web is also defined in")
    await manifests.write("3.yaml", manifest("other"))
    await manifests.source.scan()  # the duplicate is still there: not reported again
    assert manifests.warnings() == [("Duplicate", "2.yaml")]


async def test_the_directory_is_followed_by_inotify(manifests: Dir) -> None:
    await manifests.run(os.mkdir, manifests.path)
    await manifests.source.start()  # scans once, then follows (polling only hourly here)
    assert manifests.names == set()
    await manifests.write("a.yaml", manifest("a"))
    await until(lambda: manifests.applied and manifests.names == {"a"}, "a picked up")


async def test_a_directory_that_appears_later_is_found_by_polling(tmp_path: Path) -> None:
    bridge = ThreadBridge(2, name="test-sources")
    applied: list[list[Pod]] = []
    supervisor = Supervisor()
    directory = tmp_path / "later"
    async with supervisor:
        source = ManifestDirSource(
            directory,
            node_name=NODE,
            interval_s=0.01,
            bridge=bridge,
            events=EventRecorder(NODE),
            apply=lambda prefix, pods: applied.append(pods),
            tasks=supervisor.scope("manifest-dir"),
        )
        await source.start()
        try:
            assert applied == [[]]
            made = Dir(directory, source, bridge, EventRecorder(NODE))
            await made.write("a.yaml", manifest("a"))
            await until(lambda: [p.metadata.name for p in applied[-1]] == ["a"], "a found")
            await made.write("b.yaml", manifest("b"))  # the watch is in place by now
            await until(lambda: len(applied[-1]) == 2, "b found")
        finally:
            await source.stop()
            bridge.close()


async def test_no_hostile_file_stops_the_source_at_boot_or_later(manifests: Dir) -> None:
    """Issue 14, item 9: every hostile manifest of the corpus, present at the first scan and
    written later over a good file, is a FailedToParse naming the path; the other pods stay."""
    await manifests.write("good.yaml", manifest("good"))
    for hostile in FILES:
        await manifests.write(f"boot-{hostile.id}.yaml", hostile.text)
    await manifests.source.start()
    assert manifests.names == {"good"}
    for hostile in FILES:
        error = manifests.source.errors[str(manifests.path / f"boot-{hostile.id}.yaml")]
        assert f": {hostile.field}" in error and hostile.problem in error, (hostile.id, error)
    await manifests.write("later.yaml", manifest("later"))
    await until(lambda: manifests.names == {"good", "later"}, "later picked up")
    for hostile in FILES:
        await manifests.write("later.yaml", hostile.text)
        await until(lambda: str(manifests.path / "later.yaml") in manifests.source.errors, "seen")
        assert manifests.names == {"good", "later"}  # the pod it held keeps running
        await manifests.write("later.yaml", manifest("later"))
        await until(lambda: str(manifests.path / "later.yaml") not in manifests.source.errors, "ok")


async def test_a_file_name_that_is_not_utf8_is_reported_escaped(manifests: Dir) -> None:
    await manifests.run(os.mkdir, manifests.path)
    name = os.fsdecode(b"caf\xe9.yaml")  # a lone surrogate in the str

    def write() -> None:
        (manifests.path / name).write_text(manifest("cafe"))

    await manifests.run(write)
    await manifests.source.scan()
    assert manifests.names == set()
    [(key, error)] = manifests.source.errors.items()
    assert key.endswith("caf\\udce9.yaml") and "the file name is not UTF-8" in error
    assert manifests.warnings() == [("FailedToParse", "caf\\udce9.yaml")]


async def test_whatever_a_file_provokes_the_source_carries_on(
    manifests: Dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulkhead: an exception the parser should never raise is still one file's error."""
    await manifests.write("a.yaml", manifest("a"))
    await manifests.write("b.yaml", manifest("b"))

    def parse(text: str, *, source: str, node_name: str | None = None, **kw: Any) -> list[Pod]:
        if "name: a" in text:
            raise RuntimeError("a bug")
        return parse_manifests(text, source=source, node_name=node_name, **kw)

    monkeypatch.setattr("agent.node.pods.sources.parse_manifests", parse)
    await manifests.source.scan()
    assert manifests.names == {"b"}
    error = manifests.source.errors[str(manifests.path / "a.yaml")]
    assert error.endswith("a.yaml: could not be read (RuntimeError; see the agent's log)")


async def test_a_large_file_is_parsed_off_the_event_loop(
    manifests: Dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, str] = {}  # file name: the thread that parsed it

    def parse(text: str, *, source: str, node_name: str | None = None, **kw: Any) -> list[Pod]:
        threads[Path(source).name] = threading.current_thread().name
        return parse_manifests(text, source=source, node_name=node_name, **kw)

    monkeypatch.setattr("agent.node.pods.sources.parse_manifests", parse)
    await manifests.write("small.yaml", manifest("small"))
    await manifests.write("large.yaml", manifest("large") + "#" * OFF_LOOP_BYTES + "\n")
    await manifests.source.scan()
    assert manifests.names == {"small", "large"}
    loop_thread = threading.current_thread().name
    assert threads["small.yaml"] == loop_thread and threads["large.yaml"] != loop_thread
