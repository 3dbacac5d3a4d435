"""Guarded tasks and the managers' one lifecycle.

Every background task of a daemon lives in a TaskGroup; none is a bare ``create_task``.

* :func:`guarded` logs an exception escaping a task with the task's name and re-raises it, so
  the TaskGroup cancels its siblings and the daemon exits non-zero (systemd restarts it).
  A task started with ``eternal=True`` is meant to run for the daemon's whole life: if it
  *returns*, that is a bug too (kopf's "finishable" idea), raised as :class:`TaskEndedError`
  naming the task, instead of a loop that silently stopped doing its job.
* :class:`Supervisor` is the daemon's one TaskGroup. Each manager gets a :class:`TaskScope`
  from it in its constructor: its own TaskGroup, hosted by one task of the daemon's group, that
  ``start()`` opens and ``stop()`` cancels and waits for. A failure in any scope fails the
  whole daemon, *after the same orderly stop as a requested one*: the failed task's exception
  is recorded, nothing else is cancelled, and the task that entered the supervisor (the
  daemon's ``run()``, waiting for its stop signal) is interrupted, so that its ``finally``
  runs the lifecycle's stop; the supervisor raises the failures (an ``ExceptionGroup``) when
  it is left. A plain TaskGroup would instead cancel every scope at once, before the first
  manager's ``stop()`` ran.
* :class:`Lifecycle` starts managers in order and stops the started ones in reverse order, each
  stop step bounded by a time-out; a step that overruns is logged and the next one goes on.
* :func:`run_all` runs a request's few concurrent halves (a port-forward's two directions, a
  proxied stream's two sides) in a TaskGroup of their own, so none outlives the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, NoReturn, Protocol, TypeVar

from agent.aio.logs import kv
from agent.errors import TaskEndedError

log = logging.getLogger(__name__)
T = TypeVar("T")

# The tasks running a Lifecycle.stop() right now: a failure elsewhere must not interrupt an
# orderly stop already under way (it is recorded and raised when the supervisor is left).
_stopping: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


async def forever(name: str, factory: Callable[[], Awaitable[object]]) -> NoReturn:
    """Await ``factory()``, a loop meant to end only by an exception or a cancellation: its
    returning raises :class:`TaskEndedError` naming the task."""
    await factory()
    log.error("task meant to run forever returned", extra=kv(task=name))
    raise TaskEndedError(f"task {name!r} is meant to run until it is stopped but returned")


async def guarded(name: str, factory: Callable[[], Awaitable[T]], *, eternal: bool = False) -> T:
    """Await ``factory()``; log what escapes it; with ``eternal``, returning is an error."""
    try:
        if eternal:
            await forever(name, factory)
        return await factory()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("task died unexpectedly", extra=kv(task=name))
        raise


def start_guarded(
    group: asyncio.TaskGroup,
    name: str,
    factory: Callable[[], Awaitable[T]],
    *,
    eternal: bool = False,
) -> asyncio.Task[T]:
    return group.create_task(guarded(name, factory, eternal=eternal), name=name)


class Supervisor:
    """The daemon's one TaskGroup (an async context manager); hands out :class:`TaskScope`s.

    Scopes may be handed out before the group is entered (managers are built first, in the
    composition root); they are opened only inside it.

    No task of the supervisor (a scope's task, a task started here) ever fails the TaskGroup
    itself: its exception is recorded, and the first one cancels the task that entered the
    supervisor, unless that task is already running a :meth:`Lifecycle.stop`. That task's
    ``finally`` runs the orderly stop; leaving the supervisor then raises every recorded
    failure in an ``ExceptionGroup`` (a cancellation from outside still wins)."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._parent: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: list[Exception] = []
        self._cancelled_parent = False
        self._exiting = False

    @property
    def failures(self) -> tuple[Exception, ...]:
        return tuple(self._failures)

    async def __aenter__(self) -> Supervisor:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        self._parent = asyncio.current_task()
        self._failures = []
        self._cancelled_parent = self._exiting = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        assert group is not None
        self._exiting = True
        if self._cancelled_parent:
            self._cancelled_parent = False
            assert self._parent is not None
            # Our own cancellation, delivered (or swallowed) in the body: not an exit reason.
            if self._parent.uncancel() == 0 and isinstance(exc, asyncio.CancelledError):
                exc_type, exc, tb = None, None, None
        if self._failures:
            self._cancel_leftovers()
        try:
            await group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as failed:
            if self._failures:
                raise BaseExceptionGroup(
                    "supervised tasks failed", [*self._failures, *failed.exceptions]
                ) from None
            raise
        finally:
            self._exiting = False
        if self._failures:
            raise ExceptionGroup("supervised tasks failed", self._failures)

    def scope(self, name: str) -> TaskScope:
        return TaskScope(self, name)

    def start_guarded(
        self, name: str, factory: Callable[[], Awaitable[object]], *, eternal: bool = False
    ) -> asyncio.Task[None]:
        """A task directly in the daemon's group (the start sequence, a scope's host)."""
        if self._group is None:
            raise RuntimeError(f"task {name!r} started outside the supervisor's TaskGroup")
        task = self._group.create_task(self.supervised(name, factory, eternal=eternal), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def supervised(
        self, name: str, factory: Callable[[], Awaitable[object]], *, eternal: bool = False
    ) -> None:
        """Run ``factory()`` guarded; a failure is recorded here instead of failing the
        TaskGroup it runs in (which would cancel its siblings before the orderly stop)."""
        try:
            await guarded(name, factory, eternal=eternal)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(name, exc)

    def _failed(self, name: str, exc: Exception) -> None:
        self._failures.append(exc)
        parent = self._parent
        if self._exiting:
            # The orderly stop is over: what is left goes now, as a TaskGroup's abort would.
            self._cancel_leftovers()
            return
        if self._cancelled_parent or parent is None or parent.done():
            return
        if parent in _stopping:
            log.error("task failed during the stop; raised once it is over", extra=kv(task=name))
            return
        log.error("task failed; stopping every manager in order", extra=kv(task=name))
        self._cancelled_parent = True
        parent.cancel()

    def _cancel_leftovers(self) -> None:
        for task in self._tasks:
            task.cancel()


class TaskScope:
    """One manager's own TaskGroup, inside the daemon's. ``start()`` opens it, ``spawn()`` adds
    guarded tasks to it, ``stop()`` cancels them all and waits until they are gone."""

    def __init__(self, supervisor: Supervisor, name: str) -> None:
        self._supervisor = supervisor
        self.name = name
        self._group: asyncio.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._group is not None

    async def start(self) -> None:
        if self._host is not None:
            raise RuntimeError(f"task scope {self.name!r} started twice")
        opened = asyncio.get_running_loop().create_future()
        self._host = self._supervisor.start_guarded(
            f"{self.name}:scope", lambda: self._hold(opened)
        )
        await opened

    async def _hold(self, opened: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                opened.set_result(None)
                # Held open until stop() cancels it. A task failing in it does not end it:
                # the supervisor records the failure and the stop comes in order.
                await asyncio.get_running_loop().create_future()
        finally:
            self._group = None

    def spawn(
        self, name: str, factory: Callable[[], Awaitable[object]], *, eternal: bool = False
    ) -> asyncio.Task[None]:
        if self._group is None:
            raise RuntimeError(f"task {name!r} spawned while {self.name!r} is not running")
        return self._group.create_task(
            self._supervisor.supervised(name, factory, eternal=eternal), name=name
        )

    async def stop(self) -> None:
        """Cancel every task of the scope and wait for them (failures are the supervisor's to
        raise, not this step's)."""
        host = self._host
        if host is None:
            return
        host.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait({host})


class Manager(Protocol):
    """What the composition root orders: an async ``start()`` that returns once the manager
    is serving (its loops run in its own TaskScope), and ``stop()`` that ends them. ``stop()``
    is safe after a partial or failed ``start()``."""

    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Lifecycle:
    """Starts managers in order; stops the started ones in reverse, each step bounded by
    ``step_timeout_s``. A manager counts as started from the moment its ``start()`` is
    entered, so one interrupted half-way is stopped too."""

    def __init__(
        self,
        managers: Sequence[Manager],
        *,
        step_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.managers = tuple(managers)
        self._step_timeout_s = step_timeout_s
        self._clock = clock
        self._started: list[Manager] = []

    @property
    def started(self) -> tuple[str, ...]:
        return tuple(m.name for m in self._started)

    async def start(self) -> None:
        for manager in self.managers:
            self._started.append(manager)
            began = self._clock()
            await manager.start()
            log.debug(
                "manager started",
                extra=kv(manager=manager.name, seconds=round(self._clock() - began, 3)),
            )

    async def stop(self) -> list[str]:
        """Stop in reverse start order; returns the names of the steps that overran."""
        current = asyncio.current_task()
        if current is not None:
            _stopping.add(current)
        try:
            return await self._stop_in_order()
        finally:
            if current is not None:
                _stopping.discard(current)

    async def _stop_in_order(self) -> list[str]:
        overran: list[str] = []
        while self._started:
            manager = self._started.pop()
            try:
                await asyncio.wait_for(manager.stop(), self._step_timeout_s)
            except TimeoutError:
                overran.append(manager.name)
                log.error(
                    "manager did not stop in time; going on with the next",
                    extra=kv(manager=manager.name, timeout_s=self._step_timeout_s),
                )
            except Exception:
                log.exception("manager failed to stop", extra=kv(manager=manager.name))
        return overran


async def run_all(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` as tasks of one TaskGroup and return once every one has ended: the first
    to fail cancels the others, and its exception is raised as itself (not in an
    ``ExceptionGroup``), so callers keep catching the errors they know. Further failures,
    usually fallout of the first, are named in its notes."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as failed:
        first, *others = failed.exceptions
        for other in others:
            first.add_note(f"also failed: {type(other).__name__}: {other}")
        raise first from None
