"""The pod manager on the FakeRuntime: sources' pod sets diffed into workers, restore from the
checkpoint or (when it is lost) from the runtime, adoption of containers nobody wants, the
coalesced checkpoint writes and their failures, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.errors import RuntimeUnavailableError
from agent.node.pods.checkpoint import CheckpointStore
from agent.node.pods.manager import CHECKPOINT_MIN_INTERVAL_S, CHECKPOINT_RETRY_S
from agent.node.pods.specs import container_name
from agent.node.runtime.base import ContainerSpec
from agent.types import (
    KIND_APP,
    KIND_SANDBOX,
    LABEL_ATTEMPT,
    LABEL_CONTAINER,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_POD_MANIFEST,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    SANDBOX_CONTAINER_NAME,
)
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.managerrig import DEADLINE_S, IMAGE, ManagerRig, manager_rig, static_pod
from tests.unit.node.pods.rig import NODE

pytestmark = pytest.mark.usefixtures("blockbuster")

API_UID = "0a0a0a0a-0000-0000-0000-000000000001"


async def saved(rig: ManagerRig) -> dict[str, Any] | None:
    """The checkpoint on disk (read through the bridge)."""
    data: dict[str, Any] | None = await rig.bridge.run(CheckpointStore(rig.checkpoint_path).load)
    return data


def started(rig: ManagerRig) -> list[str]:
    """The names of the containers started so far (as traced)."""
    return [op[1] for op in rig.runtime.trace if op[0] == "start"]


def writes(rig: ManagerRig) -> float:
    """Checkpoint writes that succeeded (the write-duration histogram's count; the registry's
    own reads include /proc, which the loop must not do)."""
    (family,) = rig.metrics.checkpoint_seconds.collect()
    return next(float(s.value) for s in family.samples if s.name.endswith("_count"))


async def write_errors(rig: ManagerRig) -> int:
    return await rig.bridge.run(lambda: rig.metrics.checkpoint_errors)


async def saved_uids(rig: ManagerRig) -> set[str]:
    data = await saved(rig)
    return set((data or {}).get("pods", {}))


async def stray(rig: ManagerRig, uid: str, *, sandbox_manifest: str | None = None) -> str:
    """A running container of pod ``uid`` that no source wants; with ``sandbox_manifest``, a
    sandbox carrying that label (as our sandboxes carry the pod's manifest)."""
    kind = KIND_SANDBOX if sandbox_manifest is not None else KIND_APP
    labels = {
        LABEL_NODE: NODE,
        LABEL_POD_UID: uid,
        LABEL_POD_NAME: "stray",
        LABEL_POD_NAMESPACE: "default",
        LABEL_CONTAINER: SANDBOX_CONTAINER_NAME if sandbox_manifest is not None else "main",
        LABEL_KIND: kind,
        LABEL_ATTEMPT: "0",
    }
    if sandbox_manifest is not None:
        labels[LABEL_POD_MANIFEST] = sandbox_manifest
    cid = await rig.runtime.create_container(
        ContainerSpec(name=f"stray-{uid}-{kind}", image=IMAGE, labels=labels)
    )
    await rig.runtime.start_container(cid)
    return cid


# -- sources ----------------------------------------------------------------------------------


async def test_a_source_adds_changes_and_deletes_only_its_own_pods(tmp_path: Path) -> None:
    async with manager_rig(tmp_path) as rig:
        api = static_pod("x", source="api", uid=API_UID)
        a, b = static_pod("a"), static_pod("b")
        await rig.apply(api, prefix="api")
        await rig.apply(a, b)
        assert set(rig.pods.pods_of_source("file:")) == {a.uid, b.uid}
        assert set(rig.pods.pods_of_source("api")) == {api.uid}
        assert rig.pods.count == 3

        rig.pods.apply_source("file:", [a])  # b left its source: torn down
        await until(lambda: b.uid not in rig.pods.workers, "b's teardown done")
        assert await rig.app_records(b) == []
        assert set(rig.pods.pods_of_source("api")) == {api.uid}  # another source's pod stays

        # The same pod (same uid) with a new spec is updated in place by its worker.
        worker = rig.pods.workers[api.uid]
        env = [{"name": "MODE", "value": "2"}]
        changed = static_pod(
            "x", {"name": "main", "image": IMAGE, "env": env}, source="api", uid=API_UID
        )
        assert changed.spec_hash != api.spec_hash
        rig.runtime.trace.clear()
        rig.pods.apply_source("api", [changed])
        assert rig.pods.workers[api.uid] is worker and worker.pod is changed
        replacement = container_name(changed, "main", 1)
        await until(lambda: replacement in started(rig), "the new container started")
        running = [r for r in await rig.app_records(api) if r.running]
        assert [dict(rig.runtime.spec_of(r.id).env).get("MODE") for r in running] == ["2"]

        # Handing over the same set again changes nothing.
        creates = rig.runtime.calls["create_container"]
        rig.pods.apply_source("file:", [a])
        rig.pods.apply_source("api", [changed])
        await rig.pods.wait_synced()
        assert rig.runtime.calls["create_container"] == creates


async def test_a_changed_static_pod_starts_once_the_old_one_is_gone(tmp_path: Path) -> None:
    async with manager_rig(tmp_path) as rig:
        old = static_pod("web")
        await rig.apply(old)
        new = static_pod("web", {"name": "main", "image": IMAGE, "args": ["v2"]})
        assert new.uid != old.uid and new.full_name == old.full_name
        rig.runtime.trace.clear()
        await rig.apply(new)
        await until(lambda: old.uid not in rig.pods.workers, "old pod gone")
        removes = [i for i, op in enumerate(rig.runtime.trace) if op[0] == "remove"]
        creates = [i for i, op in enumerate(rig.runtime.trace) if op[0] == "create"]
        assert removes and creates and max(removes) < min(creates)  # never both at once
        assert [r.pod_uid for r in await rig.app_records() if r.running] == [new.uid]


async def test_a_pod_given_back_while_it_is_torn_down_comes_back_after(tmp_path: Path) -> None:
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        first = rig.pods.workers[a.uid]
        # The teardown cannot stop the containers yet: it retries with back-off.
        rig.runtime.fail("stop_container", RuntimeUnavailableError("engine busy"), times=None)
        rig.pods.apply_source("file:", [])
        await until(lambda: first.last_error != "", "teardown failed once")
        listed = {i["metadata"]["name"]: i for i in rig.pods.pod_list()}
        assert listed["a"]["metadata"]["deletionTimestamp"] == "pending"
        assert listed["a"]["metadata"]["annotations"]["node-agent.io/source"] == a.source
        assert rig.pods.pods_of_source("file:") == {}

        rig.pods.apply_source("file:", [a])  # back before the old worker finished
        second = rig.pods.workers[a.uid]
        assert second is not first and not second.synced_once.is_set()
        rig.runtime.clear_faults()
        rig.clock.advance(60.0)  # the teardown's retry
        await until(lambda: first.done.is_set(), "old worker done")
        await rig.pods.wait_synced()
        assert rig.pods.workers[a.uid] is second  # the old worker did not remove the new one
        assert [r.running for r in await rig.app_records(a)] == [True]


async def test_wake_reaches_the_pods_worker_only(tmp_path: Path) -> None:
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        assert rig.pods.wake(a.uid) is True
        assert rig.pods.wake("no-such-uid") is False
        rig.pods.wake_all()
        await rig.pods.wait_synced()


# -- restore and adoption ---------------------------------------------------------------------


async def test_a_restart_restores_pods_and_books_and_adopts_their_containers(
    tmp_path: Path,
) -> None:
    async with manager_rig(tmp_path) as rig:
        a, api = static_pod("a"), static_pod("x", source="api", uid=API_UID)
        await rig.apply(a)
        await rig.apply(api, prefix="api")
        book = rig.pods.workers[a.uid].book.to_json()
        before = await rig.app_records()
        creates = rig.runtime.calls["create_container"]

        manager = await rig.restart()
        assert {w.pod.source for w in manager.workers.values()} == {a.source, "api"}
        assert manager.workers[a.uid].book.to_json() == book
        await manager.wait_synced()
        manager.adopt_found_at_start()
        await manager.wait_synced()
        assert await rig.app_records() == before
        assert rig.runtime.calls["create_container"] == creates


async def test_a_lost_checkpoint_is_rebuilt_from_the_sandboxes_manifests(tmp_path: Path) -> None:
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        await rig.apply(static_pod("x", source="api", uid=API_UID), prefix="api")
        before = await rig.app_records()
        await rig.managers.pop().stop()
        await rig.bridge.run(rig.checkpoint_path.unlink)

        manager = rig.new_manager()
        await manager.start()
        assert {(w.pod.full_name, w.pod.source) for w in manager.workers.values()} == {
            ("default/a", a.source),
            ("default/x", "api"),
        }
        await manager.wait_synced()
        manager.adopt_found_at_start()
        assert await rig.app_records() == before


async def test_a_corrupt_checkpoint_is_moved_aside_and_rebuilt_from_the_runtime(
    tmp_path: Path,
) -> None:
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        await rig.managers.pop().stop()
        await rig.bridge.run(rig.checkpoint_path.write_text, "{not json")

        manager = rig.new_manager()
        await manager.start()
        assert set(manager.workers) == {a.uid}
        aside = await rig.bridge.run(lambda: list(tmp_path.glob("checkpoint.json.corrupt-*")))
        assert len(aside) == 1


async def test_a_malformed_book_keeps_its_pod_and_the_attempts_are_relearned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod whose bookkeeping in the checkpoint is damaged is still desired: it is kept with
    a fresh book, so its running containers are adopted, not removed as strays."""
    async with manager_rig(tmp_path) as rig:
        a, b = static_pod("a"), static_pod("b")
        await rig.apply(a, b)
        app = next(r for r in await rig.app_records(a) if r.running)
        rig.runtime.exit_container(app.id, 1)
        rig.pods.wake(a.uid)
        worker = rig.pods.workers[a.uid]
        await until(lambda: "main" in worker.book.restarts, "the exit seen")
        rig.clock.advance(10.0)  # the restart back-off
        await until(lambda: rig.pods.workers[a.uid].book.attempts.get("main") == 1, "restart")
        before = await rig.app_records()
        await rig.managers.pop().stop()
        data = await saved(rig)
        assert data is not None
        data["pods"][a.uid]["book"] = {"attempts": "junk"}
        await rig.bridge.run(CheckpointStore(rig.checkpoint_path).save, data)

        manager = rig.new_manager()
        with caplog.at_level(logging.ERROR, logger="agent.node.pods.manager"):
            await manager.start()
        assert set(manager.workers) == {a.uid, b.uid}
        assert manager.workers[a.uid].book.attempts == {}
        assert any(
            "worker book" in getattr(r, "fields", {}).get("error", "") for r in caplog.records
        )
        await manager.wait_synced()
        manager.adopt_found_at_start()
        await manager.wait_synced()
        assert await rig.app_records() == before  # nothing removed, nothing created
        assert manager.workers[a.uid].book.attempts == {"main": 1}  # from the labels


async def test_a_pod_with_an_unusable_manifest_in_the_checkpoint_is_skipped(
    tmp_path: Path,
) -> None:
    async with manager_rig(tmp_path) as rig:
        a, b = static_pod("a"), static_pod("b")
        await rig.apply(a, b)
        await rig.managers.pop().stop()
        data = await saved(rig)
        assert data is not None
        data["pods"][b.uid]["manifest"] = {"kind": "Pod"}
        await rig.bridge.run(CheckpointStore(rig.checkpoint_path).save, data)

        manager = rig.new_manager()
        await manager.start()
        assert set(manager.workers) == {a.uid}
        manager.adopt_found_at_start()  # b's containers have no desired pod now
        await until(lambda: b.uid not in manager.workers, "b torn down")
        assert await rig.app_records(b) == []


async def test_containers_of_pods_nobody_wants_are_removed_once_sources_had_their_say(
    tmp_path: Path,
) -> None:
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        orphan = static_pod("orphan", uid="0b0b0b0b-0000-0000-0000-000000000002")
        await stray(rig, orphan.uid, sandbox_manifest=json.dumps(dict(orphan.manifest)))
        await stray(rig, "uid-junk", sandbox_manifest="{junk")  # manifest unusable
        await stray(rig, "uid-bare")  # an app container without a sandbox

        manager = await rig.restart()
        assert set(manager.workers) == {a.uid}  # strays are not desired
        manager.adopt_found_at_start()
        teardown = manager.workers[orphan.uid]
        assert teardown.terminating and teardown.pod.full_name == "default/orphan"
        placeholder = manager.workers["uid-bare"].pod
        assert placeholder.source == "orphan" and placeholder.full_name == "default/stray"
        await until(lambda: set(manager.workers) == {a.uid}, "strays torn down")
        remaining = {r.pod_uid for r in await rig.runtime.list_containers()}
        assert remaining == {a.uid}
        manager.adopt_found_at_start()  # only once: the list was consumed
        assert set(manager.workers) == {a.uid}


# -- the checkpoint ---------------------------------------------------------------------------


async def test_changes_are_checkpointed_by_the_loop(tmp_path: Path) -> None:
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        await until(lambda: writes(rig) >= 1, "a checkpoint write")
        assert CHECKPOINT_MIN_INTERVAL_S in rig.sleeps.delays  # writes are coalesced
        await until(lambda: not rig.pods._dirty.is_set(), "nothing left to write")
        assert await saved_uids(rig) == {a.uid}


async def block_checkpoint_writes(rig: ManagerRig, blocker: Path) -> None:
    """Make ``blocker`` (the checkpoint's temporary file name) a directory. A write of pod a's
    progress may hold the name as a file at this moment (FileExistsError): wait until that
    write is over, each try a real mkdir."""
    made = False

    def mkdir() -> None:
        nonlocal made
        with contextlib.suppress(FileExistsError):
            blocker.mkdir()
            made = True

    async def attempt() -> bool:
        await rig.bridge.run(mkdir)
        return made

    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not await attempt():
        assert asyncio.get_running_loop().time() < deadline, "a checkpoint write never ended"
        await asyncio.sleep(0.01)


async def test_a_failed_checkpoint_write_is_counted_retried_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with manager_rig(tmp_path) as rig:
        a, b = static_pod("a"), static_pod("b")
        await rig.apply(a)
        await until(lambda: writes(rig) >= 1, "first checkpoint")
        # The temporary file's name taken by a directory: the write fails (EISDIR).
        blocker = tmp_path / f".checkpoint.json.tmp-{os.getpid()}"
        await block_checkpoint_writes(rig, blocker)
        with caplog.at_level(logging.ERROR, logger="agent.node.pods.manager"):
            await rig.apply(a, b)
            await until(lambda: rig.sleeps.retrying.is_set(), "a retry waits")
            assert rig.pods.checkpoint_error.startswith(str(rig.checkpoint_path))
            assert "EISDIR" in rig.pods.checkpoint_error
            assert await write_errors(rig) == 1
            rig.sleeps.release()  # still broken: counted again, logged once
            await until(lambda: rig.sleeps.delays.count(CHECKPOINT_RETRY_S) == 2, "2nd failure")
            assert await write_errors(rig) == 2
        failures = [r for r in caplog.records if r.getMessage().startswith("checkpoint write")]
        assert len(failures) == 1
        assert CHECKPOINT_RETRY_S in rig.sleeps.delays
        assert await saved_uids(rig) == {a.uid}  # the previous checkpoint is kept

        await rig.bridge.run(blocker.rmdir)
        rig.sleeps.release()
        await until(lambda: rig.pods.checkpoint_error == "", "writable again")
        assert await saved_uids(rig) == {a.uid, b.uid}


async def test_a_start_that_failed_before_restoring_never_overwrites_the_checkpoint(
    tmp_path: Path,
) -> None:
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        await rig.managers.pop().stop()
        assert await saved_uids(rig) == {a.uid}

        rig.runtime.set_down()
        manager = rig.new_manager()
        with pytest.raises(RuntimeUnavailableError):
            await manager.start()
        assert manager.count == 0
        await rig.managers.pop().stop()
        assert await saved_uids(rig) == {a.uid}  # not replaced by "no pods"


async def test_stop_cancels_workers_keeps_containers_and_saves(tmp_path: Path) -> None:
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        await rig.managers.pop().stop()
        assert await saved_uids(rig) == {a.uid}
        assert [r.running for r in await rig.app_records(a)] == [True]
        assert rig.runtime.calls["stop_container"] == 0


async def test_the_last_write_does_not_queue_behind_abandoned_runtime_calls(
    tmp_path: Path,
) -> None:
    """A cancelled worker abandons its wait on a Docker call, but the call keeps its bridge
    thread (a stop with its grace period): the last write of ``stop()`` goes through the
    checkpoint's own bridge, not behind those calls."""
    release = threading.Event()
    async with manager_rig(tmp_path) as rig:
        a = static_pod("a")
        await rig.apply(a)
        runtime_threads = 2  # the rig's runtime bridge
        calls = [asyncio.create_task(rig.bridge.run(release.wait)) for _ in range(runtime_threads)]
        try:
            await until(lambda: rig.bridge.calls_running == runtime_threads, "threads all busy")
            for call in calls:
                call.cancel()
            await asyncio.wait(calls)  # abandoned: the threads still block
            before = writes(rig)
            # stop() ends (its last write is not stuck behind the blocked threads) and writes;
            # a coalesced write of the pod's first syncs may still land too, hence "more".
            await asyncio.wait_for(rig.managers.pop().stop(), DEADLINE_S)
            assert writes(rig) > before
            assert not release.is_set()
        finally:
            release.set()
        assert await saved_uids(rig) == {a.uid}
