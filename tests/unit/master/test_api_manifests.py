"""``POST /v1/pods`` against hostile manifests (issue 14, item 9): every body of the shared
corpus (tests/hostile_manifests.py) is a 4xx naming the field path, through the same strict
loader as nodectl's and the agent's files (or, for nesting deeper than every JSON body may,
the edge's 400 about it); nothing is stored; a large body is parsed on the
master's thread bridge, not on its event loop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from agent.aio.edge import ApiRequest, error_response
from agent.errors import AgentError, BadRequestError, ManifestError
from agent.manifest_loader import OFF_LOOP_BYTES
from agent.master.api import MasterApi
from agent.proto.authz import Caller, CallerKind, Principal, Role
from agent.proto.routes import MASTER_ROUTES
from tests.hostile_manifests import BODIES, Hostile, assert_clear, body_expectation
from tests.unit.master.rig import MasterRig

pytestmark = pytest.mark.usefixtures("blockbuster")

T = TypeVar("T")
ADMIN = Caller(Principal(Role.ADMIN, "admin", ("system:masters",)), CallerKind.ADMIN)
JSON_HEADERS = {"content-type": "application/json"}


def _request(body: bytes) -> ApiRequest:
    match = MASTER_ROUTES.match("POST", "/v1/pods")
    return ApiRequest(match, ADMIN, JSON_HEADERS, body, "10.0.0.5")


@pytest.mark.parametrize("hostile", BODIES, ids=lambda h: h.id)
async def test_a_hostile_body_is_a_4xx_naming_the_field(rig: MasterRig, hostile: Hostile) -> None:
    api = MasterApi(rig.registry, rig.pods, ())
    assert hostile.body is not None
    with pytest.raises(AgentError) as caught:
        await api.handlers["pods.create"](_request(hostile.body))
    error = caught.value
    assert 400 <= error_response(error).status < 500
    if isinstance(error, ManifestError):
        assert_clear(error, *body_expectation(hostile))
    else:  # the rule of every JSON body came first: its depth (a 400 without a path)
        assert hostile.id == "5000-deep-nesting", (type(error).__name__, str(error)[:300])
        assert isinstance(error, BadRequestError), str(error)[:300]
        assert "deep" in str(error) or "depth" in str(error), str(error)[:300]
    assert (await rig.pods.list())[0] == []


async def test_a_large_body_is_parsed_off_the_event_loop(rig: MasterRig) -> None:
    threads: list[str] = []

    async def run_blocking(func: Callable[[], T], /) -> T:
        def recorded() -> T:
            threads.append(threading.current_thread().name)
            return func()

        return await asyncio.to_thread(recorded)

    api = MasterApi(rig.registry, rig.pods, (), run_blocking)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "big", "annotations": {"pad": "x" * OFF_LOOP_BYTES}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1"}]},
    }
    small = {**pod, "metadata": {"name": "small"}}
    assert (await api.handlers["pods.create"](_request(json.dumps(small).encode()))).status == 201
    assert threads == []
    assert (await api.handlers["pods.create"](_request(json.dumps(pod).encode()))).status == 201
    assert len(threads) == 1 and threads[0] != threading.current_thread().name
