"""Crash-point parsing (the switch the fault-injection tests rely on), the reconnect back-off
schedule, and the node conditions the agent reports."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from agent.errors import ConfigError
from agent.node.backoff import ReconnectBackoff
from agent.node.crashpoints import ENV_VAR, POINTS, CrashPoints
from agent.node.health.state import NodeHealth, RuntimeHealth


def test_unset_crash_points_do_nothing() -> None:
    points = CrashPoints({})
    assert points.armed == ""
    for point in POINTS:
        points.hit(point)  # would kill the test process if armed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-point", "unknown crash point 'no-such-point'"),
        ("container-created@x", "'x' after '@' is not a count"),
        ("container-created@0", "must be >= 1"),
    ],
)
def test_bad_crash_point_spec_is_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CrashPoints({ENV_VAR: spec})


def test_crash_point_kills_on_the_nth_hit_only() -> None:
    script = (
        "from agent.node.crashpoints import CrashPoints\n"
        f"p = CrashPoints({{'{ENV_VAR}': 'checkpoint-saved@3'}})\n"
        "p.hit('container-created')\n"
        "for i in range(1, 5):\n"
        "    print(i, flush=True)\n"
        "    p.hit('checkpoint-saved')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == -9
    assert done.stdout.split() == ["1", "2", "3"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reconnect_ceiling_grows_with_the_outage_to_the_cap() -> None:
    clock = FakeClock()
    backoff = ReconnectBackoff(0.5, 4.0, rng=random.Random(7), clock=clock)
    seen = []
    for elapsed in (0.0, 0.3, 1.0, 2.5, 3.9, 10.0, 100.0):
        clock.now = 100.0 + elapsed
        ceiling = backoff.ceiling_s
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        seen.append(ceiling)
    assert seen == pytest.approx([0.5, 0.5, 1.0, 2.5, 3.9, 4.0, 4.0])
    backoff.reset()  # the link worked: the next outage starts from the beginning
    clock.now = 500.0
    assert backoff.ceiling_s == 0.5
    backoff.next_delay()
    clock.now = 502.0
    assert backoff.ceiling_s == 2.0


def test_reconnect_backoff_spreads_a_fleet_evenly_after_an_outage() -> None:
    """500 agents lose the master at t=0 and it is back at t=9 s: the reconnects (each agent's
    first attempt at or after 9 s) are spread so the busiest second has at most 3x the average
    rate over the reconnect window (the target of bench/reconnect.py, here without I/O)."""
    rng = random.Random(3)
    reconnects = []
    for _ in range(500):
        clock = FakeClock()
        clock.now = 0.0
        backoff = ReconnectBackoff(0.5, 30.0, rng=rng, clock=clock)
        while clock.now < 9.0:
            clock.now += backoff.next_delay()
        reconnects.append(clock.now)
    reconnects.sort()
    window_s = reconnects[-1] - reconnects[0]
    peak = max(sum(1 for t in reconnects if start <= t < start + 1.0) for start in reconnects)
    assert peak <= 3 * len(reconnects) / window_s


def test_reconnect_backoff_rejects_a_cap_below_the_start() -> None:
    with pytest.raises(ValueError, match="0 < initial_s <= cap_s"):
        ReconnectBackoff(2.0, 1.0)


def test_node_conditions_follow_runtime_and_checkpoint_health() -> None:
    checkpoint_error = ""
    runtime = RuntimeHealth(up=True, error="")
    state = NodeHealth(runtime=runtime, checkpoint_error=lambda: checkpoint_error)
    assert [(c["type"], c["status"]) for c in state.conditions()] == [
        ("RuntimeReady", "True"),
        ("CheckpointWritable", "True"),
    ]
    runtime.down(Exception("docker: connection refused"))
    checkpoint_error = "/var/lib/node-agent/checkpoint.json: write failed: ENOSPC"
    runtime_condition, checkpoint = state.conditions()
    assert runtime_condition == {
        "type": "RuntimeReady",
        "status": "False",
        "reason": "RuntimeUnavailable",
        "message": "runtime: docker: connection refused",
    }
    assert checkpoint["status"] == "False"
    assert checkpoint["reason"] == "CheckpointWriteFailed"
    assert "ENOSPC" in checkpoint["message"]
