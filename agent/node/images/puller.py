"""The pull manager: a container's image made present per its pull policy, for every pod.

* **One pull per reference.** Pods that need an image being pulled join that pull (each is
  told ``Pulling`` and the outcome); the pull is run by the first caller, and if that caller
  goes away (its pod deleted) a waiting one takes over.
* **Parallelism** is bounded (``max_parallel_image_pulls``): a pull waits for a slot, nothing
  else does. No lock is held across a pull, so a pod whose pull hangs or fails never delays
  another pod whose image is present.
* **Back-off per image**, not per pod: a failed pull (``ErrImagePull``) makes every pod asking
  for that reference wait (``ImagePullBackOff``) until the back-off (the crash-loop schedule:
  10 s, 20 s, … 300 s) has passed, so N pods on one missing image cost one attempt per step.
  Success forgets it. An engine that does not answer is not the image's fault: it raises
  RuntimeUnavailableError and costs no back-off.
* **References are checked** before anything else (``InvalidImageName``, never retried), and
  ``Never`` only looks (``ErrImageNeverPull``).
* **Events** are kubelet's (reason, message), reported to each asking pod through its
  ``PullReporter``: ``Pulling``, progress as ``Pulling`` with bytes done / total where the
  engine reports layer sizes (at most every ``PROGRESS_EVENT_INTERVAL_S``), ``Pulled`` with
  duration and size, ``Pulled`` "already present", ``Failed``, ``BackOff``, ``InspectFailed``,
  ``ErrImageNeverPull``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from agent.aio.clock import Clock
from agent.aio.logs import kv
from agent.errors import ImagePullError, ImageUnavailableError
from agent.node.backoff import BackoffPolicy
from agent.node.handlers import bounded_text
from agent.node.images.credentials import Credentials, EngineDefaultCredentials
from agent.node.images.reference import reference_problem
from agent.node.runtime.base import (
    PULL_ALWAYS,
    PULL_NEVER,
    ImageRecord,
    PullProgress,
    Runtime,
    familiar_reference,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_PARALLEL_PULLS = 2
PROGRESS_EVENT_INTERVAL_S = 10.0
BACKOFF_ENTRIES_MAX = 1000  # past this, entries whose back-off has passed are forgotten
# A failed pull's words (the engine's, relaying the registry's: a hostile registry's error can
# be megabytes holding ESC and newlines) on one line, at most this long, wherever they go: the
# pods' events and waiting status, the log, the back-off's message (the master keeps 1,024).
PULL_MESSAGE_MAX_CHARS = 1024
PULL_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

ERR_IMAGE_PULL = "ErrImagePull"
IMAGE_PULL_BACKOFF = "ImagePullBackOff"
ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
INVALID_IMAGE_NAME = "InvalidImageName"

PullReporter = Callable[[str, str, bool], None]
"""Where a pod hears about its image: ``(reason, message, warning)``, as an event."""


class ImagePuller(Protocol):
    async def ensure(self, image: str, policy: str, report: PullReporter) -> ImageRecord:
        """``image`` present per ``policy`` (Always, IfNotPresent, Never), its record;
        ImagePullError with Kubernetes' reason when it cannot be, RuntimeUnavailableError when
        the engine does not answer."""
        ...


def _size(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n_bytes} B"  # pragma: no cover - the loop always returns


@dataclass(slots=True)
class _Backoff:
    delay_s: float
    not_before: float  # monotonic
    error: str


@dataclass(slots=True)
class _Pull:
    """One pull in flight and who waits for it."""

    image: str
    future: asyncio.Future[ImageRecord]
    reporters: list[PullReporter]
    started: float | None = None  # monotonic, once it holds a slot
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (done, total)
    last_progress_event: float = 0.0

    def report(self, reason: str, message: str, warning: bool = False) -> None:
        for reporter in list(self.reporters):
            reporter(reason, message, warning)


class PullManager:
    """The node's one :class:`ImagePuller` (see the module docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        clock: Clock,
        backoff: BackoffPolicy,
        credentials: Credentials | None = None,
        max_parallel: int = DEFAULT_MAX_PARALLEL_PULLS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be >= 1")
        self._runtime = runtime
        self._clock = clock
        self._policy = backoff
        self._credentials = credentials or EngineDefaultCredentials()
        self._slots = asyncio.Semaphore(max_parallel)
        self._inflight: dict[str, _Pull] = {}
        self._backoff: dict[str, _Backoff] = {}
        self.attempts = 0  # pulls started (a joined pull is one)
        self._pulls: Counter | None = None
        self._pull_seconds: Histogram | None = None
        if registry is not None:
            self._pulls = Counter(
                "node_agent_image_pulls",
                "Image pull attempts by result (success, failure).",
                ["result"],
                registry=registry,
            )
            self._pull_seconds = Histogram(
                "node_agent_image_pull_duration_seconds",
                "Duration of one successful image pull.",
                buckets=PULL_BUCKETS_S,
                registry=registry,
            )

    async def ensure(self, image: str, policy: str, report: PullReporter) -> ImageRecord:
        problem = reference_problem(image)
        if problem:
            message = bounded_text(
                f'Failed to apply default image tag "{image}": couldn\'t parse image reference '
                f'"{image}": {problem}',
                PULL_MESSAGE_MAX_CHARS,
            )
            report("InspectFailed", message, True)
            raise ImagePullError(message, reason=INVALID_IMAGE_NAME)
        if policy != PULL_ALWAYS:
            present = await self._runtime.inspect_image(image)
            if present is not None:
                report("Pulled", f'Container image "{image}" already present on machine', False)
                return present
            if policy == PULL_NEVER:
                message = f'Container image "{image}" is not present with pull policy of Never'
                report(ERR_IMAGE_NEVER_PULL, message, True)
                raise ImagePullError(message, reason=ERR_IMAGE_NEVER_PULL)
        return await self.pull(image, report)

    def backoff_remaining_s(self, image: str) -> float:
        """Seconds until ``image`` may be pulled again (0: now)."""
        held = self._backoff.get(familiar_reference(image))
        return max(0.0, held.not_before - self._clock.monotonic()) if held else 0.0

    async def pull(self, image: str, report: PullReporter) -> ImageRecord:
        """Pull ``image`` (whatever is present), joining a pull of it in flight."""
        key = familiar_reference(image)
        while True:
            current = self._inflight.get(key)
            if current is None:
                return await self._lead(key, image, report)
            joined = await self._join(current, report)
            if joined is not None:
                return joined
            # None: the pod running that pull went away mid-pull; this caller runs it now.

    async def _join(self, pull: _Pull, report: PullReporter) -> ImageRecord | None:
        pull.reporters.append(report)
        if pull.started is not None:
            report("Pulling", f'Pulling image "{pull.image}"', False)
        try:
            return await asyncio.shield(pull.future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if pull.future.cancelled() and task is not None and not task.cancelling():
                return None
            raise
        except ImagePullError as exc:  # a fresh exception per waiter (tracebacks)
            raise ImagePullError(
                exc.message, reason=exc.reason, retry_in_s=exc.retry_in_s
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                pull.reporters.remove(report)

    async def _lead(self, key: str, image: str, report: PullReporter) -> ImageRecord:
        now = self._clock.monotonic()
        held = self._backoff.get(key)
        if held is not None and now < held.not_before:
            report("BackOff", f'Back-off pulling image "{image}"', False)
            raise ImagePullError(
                f'Back-off pulling image "{image}": {held.error}',
                reason=IMAGE_PULL_BACKOFF,
                retry_in_s=held.not_before - now,
            )
        future: asyncio.Future[ImageRecord] = asyncio.get_running_loop().create_future()
        # Marked retrieved: nobody may be waiting on it when it fails.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        pull = _Pull(image=image, future=future, reporters=[report])
        self._inflight[key] = pull
        try:
            record = await self._attempt(pull)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except ImageUnavailableError as exc:
            error = self._failed(key, pull, exc)
            future.set_exception(error)
            raise error from None
        except Exception as exc:  # the engine gone (RuntimeUnavailableError): no back-off
            future.set_exception(exc)
            raise
        finally:
            if self._inflight.get(key) is pull:
                del self._inflight[key]
        self._backoff.pop(key, None)
        future.set_result(record)
        return record

    async def _attempt(self, pull: _Pull) -> ImageRecord:
        async with self._slots:
            # Inside the slot: a pull waiting for one is not yet "Pulling".
            auth = await self._credentials.auth_for(pull.image)
            pull.started = pull.last_progress_event = self._clock.monotonic()
            self.attempts += 1
            log.info("pulling image", extra=kv(image=pull.image))
            pull.report("Pulling", f'Pulling image "{pull.image}"')
            record = await self._runtime.pull_image(
                pull.image, progress=lambda p: self._progress(pull, p), auth=auth
            )
        took_s = self._clock.monotonic() - pull.started
        log.info(
            "pulled image",
            extra=kv(image=pull.image, id=record.id[:19], seconds=round(took_s, 3)),
        )
        if self._pulls is not None and self._pull_seconds is not None:
            self._pulls.labels("success").inc()
            self._pull_seconds.observe(took_s)
        pull.report(
            "Pulled",
            f'Successfully pulled image "{pull.image}" in {took_s:.3g}s. '
            f"Image size: {record.size_bytes} bytes.",
        )
        return record

    def _failed(self, key: str, pull: _Pull, exc: ImageUnavailableError) -> ImagePullError:
        held = self._backoff.get(key)
        delay = self._policy.next_delay(held.delay_s if held else None, 0.0)
        now = self._clock.monotonic()
        if len(self._backoff) >= BACKOFF_ENTRIES_MAX:
            for stale in [k for k, b in self._backoff.items() if b.not_before <= now]:
                del self._backoff[stale]
        error = bounded_text(str(exc), PULL_MESSAGE_MAX_CHARS)
        self._backoff[key] = _Backoff(delay, now + delay, error)
        if self._pulls is not None:
            self._pulls.labels("failure").inc()
        log.warning("image pull failed", extra=kv(image=pull.image, error=error, retry_s=delay))
        message = f'Failed to pull image "{pull.image}": {error}'
        pull.report("Failed", bounded_text(message, PULL_MESSAGE_MAX_CHARS), True)
        return ImagePullError(error, reason=ERR_IMAGE_PULL, retry_in_s=delay)

    def _progress(self, pull: _Pull, progress: PullProgress) -> None:
        """Layer sizes as the engine reports them; an event with bytes done / total at most
        every PROGRESS_EVENT_INTERVAL_S."""
        if progress.layer_id and progress.total_bytes and progress.status == "Downloading":
            pull.layers[progress.layer_id] = (progress.current_bytes or 0, progress.total_bytes)
        elif progress.layer_id in pull.layers and progress.status in (
            "Download complete",
            "Pull complete",
        ):
            total = pull.layers[progress.layer_id][1]
            pull.layers[progress.layer_id] = (total, total)
        else:
            return
        now = self._clock.monotonic()
        if now - pull.last_progress_event < PROGRESS_EVENT_INTERVAL_S:
            return
        pull.last_progress_event = now
        done = sum(d for d, _ in pull.layers.values())
        total = sum(t for _, t in pull.layers.values())
        pull.report("Pulling", f'Pulling image "{pull.image}": {_size(done)} of {_size(total)}')
