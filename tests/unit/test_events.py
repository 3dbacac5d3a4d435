"""The event recorder: Kubernetes' aggregation (same source, object, type, reason and message →
one event, its count and lastTimestamp raised), the bound, the change feed a node ships from
(``since``), and the master's filing of reported events (idempotent)."""

from __future__ import annotations

from typing import Any

from agent.events import EventRecorder


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def back_off(recorder: EventRecorder, message: str = "back-off 10s restarting c") -> None:
    recorder.record(
        kind="Pod",
        name="web",
        namespace="shop",
        uid="u1",
        reason="BackOff",
        message=message,
        warning=True,
    )


def test_repeats_aggregate_into_count_and_last_timestamp() -> None:
    clock = Clock()
    recorder = EventRecorder("n1", clock=clock)
    back_off(recorder)
    clock.now += 61
    back_off(recorder)
    back_off(recorder, "another message")  # a different message is another event
    events = recorder.list("Pod", "web")
    assert [(e["message"], e["count"]) for e in events] == [
        ("back-off 10s restarting c", 2),
        ("another message", 1),
    ]
    first = events[0]
    assert first["firstTimestamp"] == "2027-01-15T08:00:00Z"
    assert first["lastTimestamp"] == "2027-01-15T08:01:01Z"
    assert first["type"] == "Warning" and first["source"] == {
        "component": "node-agent",
        "host": "n1",
    }


def test_the_bound_drops_the_oldest_first_seen() -> None:
    recorder = EventRecorder("n1", capacity=3)
    for i in range(5):
        back_off(recorder, f"m{i}")
    back_off(recorder, "m4")  # aggregated: takes no new place
    assert [e["message"] for e in recorder.list()] == ["m2", "m3", "m4"]


def test_since_ships_what_changed_oldest_change_first_in_pages() -> None:
    recorder = EventRecorder("n1")
    back_off(recorder, "a")
    back_off(recorder, "b")
    page, cursor = recorder.since(0, limit=1)
    assert [e["message"] for e in page] == ["a"]
    page, cursor = recorder.since(cursor, limit=10)
    assert [e["message"] for e in page] == ["b"]
    assert recorder.since(cursor, limit=10) == ([], cursor)
    back_off(recorder, "a")  # a repeat is a change: shipped again, with its new count
    page, cursor = recorder.since(cursor, limit=10)
    assert [(e["message"], e["count"]) for e in page] == [("a", 2)]
    assert cursor == recorder.sequence


def reported(count: int, last: str, host: str = "n1") -> dict[str, Any]:
    return {
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "u1"},
        "reason": "BackOff",
        "message": "back-off 10s restarting c",
        "type": "Warning",
        "source": {"component": "node-agent", "host": host},
        "firstTimestamp": "2027-01-15T08:00:00Z",
        "lastTimestamp": last,
        "count": count,
    }


def test_filing_reported_events_is_idempotent_and_keeps_nodes_apart() -> None:
    master = EventRecorder("node-master", component="node-master")
    master.file_reported(reported(2, "2027-01-15T08:00:20Z"))
    master.file_reported(reported(2, "2027-01-15T08:00:20Z"))  # sent again after a reconnect
    master.file_reported(reported(5, "2027-01-15T08:03:00Z"))
    master.file_reported(reported(1, "2027-01-15T08:03:00Z", host="n2"))
    events = master.list("Pod", "web")
    assert [(e["source"]["host"], e["count"], e["lastTimestamp"]) for e in events] == [
        ("n1", 5, "2027-01-15T08:03:00Z"),
        ("n2", 1, "2027-01-15T08:03:00Z"),
    ]
    assert events[0]["metadata"]["namespace"] == "shop"
    assert events[0]["metadata"]["name"].startswith("web.")
