"""Crash-point parsing (the switch the fault-injection tests rely on), the reconnect back-off
schedule, and the node conditions the agent reports."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from agent.errors import ConfigError
from agent.node.app import HealthState
from agent.node.backoff import ReconnectBackoff
from agent.node.crashpoints import ENV_VAR, POINTS, CrashPoints


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


def test_reconnect_backoff_is_full_jitter_doubling_to_the_cap() -> None:
    backoff = ReconnectBackoff(0.5, 4.0, rng=random.Random(7))
    ceilings = []
    for _ in range(6):
        ceiling = backoff.ceiling_s
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.ceiling_s == 0.5


def test_reconnect_backoff_spreads_a_fleet_over_the_window() -> None:
    rng = random.Random(1)
    delays = [ReconnectBackoff(8.0, 8.0, rng=rng).next_delay() for _ in range(4000)]
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(8)]
    # Uniform over [0, 8): every second of the window gets about an eighth of the fleet.
    assert max(per_second) < 1.2 * len(delays) / 8
    assert min(per_second) > 0.8 * len(delays) / 8


def test_reconnect_backoff_rejects_a_cap_below_the_start() -> None:
    with pytest.raises(ValueError, match="0 < initial_s <= cap_s"):
        ReconnectBackoff(2.0, 1.0)


def test_node_conditions_follow_runtime_and_checkpoint_health() -> None:
    state = HealthState(runtime_up=True, runtime_error="")
    assert [(c["type"], c["status"]) for c in state.conditions()] == [
        ("RuntimeReady", "True"),
        ("CheckpointWritable", "True"),
    ]
    state.runtime_up = False
    state.runtime_error = "runtime: docker: connection refused"
    state.checkpoint_error = "/var/lib/node-agent/checkpoint.json: write failed: ENOSPC"
    runtime, checkpoint = state.conditions()
    assert runtime == {
        "type": "RuntimeReady",
        "status": "False",
        "reason": "RuntimeUnavailable",
        "message": "runtime: docker: connection refused",
    }
    assert checkpoint["status"] == "False"
    assert checkpoint["reason"] == "CheckpointWriteFailed"
    assert "ENOSPC" in checkpoint["message"]
