"""``/readyz``: 200 ``ok`` while a cheap read of the store answers in time, 503 with the reason
when it fails or hangs; the leader hook's reason is a 503 too; ``/healthz`` stays liveness
(200 whatever the store does). Anonymous over both protocols: tests/unit/master/test_app.py's
serving test and the authorization matrix (tests/integration/test_authz_matrix.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.errors import StoreError
from agent.master import api as master_api
from agent.master.api import MasterApi
from agent.master.store.base import KeyValue
from agent.master.store.memory import MemoryStore
from agent.proto.authz import CallerKind, Decision, decide
from tests.unit.master.rig import MasterRig
from tests.unit.master.test_api import NOBODY, call

pytestmark = pytest.mark.usefixtures("blockbuster")


class Broken(MemoryStore):
    """A store whose reads fail (``error``) or never answer (``hang``)."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.released = asyncio.Event()

    async def get(self, key: str) -> KeyValue | None:
        if self.mode == "error":
            raise StoreError("etcd: no endpoint answered (connection refused)")
        if self.mode == "hang":
            await self.released.wait()
        return await super().get(key)


@pytest.fixture
def store() -> Broken:
    return Broken()


@pytest.fixture
def api(rig: MasterRig, store: Broken) -> MasterApi:
    rig.registry.store = store
    return MasterApi(rig.registry, rig.pods, ())


async def body_of(api: MasterApi, path: str) -> tuple[int, str]:
    response = await call(api, "GET", path, caller=NOBODY)
    assert response.content_type.startswith("text/plain")
    return response.status, response.body.decode()


async def test_ready_while_the_store_answers(api: MasterApi) -> None:
    assert await body_of(api, "/readyz") == (200, "ok")


async def test_a_failing_store_is_503_with_its_words_and_healthz_stays_200(
    api: MasterApi, store: Broken
) -> None:
    store.mode = "error"
    status, text = await body_of(api, "/readyz")
    assert status == 503
    assert text == "not ready: store: etcd: no endpoint answered (connection refused)\n"
    assert await body_of(api, "/healthz") == (200, "ok")
    store.mode = "ok"
    assert await body_of(api, "/readyz") == (200, "ok")


async def test_a_store_that_does_not_answer_is_503_after_the_short_timeout(
    api: MasterApi, store: Broken, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(master_api, "READYZ_STORE_TIMEOUT_S", 0.05)
    store.mode = "hang"
    status, text = await body_of(api, "/readyz")
    assert (status, text) == (503, "not ready: store: no answer within 0.05 s\n")


async def test_the_leader_hook_says_why_not(api: MasterApi, monkeypatch: Any) -> None:
    monkeypatch.setattr(api, "leader_known", lambda: "no leader elected yet")
    assert await body_of(api, "/readyz") == (503, "not ready: no leader elected yet\n")


def test_anyone_may_ask() -> None:
    for kind in CallerKind:
        assert decide("readyz", kind) is Decision.ALLOW, kind
