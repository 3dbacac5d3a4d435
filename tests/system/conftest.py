"""System-test fixtures: the integration fixtures (real dockerd, agent and master processes)
plus a network topology of namespaces on a bridge. Needs root, like the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import docker_client, make_agent, make_master
from tests.system.topology import Topology

__all__ = ["docker_client", "make_agent", "make_master", "topology"]


@pytest.fixture
def topology() -> Iterator[Topology]:
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()
