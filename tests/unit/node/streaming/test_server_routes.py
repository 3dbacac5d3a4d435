"""Every JSON route of the node API's route table has exactly one handler (the stream routes
go to the streaming API), so the edge never meets a route it cannot serve."""

from __future__ import annotations

from typing import Any, cast

from agent.node.streaming.server import NodeApi
from agent.proto.routes import NODE_ROUTES


def test_the_node_api_has_a_handler_for_every_json_route_and_no_other() -> None:
    api = NodeApi(cast(Any, None), "n1", "127.0.0.1:10250")
    assert set(api._edge.handlers) == {r.name for r in NODE_ROUTES.routes if not r.stream}
    assert api._edge.streams is None  # without a runtime the stream routes answer 503
