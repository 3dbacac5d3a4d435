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
  whole daemon.
* :class:`Lifecycle` starts managers in order and stops the started ones in reverse order, each
  stop step bounded by a time-out; a step that overruns is logged and the next one goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import NoReturn, Protocol, TypeVar

from agent.aio.logs import kv
from agent.errors import TaskEndedError

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    composition root); they are opened only inside it."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> Supervisor:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        assert group is not None
        await group.__aexit__(exc_type, exc, tb)

    def scope(self, name: str) -> TaskScope:
        return TaskScope(self, name)

    def start_guarded(
        self, name: str, factory: Callable[[], Awaitable[T]], *, eternal: bool = False
    ) -> asyncio.Task[T]:
        """A task directly in the daemon's group (the start sequence, a scope's host)."""
        if self._group is None:
            raise RuntimeError(f"task {name!r} started outside the supervisor's TaskGroup")
        return start_guarded(self._group, name, factory, eternal=eternal)


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
                # Held open until stop() cancels it (or a task in it fails, which cancels it
                # too and makes this host task fail with the task's error).
                await asyncio.get_running_loop().create_future()
        finally:
            self._group = None

    def spawn(
        self, name: str, factory: Callable[[], Awaitable[T]], *, eternal: bool = False
    ) -> asyncio.Task[T]:
        if self._group is None:
            raise RuntimeError(f"task {name!r} spawned while {self.name!r} is not running")
        return start_guarded(self._group, name, factory, eternal=eternal)

    async def stop(self) -> None:
        """Cancel every task of the scope and wait for them. A failure that already ended the
        scope is not raised again here: the daemon's TaskGroup reports it."""
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
