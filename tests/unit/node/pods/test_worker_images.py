"""The pod worker's images on the FakeRuntime with a fake clock: pull policy through the pull
manager, digest pinning at admission (containers made from the pinned id, through restarts,
a re-tag, an agent restart and a lost checkpoint), reservations against image GC, and pulls
that fail without delaying other pods."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster

from agent.manifest import parse_pod
from agent.node.backoff import BackoffPolicy
from agent.node.imagegc.reservations import ImageReservations
from agent.node.images.pinning import PinnedImage
from agent.node.images.puller import PullManager
from agent.node.pods.worker import PodWorker, WorkerBook
from agent.node.runtime.base import ImageRecord, PullProgressCallback, RegistryAuth
from agent.types import LABEL_IMAGE
from tests.unit.node.pods.builders import UID, container, make_pod
from tests.unit.node.pods.rig import DEADLINE_S, SANDBOX_IMAGE, Rig, TracingRuntime

OTHER_UID = "bbbbbbbb-0000-0000-0000-000000000000"


@pytest.fixture
async def rig(tmp_path: Path, blockbuster: BlockBuster) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "state")
    rig.runtime.add_image(SANDBOX_IMAGE)  # present: its pull would count among the pulls
    yield rig
    await rig.close()


def status_of(worker: PodWorker, name: str = "c") -> dict[str, Any]:
    return next(s for s in worker.status["containerStatuses"] if s["name"] == name)


async def crash(rig: Rig, worker: PodWorker, name: str = "c") -> None:
    current = rig.runtime.one(worker.uid, name)
    await rig.step(worker, lambda: (rig.runtime.exit_container(current.id, 1), worker.wake()))
    await rig.advance(worker, 10)  # the crash-loop back-off


async def test_a_pod_is_pinned_to_the_image_id_its_tag_named_at_admission(rig: Rig) -> None:
    first = rig.runtime.add_image("img:1")
    worker = await rig.start(make_pod())
    running = rig.runtime.one(UID, "c")
    made_from = rig.runtime.spec_of(running.id)
    assert (made_from.image, made_from.labels[LABEL_IMAGE]) == (first.id, "img:1")
    assert worker.book.images == {"c": PinnedImage("img:1", first.id, "")}
    status = status_of(worker)
    assert (status["image"], status["imageID"]) == ("img:1", f"docker://{first.id}")

    moved = rig.runtime.add_image("img:1")  # docker tag: img:1 names another image now
    assert moved.id != first.id
    await crash(rig, worker)
    restarted = rig.runtime.one(UID, "c")
    assert restarted.attempt == 1 and restarted.running
    assert restarted.image_id == first.id
    assert status_of(worker)["imageID"] == f"docker://{first.id}"


async def test_the_pin_survives_an_agent_restart_through_the_checkpointed_book(
    rig: Rig,
) -> None:
    first = rig.runtime.add_image("img:1")
    worker = await rig.start(make_pod())
    saved = json.loads(json.dumps(worker.book.to_json()))  # as the checkpoint holds it
    await rig.stop(worker)  # the agent goes (kill -9: its containers stay)
    rig.runtime.add_image("img:1")  # the tag moves meanwhile
    again = await rig.start(make_pod(), WorkerBook.from_json(saved))
    rig.runtime.exit_container(rig.runtime.one(UID, "c").id, 1)
    await rig.step(again)
    await rig.advance(again, 10)
    assert rig.runtime.one(UID, "c").attempt == 1
    assert rig.runtime.one(UID, "c").image_id == first.id


async def test_a_lost_pin_is_learnt_from_the_container_the_runtime_still_has(rig: Rig) -> None:
    """Killed between the create and the checkpoint's write: the container's label and image
    id are the evidence, not today's tag."""
    first = rig.runtime.add_image("img:1")
    worker = await rig.start(make_pod())
    await rig.stop(worker)
    rig.runtime.add_image("img:1")
    fresh = await rig.start(make_pod(), WorkerBook())  # a book without the pin
    assert fresh.book.images["c"].image_id == first.id
    await crash(rig, fresh)
    assert rig.runtime.one(UID, "c").image_id == first.id


