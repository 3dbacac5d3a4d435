"""Every JSON route of the master's route table has exactly one handler (the stream routes go
to the proxy), so the edge never meets a route it cannot serve."""

from __future__ import annotations

from typing import Any, cast

from agent.master.api import MasterApi
from agent.proto.routes import MASTER_ROUTES, RouteTable


def json_routes(table: RouteTable) -> set[str]:
    return {r.name for r in table.routes if not r.stream}


def test_the_master_has_a_handler_for_every_json_route_and_no_other() -> None:
    api = MasterApi(cast(Any, None), cast(Any, None), ())
    assert set(api.handlers) == json_routes(MASTER_ROUTES)
