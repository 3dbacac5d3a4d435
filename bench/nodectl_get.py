"""Wall time of ``nodectl get pods`` against a real master (issue 17: start-up stays lazy, within
10 % of the figure before issue 17's output work).

Run: ``.venv/bin/python bench/nodectl_get.py [--runs 10] [--pods 2]``

Starts a real master (``tests.helpers.MasterProcess``, no agent: the pods stay Pending, which
is all a table needs), applies ``--pods`` pods, then runs ``nodectl get pods`` ``--runs`` times
as a user would (a new interpreter each time, the installed entry point's module) and prints
the median wall time beside a bare interpreter start. Exit 1 when a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import REPO_ROOT, MasterProcess, pod_manifest, sleeper


def timed(*args: str, cpu: list[float] | None = None) -> float:
    """Wall time of one run; its CPU time (user + system) is appended to ``cpu``: steadier
    than wall time on a shared machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pods", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-nodectl-") as tmp:
        master = MasterProcess(Path(tmp) / "master").start()
        try:
            for i in range(args.pods):
                manifest = Path(tmp) / f"p{i}.json"
                manifest.write_text(json.dumps(pod_manifest(f"bench-{i}", [sleeper()])))
                done = master.nodectl("apply", "-f", str(manifest))
                if done.returncode != 0:
                    sys.exit(done.stderr)
            command = ("-m", "agent.cli.nodectl_control", "--config", str(master.admin_conf))
            timed(*command, "get", "pods")  # warm the page cache
            cpu: list[float] = []
            gets = [timed(*command, "get", "pods", cpu=cpu) for _ in range(args.runs)]
            bare = [timed("-c", "pass") for _ in range(args.runs)]
        finally:
            master.stop()
    print(
        f"nodectl get pods ({args.pods} pods): median {statistics.median(gets) * 1e3:.0f} ms "
        f"(min {min(gets) * 1e3:.0f}, max {max(gets) * 1e3:.0f}) over {args.runs} runs, "
        f"CPU median {statistics.median(cpu) * 1e3:.0f} ms; "
        f"bare interpreter {statistics.median(bare) * 1e3:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