async def test_a_new_spec_resolves_again(rig: Rig) -> None:
    rig.runtime.add_image("img:1")
    worker = await rig.start(make_pod())
    moved = rig.runtime.add_image("img:1")
    # Any change to the manifest (here an annotation, as a re-apply to ask for it) is a new spec.
    changed = make_pod()
    changed_manifest = {**changed.manifest}
    changed_manifest["metadata"] = {
        **changed_manifest["metadata"],
        "annotations": {"example.com/resolve": "1"},
    }
    renewed = parse_pod(changed_manifest, source=changed.source, node_name="n1")
    assert renewed.spec_hash != changed.spec_hash
    await rig.step(worker, lambda: worker.update(renewed))
    assert rig.runtime.one(UID, "c").image_id == moved.id
    assert worker.book.images["c"].image_id == moved.id


async def test_a_pulled_image_shows_its_repo_digest(rig: Rig) -> None:
    rig.runtime.publish_image("registry.example/web:1")
    worker = await rig.start(make_pod(container(image="registry.example/web:1")))
    pin = worker.book.images["c"]
    assert pin.repo_digest.startswith("registry.example/web@sha256:")
    assert status_of(worker)["imageID"] == f"docker-pullable://{pin.repo_digest}"
    reasons = [e["reason"] for e in rig.events.list()]
    assert reasons[1:4] == ["Pulling", "Pulled", "Started"]


async def test_always_pulls_at_admission_not_at_each_restart(rig: Rig) -> None:
    rig.runtime.publish_image("web:1")
    worker = await rig.start(make_pod(container(image="web:1", imagePullPolicy="Always")))
    assert rig.runtime.calls["pull_image"] == 1
    await crash(rig, worker)
    assert rig.runtime.one(UID, "c").attempt == 1
    assert rig.runtime.calls["pull_image"] == 1


async def test_an_invalid_name_waits_for_a_new_spec(rig: Rig) -> None:
    worker = await rig.start(make_pod(container(image="Web:1")))
    waiting = status_of(worker)["state"]["waiting"]
    assert waiting["reason"] == "InvalidImageName"
    assert "invalid reference format" in waiting["message"]
    assert rig.clock.pending_s() == []
    assert rig.runtime.calls["pull_image"] == 0
    assert rig.events.list()[-1]["reason"] == "InspectFailed"


