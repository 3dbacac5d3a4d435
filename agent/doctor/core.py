"""Running doctor's checks: the result type, parallel runs with a time-out each, a shared
memoised fact (one Docker ``/info`` for three checks), and the two output formats.

A check is ``async () -> CheckResult``. :func:`run_checks` runs them all at once; one that
takes longer than its time-out, or raises, becomes a failed result naming what happened, so
the report is always complete and always one line per check.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Generic, TextIO, TypeVar

T = TypeVar("T")

# Every check of a healthy host answers in milliseconds; a check that needs longer is waiting
# on something that does not answer (a master behind a firewall that drops packets), and the
# whole doctor must stay under 2 s on a healthy node (issue 18).
CHECK_TIMEOUT_S = 1.5
MAX_DETAIL_CHARS = 400  # a detail may quote a remote answer: one bounded line
BUG_FIX = "this is a bug of doctor: please report it with this line"
OK_MARK, FAIL_MARK = "✓", "✗"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report. ``fix`` says what to do, for a failed check (empty otherwise)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


Check = Callable[[], Awaitable[CheckResult]]


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name, True, detail)


def failed(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, False, detail, fix)


def one_line(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters (it may come from a
    remote answer or an exception)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Shared(Generic[T]):
    """A fact several checks need (the master's answer, Docker's info), fetched once by the
    first check that asks. A waiter's time-out does not cancel the fetch for the others; an
    error is raised to every waiter."""

    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._task: asyncio.Task[T] | None = None

    async def get(self) -> T:
        if self._task is None:

            async def run() -> T:
                return await self._fetch()

            self._task = asyncio.ensure_future(run())
        return await asyncio.shield(self._task)

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


async def _guarded(name: str, check: Check, timeout_s: float) -> CheckResult:
    try:
        async with asyncio.timeout(timeout_s):
            result = await check()
    except TimeoutError:
        return failed(
            name,
            f"no answer within {timeout_s:g} s",
            "something this check waits on does not answer (see the other lines)",
        )
    except Exception as exc:  # a check's own bug: a failed line, never a traceback
        return failed(name, one_line(f"the check crashed: {type(exc).__name__}: {exc}"), BUG_FIX)
    return CheckResult(result.name, result.ok, one_line(result.detail), one_line(result.fix))


async def run_checks(
    checks: Sequence[tuple[str, Check]], *, timeout_s: float = CHECK_TIMEOUT_S
) -> list[CheckResult]:
    """Every check at once, each under ``timeout_s``; results in the order given."""
    return list(await asyncio.gather(*(_guarded(name, check, timeout_s) for name, check in checks)))


def _encodable(stream: TextIO) -> bool:
    try:
        (OK_MARK + FAIL_MARK).encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def render_text(results: Sequence[CheckResult], stream: TextIO | None = None) -> str:
    """One line per check (✓/✗ name: detail), each failure followed by its fix."""
    out = stream or sys.stdout
    good, bad = (OK_MARK, FAIL_MARK) if _encodable(out) else ("ok  ", "FAIL")
    lines = []
    for result in results:
        # Every field once more as one printable line: the config line is no check's (it
        # quotes the loader's error, which may hold a key or a path with escape sequences).
        name, detail, fix = (one_line(t) for t in (result.name, result.detail, result.fix))
        lines.append(f"{good if result.ok else bad} {name}: {detail}")
        if not result.ok and fix:
            lines.append(f"    fix: {fix}")
    failures = sum(not r.ok for r in results)
    lines.append(
        "all checks passed" if not failures else f"{failures} of {len(results)} checks failed"
    )
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[CheckResult]) -> str:
    body = {"ok": all(r.ok for r in results), "checks": [asdict(r) for r in results]}
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def report(results: Sequence[CheckResult], output: str) -> int:
    """Print the report; the exit code: 0 only when every check passed."""
    sys.stdout.write(render_json(results) if output == "json" else render_text(results))
    return 0 if all(r.ok for r in results) else 1
