"""The worker's checkpointed bookkeeping (WorkerBook) and the restart decision."""

from __future__ import annotations

import json

import pytest

from agent.node.backoff import RestartState
from agent.node.pods.worker import WorkerBook, should_restart
from agent.types import RestartPolicy


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [
        (RestartPolicy.ALWAYS, 0, True),
        (RestartPolicy.ALWAYS, 1, True),
        (RestartPolicy.ALWAYS, None, True),
        (RestartPolicy.ON_FAILURE, 0, False),
        (RestartPolicy.ON_FAILURE, 137, True),
        (RestartPolicy.ON_FAILURE, None, True),
        (RestartPolicy.NEVER, 1, False),
        (RestartPolicy.NEVER, 0, False),
    ],
)
def test_should_restart(policy: RestartPolicy, code: int | None, expected: bool) -> None:
    assert should_restart(policy, code) is expected


def test_round_trip_through_json_text() -> None:
    book = WorkerBook(
        attempts={"web": 3, "side": 0},
        restarts={"web": RestartState(delay_s=40.0, not_before=1000.5, handled_attempt=2)},
        sandbox_attempt=1,
        start_time=999.25,
        init_done_sandbox=1,
        prestart_done={"web": 1},
        killed_unhealthy={"web": 2},
    )
    back = WorkerBook.from_json(json.loads(json.dumps(book.to_json())))
    assert back == book
    assert back.attempts is not book.attempts  # a copy, not shared state


def test_empty_book_round_trips_and_defaults() -> None:
    assert WorkerBook.from_json(WorkerBook().to_json()) == WorkerBook()
    # Fields missing (older checkpoints) or null take their defaults.
    assert WorkerBook.from_json({}) == WorkerBook()
    assert WorkerBook.from_json({"attempts": None, "restarts": None}) == WorkerBook()
    assert WorkerBook.from_json({"start_time": 5}).start_time == 5.0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "worker book: expected an object, got list"),
        ("x", "worker book: expected an object, got str"),
        ({"attempts": [1, 2]}, r"worker book attempts: expected an object, got list"),
        ({"attempts": {"web": "x"}}, r"worker book attempts\['web'\]: expected an integer"),
        ({"attempts": {"web": 1.5}}, r"worker book attempts\['web'\]: expected an integer"),
        ({"attempts": {"web": True}}, r"worker book attempts\['web'\]: expected an integer"),
        ({"restarts": 3}, r"worker book restarts: expected an object, got int"),
        ({"killed_unhealthy": {"web": "x"}}, r"worker book killed_unhealthy\['web'\]"),
        ({"restarts": {"web": 3}}, r"worker book restarts\['web'\]: expected an object"),
        (
            {"restarts": {"web": {"delay_s": "soon"}}},
            r"worker book restarts\['web'\]: restart state needs numeric",
        ),
        ({"sandbox_attempt": "2"}, r"worker book sandbox_attempt: expected an integer"),
        ({"sandbox_attempt": None}, r"worker book sandbox_attempt: expected an integer"),
        ({"start_time": "yesterday"}, r"worker book start_time: expected a number"),
        ({"start_time": False}, r"worker book start_time: expected a number"),
    ],
)
def test_malformed_books_raise_a_clear_error(data: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WorkerBook.from_json(data)  # type: ignore[arg-type]