async def test_never_looks_again_with_back_off(rig: Rig) -> None:
    worker = await rig.start(make_pod(container(image="later:1", imagePullPolicy="Never")))
    assert status_of(worker)["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    assert rig.clock.pending_s() == [10]
    rig.runtime.add_image("later:1")  # docker load by hand
    await rig.advance(worker, 10)
    assert rig.runtime.one(UID, "c").running


class HangingPulls(TracingRuntime):
    """Pulls of ``hang`` never end (a registry that accepts and never answers)."""

    hang = "127.0.0.1:1/slow:1"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.hanging = asyncio.Event()

    async def pull_image(
        self,
        ref: str,
        progress: PullProgressCallback | None = None,
        auth: RegistryAuth | None = None,
    ) -> ImageRecord:
        if ref == self.hang:
            self.hanging.set()
            await asyncio.Event().wait()
        return await super().pull_image(ref, progress, auth)


async def test_a_hanging_pull_delays_no_other_pod(rig: Rig) -> None:
    runtime = HangingPulls(rig.clock)
    runtime.add_image("img:1")
    runtime.add_image(SANDBOX_IMAGE)
    images = PullManager(runtime, clock=rig.clock, backoff=rig.backoff, max_parallel=1)
    deps = dataclasses.replace(rig.deps, runtime=runtime, images=images)
    stuck = rig.spawn(make_pod(container(image=HangingPulls.hang)), deps=deps)
    await asyncio.wait_for(runtime.hanging.wait(), DEADLINE_S)  # its pull hangs from now on
    fine = rig.spawn(make_pod(name="other", uid=OTHER_UID), deps=deps)
    await rig.wait_syncs(fine, 1)
    assert [r.running for r in runtime.now(OTHER_UID) if r.container_name == "c"] == [True]
    assert rig.syncs[stuck] == 0


async def test_a_pod_whose_pull_hangs_is_deleted_at_once(rig: Rig) -> None:
    runtime = HangingPulls(rig.clock)
    runtime.add_image(SANDBOX_IMAGE)
    deps = dataclasses.replace(rig.deps, runtime=runtime, images=None)
    stuck = rig.spawn(make_pod(container(image=HangingPulls.hang)), deps=deps)
    await asyncio.wait_for(runtime.hanging.wait(), DEADLINE_S)
    stuck.terminate()
    await rig.finished(stuck)  # its teardown did not wait for the pull
    assert runtime.now(UID) == []


async def test_two_pods_on_one_missing_image_cost_one_attempt_per_back_off_step(
    rig: Rig,
) -> None:
    images = PullManager(rig.runtime, clock=rig.clock, backoff=BackoffPolicy(10, 40))
    deps = dataclasses.replace(rig.deps, images=images)
    image = "127.0.0.1:1/nope:1"
    a = rig.spawn(make_pod(container(image=image)), deps=deps)
    b = rig.spawn(make_pod(container(image=image), name="b", uid=OTHER_UID), deps=deps)
    await rig.wait_syncs(a, 1)
    await rig.wait_syncs(b, 1)
    assert images.attempts == 1
    assert images.backoff_remaining_s(image) == 10
    for attempts, next_delay_s in ((2, 20), (3, 40), (4, 40)):
        synced_a, synced_b = rig.syncs[a], rig.syncs[b]
        rig.clock.advance(images.backoff_remaining_s(image))
        await rig.wait_syncs(a, synced_a + 1)
        await rig.wait_syncs(b, synced_b + 1)
        assert images.attempts == attempts  # both pods asked: one attempt
        assert images.backoff_remaining_s(image) == next_delay_s
    assert rig.runtime.calls["pull_image"] == 4
    reasons = {status_of(w)["state"]["waiting"]["reason"] for w in (a, b)}
    assert reasons <= {"ErrImagePull", "ImagePullBackOff"}


async def test_pins_are_reserved_against_image_gc_and_released_with_the_pod(rig: Rig) -> None:
    reservations = ImageReservations()
    first = rig.runtime.add_image("img:1")
    deps = dataclasses.replace(rig.deps, image_reservations=reservations)
    worker = rig.spawn(make_pod(), deps=deps)
    await rig.wait_syncs(worker, 1)
    assert reservations.holders_of(first.id) == (UID,)
    await rig.stop(worker)
    reservations.release(UID)  # as after an agent restart: nothing reserved in memory
    again = rig.spawn(make_pod(), WorkerBook.from_json(worker.book.to_json()), deps=deps)
    await rig.wait_syncs(again, 1)
    assert reservations.holders_of(first.id) == (UID,)  # reserved from the book at once
    again.terminate()
    await rig.finished(again)
    assert reservations.reserved() == frozenset()


def test_the_book_carries_the_pins_and_names_a_bad_one() -> None:
    pin = PinnedImage("web:1", "sha256:" + "1" * 64, "web@sha256:" + "2" * 64)
    book = WorkerBook(images={"c": pin})
    assert WorkerBook.from_json(json.loads(json.dumps(book.to_json()))).images == {"c": pin}
    assert WorkerBook.from_json({}).images == {}
    with pytest.raises(ValueError, match=r"worker book images\['c'\]\.image_id: expected a string"):
        WorkerBook.from_json({"images": {"c": {"reference": "web:1", "image_id": 5}}})
    with pytest.raises(ValueError, match=r"worker book images\['c'\]: needs a reference"):
        WorkerBook.from_json({"images": {"c": {"reference": "web:1", "image_id": "abc"}}})
