"""Issue 16's image GC acceptance on a real engine whose data root is a 400 MiB tmpfs (the
``engine`` fixture: a second dockerd; the machine's engine untouched):

* filled over the high threshold with images of known sizes, GC brings usage under the low
  threshold deleting least recently used first, never an image in use (by a container that is
  not ours, never started), pinned, the sandbox image, or one too young;
* the race: GC held between its plan and its deletions (hold point ``imagegc-before-delete``)
  while a pod is admitted on the oldest image → the image is not deleted, the pod runs;
* the LRU order after an agent ``kill -9`` and restart equals the order before.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from agent.node.imagegc.lastused import USAGE_FILE
from agent.node.runtime.pause import PAUSE_PATH, pause_rootfs_tar
from tests.helpers import REPO_ROOT, AgentProcess, pod_manifest, running_phase, sleeper, wait_for
from tests.system.imagegc.conftest import MB, Engine

SANDBOX = "node-agent/pause:0.1"
PAD_BYTES = 24 * MB
OLD = [f"gc/old{i}:1" for i in range(10)]
HOUR_S = 3600.0


def images_json(agent: AgentProcess, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli.node_agent", "images", *args, "-o", "json",
         "--config", str(agent.config_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, check=True, timeout=300,
    )  # fmt: skip
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def present(engine: Engine, ref: str) -> bool:
    return any(ref in (i.tags or ()) for i in engine.client.images.list())


def test_gc_lru_exemptions_race_and_restart(
    engine: Engine, make_agent: Callable[..., AgentProcess]
) -> None:
    client = engine.client
    client.api.import_image_from_data(
        pause_rootfs_tar(), repository="node-agent/pause", tag="0.1",
        changes=[f'ENTRYPOINT ["{PAUSE_PATH}"]'],
    )  # fmt: skip
    ids = {SANDBOX: client.images.get(SANDBOX).id}
    for ref in ("gc/used:1", "gc/pinned:1", "gc/racer:1", *OLD, "gc/young:1"):
        ids[ref] = engine.import_image(ref, PAD_BYTES)
    # Used by a container that is not the agent's and never ran.
    client.containers.create("gc/used:1", ["/bin/true"], name=f"{engine.root.name}-foreign")
    assert engine.usage_percent() >= 85, engine.usage_percent()

    agent = make_agent(
        docker_host=engine.host,
        image_gc_period_s=3600.0,  # runs only when asked (and on disk pressure, turned off)
        imagefs_available_min_percent=0.0,
        nodefs_available_min_percent=0.0,
        # The defaults, which make_agent turns off for agents on the machine's engine.
        image_gc_high_threshold_percent=85.0,
        image_gc_low_threshold_percent=80.0,
        pinned_images=["gc/pinned:*"],
        sandbox_image=SANDBOX,
    )
    # The record an agent that ran for hours left: the exempt images the oldest of all,
    # then racer, then old0 .. old9; gc/young:1 is not in it (first seen at start: too young).
    now = time.time()
    order = [SANDBOX, "gc/used:1", "gc/pinned:1", "gc/racer:1", *OLD]
    record = {
        ids[ref]: {"firstSeen": now - 20 * HOUR_S, "lastUsed": now - 10 * HOUR_S + i * 60}
        for i, ref in enumerate(order)
    }
    agent.state_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    (agent.state_dir / USAGE_FILE).write_text(json.dumps({"version": 1, "images": record}))
    agent.start(env={"NODE_AGENT_HOLD_AT": "imagegc-before-delete"})

    listing = images_json(agent)
    why = {i["tags"][0]: i["reason"] for i in listing["images"] if i["tags"]}
    assert why[SANDBOX] == "sandbox"
    assert why["gc/used:1"] == "in-use"
    assert why["gc/pinned:1"] == "pinned"
    assert why["gc/young:1"] == "too-young"
    assert why["gc/racer:1"] == "disk-usage"  # the first to go

    # The race: GC planned (racer first) and held; a pod is admitted on racer meanwhile.
    gc_run = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.node_agent", "images", "gc", "-o", "json",
         "--config", str(agent.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT,
    )  # fmt: skip
    wait_for(lambda: "held at hold point" in agent.log_path.read_text(), what="GC held")
    assert present(engine, "gc/racer:1")
    racer = sleeper()
    racer["image"] = "gc/racer:1"
    agent.write_manifest("racer.json", pod_manifest("racer", [racer]))
    wait_for(lambda: running_phase(agent, "racer"), timeout_s=60, what="racer running")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGUSR2)
    out, err = gc_run.communicate(timeout=300)
    assert gc_run.returncode == 0, err
    report = json.loads(out)
    results = {i["tags"][0] if i["tags"] else i["id"]: i["result"] for i in report["images"]}
    assert results["gc/racer:1"].startswith("refused: reserved"), results
    assert present(engine, "gc/racer:1")
    assert running_phase(agent, "racer")

    # Under the low threshold, LRU first: the deleted are a prefix of old0 .. old9.
    assert engine.usage_percent() <= 80, engine.usage_percent()
    gone = [ref for ref in OLD if not present(engine, ref)]
    assert gone, report
    assert gone == OLD[: len(gone)], gone
    assert len(gone) < len(OLD)  # no more than needed
    for ref in (SANDBOX, "gc/used:1", "gc/pinned:1", "gc/young:1"):
        assert present(engine, ref), ref
    assert all(results[ref] == "deleted" for ref in gone)

    # The LRU order survives kill -9 and a restart.
    before = [i["id"] for i in images_json(agent)["images"]]
    agent.kill9()
    agent.start()
    after = [i["id"] for i in images_json(agent)["images"]]
    assert after == before
    wait_for(lambda: running_phase(agent, "racer"), what="racer adopted")
