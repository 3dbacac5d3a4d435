"""Fixtures of the etcd-backed tests (``make test-etcd``): one throwaway etcd with TLS and
client-certificate authentication for the session (tests.etcd.server), each test under its
own key prefix."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.etcd.server import EtcdServer

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if not EtcdServer.available():
        pytest.fail("no etcd binary: apt-get install etcd-server (scripts/bootstrap.sh does)")
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own: tests share the etcd, never a key."""
    return f"/test/{next(_prefixes)}-{request.node.name[:60]}/"
