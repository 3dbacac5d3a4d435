"""Wall time of ``node-agent doctor`` on a healthy node (issue 18: the whole doctor < 2 s).

Run: ``.venv/bin/python bench/doctor.py [--runs 5]``

Starts a real master and a real agent registered with it (``tests.helpers``), then runs
``node-agent doctor --config …`` ``--runs`` times as an operator would (a new interpreter each
time) and prints the median wall time, beside what bounds it from below: a bare interpreter
start and the import of the doctor's modules alone (the checks' own time is the rest). Exit 1
when a run fails or the median is 2 s or more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import REPO_ROOT, AgentProcess, MasterProcess, node_ready, wait_for

TARGET_S = 2.0


def timed(*args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as tmp:
        root = Path(tmp)
        master = MasterProcess(root / "master").start(blockbuster=False)
        agent = AgentProcess(
            root / "agent", "bench-doctor", master=master.url, ca_cert_hash=[master.pin]
        )
        try:
            agent.start(blockbuster=False)
            wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
            doctor = ["-m", "agent.cli.node_agent", "doctor", "--config", str(agent.config_path)]
            runs = [timed(*doctor) for _ in range(args.runs)]
            bare = statistics.median(timed("-c", "pass") for _ in range(args.runs))
            imports = statistics.median(
                timed("-c", "import agent.cli.node_agent, agent.doctor.node")
                for _ in range(args.runs)
            )
        finally:
            agent.stop()
            if master.proc is not None:
                master.proc.terminate()
                master.proc.wait(timeout=20)
    median = statistics.median(runs)
    print(
        f"node-agent doctor, healthy node, {args.runs} runs: " + ", ".join(f"{r:.2f}" for r in runs)
    )
    print(f"median {median:.2f} s (target < {TARGET_S:g} s)")
    print(f"bare interpreter {bare:.2f} s; interpreter + doctor's imports {imports:.2f} s;")
    print(f"the checks themselves ~{median - imports:.2f} s")
    return 0 if median < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
