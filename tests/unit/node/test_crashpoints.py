"""Crash points in process (``agent.node.crashpoints``), with the kill recorded instead of done:
the process-wide switch armed from the environment, the n-th pass, passes from many threads.
(Parsing and a real SIGKILL in a child process: tests/unit/test_crashpoints_reconnect.py.)"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from agent.node import crashpoints
from agent.node.crashpoints import ENV_VAR


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    recorded: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: recorded.append((pid, sig)))
    yield recorded
    crashpoints.arm_from_env({})  # disarmed for every other test


def test_the_switch_is_armed_from_the_environment_and_fires_on_the_nth_pass(
    kills: list[tuple[int, int]],
) -> None:
    assert crashpoints.arm_from_env({ENV_VAR: " source-applied@2 "}) == "source-applied"
    crashpoints.hit("checkpoint-saved")  # another point
    crashpoints.hit("source-applied")
    assert kills == []
    crashpoints.hit("source-applied")
    assert kills == [(os.getpid(), signal.SIGKILL)]


def test_unset_means_disarmed(
    kills: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert crashpoints.arm_from_env() == ""  # read from os.environ
    for point in crashpoints.POINTS:
        crashpoints.hit(point)
    assert kills == []


def test_passes_from_many_threads_fire_exactly_once_at_the_count(
    kills: list[tuple[int, int]],
) -> None:
    crashpoints.arm_from_env({ENV_VAR: "checkpoint-tmp-written@50"})
    start = threading.Barrier(8)

    def passes() -> None:
        start.wait()
        for _ in range(25):
            crashpoints.hit("checkpoint-tmp-written")

    threads = [threading.Thread(target=passes) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The recorded "kill" lets the process live on: every later pass fires again, but the
    # 50th pass is the first to fire, and the count never fires early.
    assert len(kills) == 200 - 49
