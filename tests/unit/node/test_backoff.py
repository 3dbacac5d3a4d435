"""Back-off schedules: kubelet's crash-loop schedule, its checkpointed state, the reconnect
back-off's outage-age ceiling."""

from __future__ import annotations

import random

import pytest

from agent.node.backoff import BackoffPolicy, ReconnectBackoff, RestartState


def test_kubelet_default_schedule_doubles_to_cap() -> None:
    policy = BackoffPolicy()
    delays = []
    previous = None
    for _ in range(8):
        previous = policy.next_delay(previous, ran_for_s=1.0)
        delays.append(previous)
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]


def test_clean_run_resets_backoff() -> None:
    policy = BackoffPolicy(initial_s=1, max_s=8, reset_s=60)
    assert policy.next_delay(8, ran_for_s=59.9) == 8
    assert policy.next_delay(4, ran_for_s=59.9) == 8
    assert policy.next_delay(8, ran_for_s=60) == 1


def test_delay_never_exceeds_max_even_below_initial() -> None:
    policy = BackoffPolicy(initial_s=10, max_s=5, reset_s=60)
    assert policy.next_delay(None, ran_for_s=0) == 5
    assert policy.next_delay(5, ran_for_s=0) == 5
    # A previous delay of zero (a wait that was not a back-off) starts at initial.
    assert BackoffPolicy(initial_s=2).next_delay(0.0, ran_for_s=0) == 2


def test_restart_state_round_trip() -> None:
    state = RestartState(delay_s=20.0, not_before=123.5, handled_attempt=3)
    assert RestartState.from_json(dict(state.to_json())) == state
    # Integers in JSON (a delay of 20) come back as floats.
    back = RestartState.from_json({"delay_s": 20, "not_before": 7, "handled_attempt": 0})
    assert back == RestartState(20.0, 7.0, 0)
    assert isinstance(back.delay_s, float)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"delay_s": "x", "not_before": 1, "handled_attempt": 1}, "numeric"),
        ({"delay_s": 1, "handled_attempt": 1}, "numeric"),
        ({"delay_s": 1, "not_before": 1, "handled_attempt": "1"}, "integer"),
        ({"delay_s": 1, "not_before": 1}, "integer"),
    ],
)
def test_restart_state_rejects_malformed(data: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RestartState.from_json(data)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reconnect_ceiling_grows_with_outage_age_and_resets() -> None:
    clock = FakeMonotonic()
    backoff = ReconnectBackoff(0.5, 4.0, rng=random.Random(1), clock=clock)
    assert backoff.ceiling_s == 0.5  # no outage yet
    first = backoff.next_delay()  # the outage starts now
    assert 0.0 <= first <= 0.5
    clock.now += 2.0
    assert backoff.ceiling_s == 2.0
    assert 0.0 <= backoff.next_delay() <= 2.0
    clock.now += 60.0
    assert backoff.ceiling_s == 4.0  # capped
    backoff.reset()
    assert backoff.ceiling_s == 0.5


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_reconnect_rejects_bad_bounds(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="initial_s"):
        ReconnectBackoff(initial, cap)
