"""A pod's volume directories that cannot be made fail its sync with ``VolumeError`` (a leaf of
``agent.errors``, 500), the OSError kept as its cause. (The sync's retry after it:
test_worker.py::test_volumes_that_cannot_be_prepared_fail_the_sync.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.errors import VolumeError
from agent.node.pods.worker import PodWorker
from tests.unit.node.pods.builders import make_pod
from tests.unit.node.pods.rig import Rig

pytestmark = pytest.mark.usefixtures("blockbuster")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    made = Rig(tmp_path / "state")
    yield made
    await made.close()


@pytest.mark.parametrize("kind", ["emptyDir", "hostPath"])
async def test_volumes_that_cannot_be_made_raise_a_volume_error(
    rig: Rig, tmp_path: Path, kind: str
) -> None:
    blocked = tmp_path / "a-file"
    await rig.bridge.run(blocked.write_text, "")
    if kind == "hostPath":
        source = {"path": str(blocked / "v"), "type": "DirectoryOrCreate"}
        volume: dict[str, object] = {"name": "v", "hostPath": source}
        deps = rig.deps
    else:
        volume = {"name": "v", "emptyDir": {}}
        deps = rig.make_deps(blocked)  # the state dir is a file: no volume dir under it
    worker = PodWorker(make_pod(volumes=[volume]), deps)
    with pytest.raises(VolumeError, match="cannot prepare volumes of shop/web") as caught:
        await worker._ensure_volumes()
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.http_status == 500
