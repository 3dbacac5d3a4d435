"""nodectl describe's Events table as kubectl prints it: Type, Reason, Age with "(xN over M)"
for a repeated event, From (the master, or the node-agent with its node), Message; ordered by
last occurrence, the latest 20."""

from __future__ import annotations

from typing import Any

from agent.cli.nodectl_describe import DESCRIBE_EVENTS_SHOWN, events_section

NOW = 1_796_299_200.0  # 2026-12-03T12:00:00Z


def event(
    reason: str, last: str, first: str | None = None, count: int = 1, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "Warning" if reason == "BackOff" else "Normal",
        "reason": reason,
        "message": f"{reason} message",
        "firstTimestamp": first or last,
        "lastTimestamp": last,
        "count": count,
        "source": {"component": "node-agent", "host": "n1"},
        **extra,
    }


def test_the_table_as_kubectl_describe() -> None:
    text = events_section(
        [
            event("BackOff", "2026-12-03T11:59:50Z", "2026-12-03T11:58:00Z", count=5),
            event(
                "Scheduled",
                "2026-12-03T11:57:00Z",
                source={"component": "node-master", "host": "node-master"},
            ),
        ],
        NOW,
    )
    lines = text.splitlines()
    assert lines[0] == "Events:"
    assert lines[1] == "  Type     Reason     Age               From            Message"
    assert lines[2] == "  ----     ------     ----              ----            -------"
    # Oldest first by last occurrence: the master's Scheduled, then the node's BackOff.
    assert lines[3] == "  Normal   Scheduled  3m                node-master     Scheduled message"
    assert lines[4] == "  Warning  BackOff    10s (x5 over 2m)  node-agent, n1  BackOff message"


def test_only_the_latest_are_shown_and_none_says_so() -> None:
    many = [event(f"R{i}", f"2026-12-03T11:{i:02d}:00Z") for i in range(30)]
    rows = events_section(many, NOW).splitlines()[3:]
    assert len(rows) == DESCRIBE_EVENTS_SHOWN
    assert rows[-1].split()[1] == "R29" and rows[0].split()[1] == "R10"
    assert events_section([], NOW) == "Events:  <none>"
