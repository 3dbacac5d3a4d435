"""Image GC's decisions as pure functions: which images go, which stay and why; which dead
containers go. No I/O, no clock of their own: everything they judge is passed in, so the unit
tests drive them with a fake clock and the FakeRuntime's records.

Rules (docs/images.md, "Image garbage collection"):

* GC runs when the image filesystem's usage reaches ``high_percent`` and deletes until usage is
  at most ``low_percent`` (by the images' sizes; the manager measures again afterwards);
  least recently used first (ties: first seen, then id, so the order is total).
* Never deleted: an image any container on the engine uses (ours or not, in any state), an
  image reserved by a pod (``reservations``), the sandbox image, an image one of whose
  references matches a ``pinned_images`` pattern (``fnmatch``: ``registry.local/*``,
  ``busybox:*``), an image unused for less than ``minimum_age_s``.
* ``maximum_age_s`` (optional): an unused image not used for longer is deleted whatever the
  disk usage (the same exemptions hold).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from agent.node.runtime.base import ContainerRecord, ContainerState, ImageRecord


class Keep(StrEnum):
    """Why an image is not deleted (the ``reason`` label of the refusal metric)."""

    IN_USE = "in-use"
    RESERVED = "reserved"
    SANDBOX = "sandbox"
    PINNED = "pinned"
    TOO_YOUNG = "too-young"
    NOT_NEEDED = "not-needed"  # eligible, but usage is under the threshold already


class Delete(StrEnum):
    """Why an image is deleted."""

    DISK = "disk-usage"  # LRU, until usage is under the low threshold
    MAX_AGE = "max-age"  # unused for longer than image_maximum_gc_age


@dataclass(frozen=True, slots=True)
class GCPolicy:
    high_percent: float = 85.0
    low_percent: float = 80.0
    minimum_age_s: float = 120.0
    maximum_age_s: float | None = None
    pinned_images: tuple[str, ...] = ()
    sandbox_image: str = ""


@dataclass(frozen=True, slots=True)
class FsUsage:
    capacity_bytes: int
    used_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used_bytes / self.capacity_bytes if self.capacity_bytes else 0.0

    @classmethod
    def of(cls, usage: Mapping[str, int]) -> FsUsage:
        """From ``Runtime.image_fs_usage``'s answer. Used is what is not available to us, as
        kubelet counts it: blocks reserved for root (ext4's 5 %) and space a thin-provisioned
        disk cannot give count as used."""
        capacity = int(usage.get("capacityBytes", 0))
        if "availableBytes" in usage:
            return cls(capacity, max(0, capacity - int(usage["availableBytes"])))
        return cls(capacity, int(usage.get("usedBytes", 0)))


@dataclass(frozen=True, slots=True)
class Usage:
    """When an image was first seen by the agent and last used by a container (epoch s)."""

    first_seen: float
    last_used: float


@dataclass(frozen=True, slots=True)
class Verdict:
    image: ImageRecord
    last_used: float
    delete: bool
    reason: str  # a Delete or Keep value
    detail: str = ""  # e.g. the container using it, the pod reserving it, the pattern

    @property
    def name(self) -> str:
        return self.image.repo_tags[0] if self.image.repo_tags else self.image.id[:19]


@dataclass(frozen=True, slots=True)
class GCPlan:
    usage: FsUsage
    triggered: bool  # usage reached the high threshold
    bytes_to_free: int
    verdicts: tuple[Verdict, ...]  # every image, least recently used first

    @property
    def deletions(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.delete)

    @property
    def planned_bytes(self) -> int:
        return sum(v.image.size_bytes for v in self.deletions)


def _pinned_by(image: ImageRecord, patterns: Iterable[str]) -> str:
    refs = (*image.repo_tags, *image.repo_digests)
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(ref, pattern) for ref in refs):
            return pattern
    return ""


def _is_sandbox(image: ImageRecord, sandbox_image: str, sandbox_id: str) -> bool:
    if sandbox_id and image.id == sandbox_id:
        return True
    return bool(sandbox_image) and sandbox_image in image.repo_tags


def refresh_usage(
    known: Mapping[str, Usage],
    images: Iterable[ImageRecord],
    in_use: Mapping[str, str],
    now: float,
) -> dict[str, Usage]:
    """The usage record after one observation: images new to the agent are first seen now,
    images in use are used now, images gone are forgotten."""
    out: dict[str, Usage] = {}
    for image in images:
        seen = known.get(image.id) or Usage(first_seen=now, last_used=now)
        if image.id in in_use:
            seen = Usage(first_seen=seen.first_seen, last_used=now)
        out[image.id] = seen
    return out


def plan_gc(
    *,
    images: Iterable[ImageRecord],
    in_use: Mapping[str, str],
    reserved: Mapping[str, str],
    usage: Mapping[str, Usage],
    fs: FsUsage,
    now: float,
    policy: GCPolicy,
    sandbox_id: str = "",
    force: bool = False,
) -> GCPlan:
    """Decide every image's fate. ``in_use``: image id -> a container using it; ``reserved``:
    image id -> a holder (pod) reserving it; ``usage``: the last-used record (an image missing
    from it counts as first seen ``now``). ``force``: plan as if usage had reached the high
    threshold (``node-agent images gc`` asks for a run now; the low threshold still bounds it)."""
    ordered = sorted(
        images,
        key=lambda i: (
            usage[i.id].last_used if i.id in usage else now,
            usage[i.id].first_seen if i.id in usage else now,
            i.id,
        ),
    )
    triggered = fs.percent >= policy.high_percent
    low_bytes = int(fs.capacity_bytes * policy.low_percent / 100.0)
    to_free = max(0, fs.used_bytes - low_bytes) if (triggered or force) else 0
    freed = 0
    verdicts: list[Verdict] = []
    for image in ordered:
        last = usage[image.id].last_used if image.id in usage else now
        keep, detail = "", ""
        if image.id in in_use:
            keep, detail = Keep.IN_USE, f"container {in_use[image.id]}"
        elif image.id in reserved:
            keep, detail = Keep.RESERVED, f"pod {reserved[image.id]}"
        elif _is_sandbox(image, policy.sandbox_image, sandbox_id):
            keep, detail = Keep.SANDBOX, policy.sandbox_image
        elif pattern := _pinned_by(image, policy.pinned_images):
            keep, detail = Keep.PINNED, f"pinned_images {pattern!r}"
        elif now - last < policy.minimum_age_s:
            keep = Keep.TOO_YOUNG
            detail = f"unused for {max(0.0, now - last):.0f}s < {policy.minimum_age_s:.0f}s"
        if keep:
            verdicts.append(Verdict(image, last, False, keep, detail))
            continue
        if policy.maximum_age_s is not None and now - last > policy.maximum_age_s:
            verdicts.append(
                Verdict(
                    image,
                    last,
                    True,
                    Delete.MAX_AGE,
                    f"unused for {now - last:.0f}s > {policy.maximum_age_s:.0f}s",
                )
            )
            freed += image.size_bytes
            continue
        if freed < to_free:
            verdicts.append(
                Verdict(
                    image,
                    last,
                    True,
                    Delete.DISK,
                    f"usage {fs.percent:.1f}% >= {policy.high_percent:g}%, least recently used",
                )
            )
            freed += image.size_bytes
            continue
        why = (
            f"usage {fs.percent:.1f}% < {policy.high_percent:g}%"
            if not (triggered or force)
            else f"usage reaches {policy.low_percent:g}% without it"
        )
        verdicts.append(Verdict(image, last, False, Keep.NOT_NEEDED, why))
    return GCPlan(fs, triggered, to_free, tuple(verdicts))


# -- dead containers ---------------------------------------------------------------------------

_DEAD_STATES = frozenset({ContainerState.EXITED, ContainerState.DEAD})


def dead_containers_to_remove(
    records: Iterable[ContainerRecord], *, per_container: int, total: int | None
) -> list[ContainerRecord]:
    """Our terminated containers beyond the bounds, oldest first.

    Per pod container (pod uid, container name; sandboxes apart): the latest attempt is always
    kept, whatever its state (the pod worker decides its restarts from it; while it waits out a
    crash loop's back-off it is the "current" container), and besides it at most
    ``per_container`` terminated ones, the newest (``logs --previous`` reads the one before).
    Then, across the node, at most ``total`` terminated ones (None: no bound), removing the
    oldest finished first among those that are not a latest attempt. Running, created or
    restarting containers are never chosen.
    """
    groups: dict[tuple[str, str, bool], list[ContainerRecord]] = {}
    for record in records:
        key = (record.pod_uid, record.container_name, record.is_sandbox)
        groups.setdefault(key, []).append(record)
    remove: list[ContainerRecord] = []
    kept_dead: list[ContainerRecord] = []
    for group in groups.values():
        group.sort(key=lambda r: r.attempt)
        older = group[:-1]  # the latest attempt is never chosen
        dead_kept = 0
        for record in reversed(older):
            if record.state not in _DEAD_STATES:
                continue
            if dead_kept < per_container:
                dead_kept += 1
                kept_dead.append(record)
            else:
                remove.append(record)
    if total is not None:
        dead_total = sum(
            1 for group in groups.values() for r in group if r.state in _DEAD_STATES
        ) - len(remove)
        excess = dead_total - total
        if excess > 0:
            kept_dead.sort(key=_finished_key)
            remove.extend(kept_dead[:excess])
    remove.sort(key=_finished_key)
    return remove


def _finished_key(record: ContainerRecord) -> tuple[float, int, str]:
    when = record.finished_at or record.created_at
    return (when.timestamp() if when is not None else 0.0, record.attempt, record.id)
