"""Fixtures of the master's unit tests: one cluster PKI per session, a fresh master per test."""

from __future__ import annotations

import pytest

from agent.master.pki_files import ClusterPki
from tests.unit.master.rig import MasterRig, make_cluster_pki, make_rig


@pytest.fixture(scope="session")
def cluster_pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPki:
    return make_cluster_pki(tmp_path_factory.mktemp("master"))


@pytest.fixture
def rig(cluster_pki: ClusterPki) -> MasterRig:
    return make_rig(cluster_pki)
