"""The streaming routes the node serves and the master's proxy relays: one table for both."""

from __future__ import annotations

from agent.proto.routes import CODE_EXECUTION_ACTIONS, STREAM_ROUTES


def test_every_code_execution_action_is_a_route_and_logs_stay_read_only() -> None:
    actions = {action for _, action in STREAM_ROUTES}
    assert actions > CODE_EXECUTION_ACTIONS  # a strict superset: logs is not one
    assert ("GET", "logs") in STREAM_ROUTES and "logs" not in CODE_EXECUTION_ACTIONS
