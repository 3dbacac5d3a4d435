"""agent.doctor.core: checks run in parallel, each bounded; a crash or a hang is a failed line,
never a traceback; the report's two formats and its exit code."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from agent.doctor.core import (
    BUG_FIX,
    CheckResult,
    Shared,
    failed,
    one_line,
    passed,
    render_json,
    render_text,
    report,
    run_checks,
)

pytestmark = pytest.mark.usefixtures("blockbuster")


async def test_checks_run_at_once_and_keep_their_order() -> None:
    # Each check waits for the other: run one after the other, both would time out.
    first_ran, second_ran = asyncio.Event(), asyncio.Event()

    async def first() -> CheckResult:
        first_ran.set()
        await second_ran.wait()
        return passed("first", "saw the second")

    async def second() -> CheckResult:
        second_ran.set()
        await first_ran.wait()
        return passed("second", "saw the first")

    results = await run_checks([("first", first), ("second", second)], timeout_s=30)
    assert [(r.name, r.ok) for r in results] == [("first", True), ("second", True)]


async def test_a_crash_and_a_hang_are_failed_lines() -> None:
    async def crash() -> CheckResult:
        raise KeyError("boom")

    async def hang() -> CheckResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def fine() -> CheckResult:
        return passed("fine", "ok")

    results = await run_checks([("crash", crash), ("hang", hang), ("fine", fine)], timeout_s=0.05)
    crashed, hung, ok = results
    assert not crashed.ok and "crashed: KeyError" in crashed.detail and crashed.fix == BUG_FIX
    assert crashed.name == "crash"
    assert not hung.ok and "no answer within 0.05 s" in hung.detail and hung.name == "hang"
    assert ok.ok


async def test_details_are_one_bounded_line() -> None:
    async def noisy() -> CheckResult:
        return failed("noisy", "line\none\x1b[31m" + "x" * 1000, "do\tthis")

    [result] = await run_checks([("noisy", noisy)])
    assert "\n" not in result.detail and "\x1b" not in result.detail
    assert len(result.detail) <= 400 and result.detail.startswith("line one")
    assert result.fix == "do this"
    assert one_line("a\r\nb") == "a b"


async def test_shared_fetches_once_for_every_waiter() -> None:
    calls = 0
    release = asyncio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    shared = Shared(fetch)
    waiters = [asyncio.ensure_future(shared.get()) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [42, 42, 42]
    assert calls == 1


async def test_a_waiter_timing_out_does_not_cancel_the_fetch_for_others() -> None:
    release = asyncio.Event()

    async def fetch() -> str:
        await release.wait()
        return "done"

    shared = Shared(fetch)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await shared.get()
    release.set()
    assert await shared.get() == "done"


RESULTS = [
    passed("docker", "Docker 27.0"),
    failed("ca pin", "ca_cert_hash 'nope' is not sha256:<64 hex digits>", "set ca_cert_hash"),
]


def test_text_report_marks_each_line_and_gives_the_fix() -> None:
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    text = render_text(RESULTS, stream)
    assert text.splitlines() == [
        "✓ docker: Docker 27.0",
        "✗ ca pin: ca_cert_hash 'nope' is not sha256:<64 hex digits>",
        "    fix: set ca_cert_hash",
        "1 of 2 checks failed",
    ]


def test_text_report_without_unicode_falls_back_to_words() -> None:
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert render_text(RESULTS, stream).splitlines()[:2] == [
        "ok   docker: Docker 27.0",
        "FAIL ca pin: ca_cert_hash 'nope' is not sha256:<64 hex digits>",
    ]


def test_json_report() -> None:
    body = json.loads(render_json(RESULTS))
    assert body["ok"] is False
    assert body["checks"][1] == {
        "name": "ca pin",
        "ok": False,
        "detail": "ca_cert_hash 'nope' is not sha256:<64 hex digits>",
        "fix": "set ca_cert_hash",
    }


def test_exit_code_is_zero_only_when_all_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert report(RESULTS[:1], "text") == 0
    assert "all checks passed" in capsys.readouterr().out
    assert report(RESULTS, "json") == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
