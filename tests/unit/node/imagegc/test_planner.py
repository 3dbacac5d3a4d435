"""The image GC planner and the dead-container bound, on FakeRuntime's records and a fake
clock: LRU order, thresholds, every exemption, max age."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.node.imagegc.planner import (
    Delete,
    FsUsage,
    GCPolicy,
    Keep,
    Usage,
    dead_containers_to_remove,
    plan_gc,
    refresh_usage,
)
from agent.node.runtime.base import ContainerRecord, ContainerState, ImageRecord
from agent.node.runtime.fake import FakeRuntime
from agent.types import LABEL_ATTEMPT, LABEL_CONTAINER, LABEL_KIND, LABEL_POD_UID
from tests.unit.node.imagegc.fakeclock import FakeClock

MB = 1_000_000
NOW = 1_000_000.0
POLICY = GCPolicy(
    high_percent=85,
    low_percent=80,
    minimum_age_s=120,
    pinned_images=("registry.local/keep/*",),
    sandbox_image="node-agent/pause:0.1",
)


def _images(runtime: FakeRuntime, names: list[str], size: int = 10 * MB) -> list[ImageRecord]:
    return [runtime.add_image(name, size_bytes=size) for name in names]


def test_lru_first_until_under_the_low_threshold() -> None:
    runtime = FakeRuntime(clock=FakeClock(NOW))
    images = _images(runtime, [f"app/{i}:1" for i in range(6)])
    # last used: app/3 longest ago, then 0, 5, 1, 4, 2
    ages = {0: 5000, 1: 3000, 2: 1000, 3: 9000, 4: 2000, 5: 4000}
    usage = {img.id: Usage(NOW - 10_000, NOW - ages[i]) for i, img in enumerate(images)}
    fs = FsUsage(capacity_bytes=100 * MB, used_bytes=90 * MB)  # 90 % >= 85 %: free 10 MB
    plan = plan_gc(
        images=images, in_use={}, reserved={}, usage=usage, fs=fs, now=NOW, policy=POLICY
    )
    assert plan.triggered and plan.bytes_to_free == 10 * MB
    assert [v.image.repo_tags[0] for v in plan.verdicts] == [
        "app/3:1", "app/0:1", "app/5:1", "app/1:1", "app/4:1", "app/2:1"
    ]  # fmt: skip
    assert [v.image.repo_tags[0] for v in plan.deletions] == ["app/3:1"]
    assert plan.deletions[0].reason == Delete.DISK
    assert {v.reason for v in plan.verdicts if not v.delete} == {Keep.NOT_NEEDED}

    fs = FsUsage(capacity_bytes=100 * MB, used_bytes=99 * MB)  # free 19 MB: two images
    plan = plan_gc(
        images=images, in_use={}, reserved={}, usage=usage, fs=fs, now=NOW, policy=POLICY
    )
    assert [v.image.repo_tags[0] for v in plan.deletions] == ["app/3:1", "app/0:1"]


def test_under_the_high_threshold_nothing_goes_unless_forced() -> None:
    runtime = FakeRuntime(clock=FakeClock(NOW))
    images = _images(runtime, ["a:1", "b:1"])
    usage = {img.id: Usage(0.0, 0.0) for img in images}
    fs = FsUsage(100 * MB, 84 * MB)
    plan = plan_gc(
        images=images, in_use={}, reserved={}, usage=usage, fs=fs, now=NOW, policy=POLICY
    )
    assert not plan.triggered and plan.deletions == ()
    assert all("< 85%" in v.detail for v in plan.verdicts)
    forced = plan_gc(
        images=images,
        in_use={},
        reserved={},
        usage=usage,
        fs=fs,
        now=NOW,
        policy=POLICY,
        force=True,
    )
    assert len(forced.deletions) == 1  # 84 -> 80 %: one 10 MB image is enough


def test_never_in_use_reserved_sandbox_pinned_or_too_young() -> None:
    runtime = FakeRuntime(clock=FakeClock(NOW))
    used, reserved, sandbox, pinned, young, free = _images(
        runtime,
        [
            "used:1",
            "reserved:1",
            "node-agent/pause:0.1",
            "registry.local/keep/x:2",
            "young:1",
            "free:1",
        ],
    )
    old = Usage(0.0, 0.0)
    usage = {i.id: old for i in (used, reserved, sandbox, pinned, free)}
    usage[young.id] = Usage(0.0, NOW - 119)
    fs = FsUsage(100 * MB, 100 * MB)  # full: everything eligible would go
    plan = plan_gc(
        images=[used, reserved, sandbox, pinned, young, free],
        in_use={used.id: "someone-elses-container"},
        reserved={reserved.id: "pod-uid-1"},
        usage=usage,
        fs=fs,
        now=NOW,
        policy=POLICY,
    )
    why = {v.image.repo_tags[0]: (v.delete, v.reason, v.detail) for v in plan.verdicts}
    assert why["used:1"] == (False, Keep.IN_USE, "container someone-elses-container")
    assert why["reserved:1"] == (False, Keep.RESERVED, "pod pod-uid-1")
    assert why["node-agent/pause:0.1"][:2] == (False, Keep.SANDBOX)
    assert why["registry.local/keep/x:2"] == (
        False, Keep.PINNED, "pinned_images 'registry.local/keep/*'"
    )  # fmt: skip
    assert why["young:1"][:2] == (False, Keep.TOO_YOUNG)
    assert why["free:1"][:2] == (True, Delete.DISK)


def test_the_sandbox_is_kept_by_id_even_when_retagged() -> None:
    runtime = FakeRuntime(clock=FakeClock(NOW))
    [sandbox] = _images(runtime, ["other-name:1"])
    plan = plan_gc(
        images=[sandbox],
        in_use={},
        reserved={},
        usage={sandbox.id: Usage(0.0, 0.0)},
        fs=FsUsage(100, 100),
        now=NOW,
        policy=POLICY,
        sandbox_id=sandbox.id,
    )
    assert plan.verdicts[0].reason == Keep.SANDBOX


def test_an_image_unknown_to_the_record_is_first_seen_now() -> None:
    """A missing record never makes an image old (nomad #9045: deleted at once)."""
    runtime = FakeRuntime(clock=FakeClock(NOW))
    [image] = _images(runtime, ["new:1"])
    plan = plan_gc(
        images=[image],
        in_use={},
        reserved={},
        usage={},
        fs=FsUsage(100, 100),
        now=NOW,
        policy=POLICY,
    )
    assert plan.verdicts[0].reason == Keep.TOO_YOUNG


def test_maximum_age_deletes_whatever_the_usage() -> None:
    runtime = FakeRuntime(clock=FakeClock(NOW))
    stale, fresh, used = _images(runtime, ["stale:1", "fresh:1", "used:1"])
    usage = {
        stale.id: Usage(0.0, NOW - 3601),
        fresh.id: Usage(0.0, NOW - 600),
        used.id: Usage(0.0, NOW - 9999),
    }
    policy = GCPolicy(minimum_age_s=120, maximum_age_s=3600)
    plan = plan_gc(
        images=[stale, fresh, used],
        in_use={used.id: "c"},
        reserved={},
        usage=usage,
        fs=FsUsage(100 * MB, 1 * MB),
        now=NOW,
        policy=policy,
    )
    assert [(v.image.repo_tags[0], v.reason) for v in plan.deletions] == [
        ("stale:1", Delete.MAX_AGE)
    ]


def test_refresh_usage_first_seen_last_used_and_forgetting() -> None:
    runtime = FakeRuntime(clock=FakeClock(NOW))
    a, b = _images(runtime, ["a:1", "b:1"])
    known = {a.id: Usage(10.0, 20.0), "sha256:gone": Usage(1.0, 2.0)}
    out = refresh_usage(known, [a, b], {a.id: "c1"}, NOW)
    assert out == {a.id: Usage(10.0, NOW), b.id: Usage(NOW, NOW)}
    assert refresh_usage(out, [a, b], {}, NOW + 5) == out  # unused: unchanged


def _record(
    uid: str,
    name: str,
    attempt: int,
    state: ContainerState,
    finished: float,
    *,
    sandbox: bool = False,
) -> ContainerRecord:
    labels = {LABEL_POD_UID: uid, LABEL_CONTAINER: name, LABEL_ATTEMPT: str(attempt)}
    if sandbox:
        labels[LABEL_KIND] = "sandbox"
    return ContainerRecord(
        id=f"{uid}-{name}-{attempt}",
        name=f"{name}_{uid}_{attempt}",
        labels=labels,
        state=state,
        finished_at=datetime.fromtimestamp(finished, UTC),
    )


EXITED = ContainerState.EXITED
RUNNING = ContainerState.RUNNING


@pytest.mark.parametrize("per_container", [0, 1, 2, 3])
def test_dead_containers_keep_exactly_n_per_container(per_container: int) -> None:
    records = [_record("p", "app", i, EXITED, 100.0 + i) for i in range(5)]
    records.append(_record("p", "app", 5, RUNNING, 0.0))
    doomed = dead_containers_to_remove(records, per_container=per_container, total=None)
    kept_dead = [r for r in records if r not in doomed and r.state is EXITED]
    assert len(kept_dead) == per_container
    assert kept_dead == records[5 - per_container : 5]  # the newest ones
    assert doomed == records[: 5 - per_container]  # oldest first


def test_the_latest_attempt_is_kept_even_when_dead_and_not_counted() -> None:
    """In a crash loop the latest attempt is the current container: N more are kept besides."""
    records = [_record("p", "app", i, EXITED, 100.0 + i) for i in range(4)]
    assert dead_containers_to_remove(records, per_container=0, total=0) == records[:3]
    assert dead_containers_to_remove(records, per_container=1, total=None) == records[:2]


def test_the_node_wide_bound_removes_the_oldest_finished_first() -> None:
    records = [
        _record("p1", "a", 0, EXITED, 10.0),
        _record("p1", "a", 1, RUNNING, 0.0),
        _record("p2", "b", 0, EXITED, 5.0),
        _record("p2", "b", 1, EXITED, 30.0),
        _record("p2", "b", 2, RUNNING, 0.0),
        _record("p3", "c", 0, EXITED, 20.0),
        _record("p3", "c", 1, RUNNING, 0.0),
        _record("p3", "s", 0, RUNNING, 0.0, sandbox=True),
    ]
    # per container 2: nothing over it; four dead, total 2: two go, the oldest finished first
    doomed = dead_containers_to_remove(records, per_container=2, total=2)
    assert [r.id for r in doomed] == ["p2-b-0", "p1-a-0"]
    assert all(r.state is EXITED for r in doomed)


def test_usage_counts_what_is_not_available_as_used() -> None:
    """ext4 keeps 5 % for root; a thin disk may give less than it shows: kubelet's count."""
    fs = FsUsage.of({"capacityBytes": 1000, "usedBytes": 100, "availableBytes": 300})
    assert (fs.used_bytes, fs.percent) == (700, 70.0)
    assert FsUsage.of({"capacityBytes": 1000, "usedBytes": 100}).percent == 10.0
