"""Time and peak memory of refusing each hostile manifest of issue 14 (item 9), our path vs
the loader we had: the targets are under 1 s and under 100 MB each.

Run: ``.venv/bin/python bench/hostile_manifests.py [--baseline] [--timeout-s 60]``

For every case of the shared corpus (tests/hostile_manifests.py): the file through
``parse_manifests`` (static files; ``nodectl apply`` runs the same loader), and where the case
has one, the JSON body through ``load_json`` + ``parse_pod`` (the master's ``POST /v1/pods``).
With ``--baseline``, the file also through PyYAML's pure-Python ``safe_load_all`` (what
``nodectl apply`` used, and what the agent fell back to without libyaml), the body through
``json.loads``: the before. Each measurement runs in a fresh child process (peak RSS is a
process's lifetime high-water mark) under ``RLIMIT_AS`` of 4 GiB and a wall-clock timeout, so a
runaway baseline ends as ``MemoryError`` or ``timeout`` instead of taking the machine. Prints
one row per case and path: the outcome (refused, or what escaped), the time, the peak of
Python's allocations while parsing (tracemalloc, in a second untimed run: libyaml's own buffers
are not counted, they are proportional to the 1 MiB text), and whether it meets the targets.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_S = 1.0
TARGET_MB = 100.0
CHILD_AS_BYTES = 4 << 30  # a runaway baseline fails with MemoryError here, not the machine


def child(case: str, path: str) -> None:
    """One measurement, printed as a JSON line."""
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS_BYTES, CHILD_AS_BYTES))
    import yaml

    from agent.errors import ManifestError
    from agent.manifest import parse_manifests, parse_pod
    from agent.manifest_loader import load_json
    from tests.hostile_manifests import CORPUS

    [hostile] = [h for h in CORPUS if h.id == case]
    text, body = hostile.text, hostile.body or b""
    runs = {
        "file": lambda: parse_manifests(text, source="bench.yaml", node_name="n1"),
        "body": lambda: parse_pod(load_json(body, source="api"), source="api"),
        # what we had: the document loaded, then serialized for its uid and spec hash
        "file-baseline": lambda: json.dumps(list(yaml.load_all(text, Loader=yaml.SafeLoader))),
        "body-baseline": lambda: json.dumps(json.loads(body)),
    }

    def run() -> str:
        try:
            runs[path]()
        except ManifestError:
            return "refused"
        except BaseException as exc:  # the baseline's failures are the point of the comparison
            return type(exc).__name__
        return "accepted"

    started = time.perf_counter()
    outcome = run()
    spent = time.perf_counter() - started
    # Memory in a second run, traced (tracemalloc slows it: not the timed one): the peak of
    # Python's allocations while parsing, which the texts' own size does not blur.
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"outcome": outcome, "s": spent, "mb": peak / 2**20}))


def measure(case: str, path: str, timeout_s: float) -> dict[str, object]:
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", case, path],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"outcome": f"timeout ({timeout_s:.0f} s)", "s": None, "mb": None}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"outcome": f"exit {done.returncode}", "s": None, "mb": None}
    result: dict[str, object] = json.loads(lines[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", action="store_true", help="also the loaders we had")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per measurement")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from tests.hostile_manifests import CORPUS

    paths = ["file", "body"] + (["file-baseline", "body-baseline"] if args.baseline else [])
    print(f"{'case':34} {'path':14} {'outcome':22} {'time':>9} {'peak':>9}  targets")
    worst_s = worst_mb = 0.0
    for hostile in CORPUS:
        for path in paths:
            if path.startswith("body") and hostile.body is None:
                continue
            if path.startswith("file") and not hostile.field:  # the file is a valid pod
                continue
            row = measure(hostile.id, path, args.timeout_s)
            s, mb = row["s"], row["mb"]
            ok = isinstance(s, float) and isinstance(mb, float) and s < TARGET_S and mb < TARGET_MB
            if not path.endswith("baseline") and isinstance(s, float) and isinstance(mb, float):
                worst_s, worst_mb = max(worst_s, s), max(worst_mb, mb)
            shown_s = f"{s * 1000:7.1f}ms" if isinstance(s, float) else "-"
            shown_mb = f"{mb:7.1f}MB" if isinstance(mb, float) else "-"
            verdict = "met" if ok else "MISSED"
            outcome = str(row["outcome"])
            print(f"{hostile.id:34} {path:14} {outcome:22} {shown_s:>9} {shown_mb:>9}  {verdict}")
    print(
        f"\nour paths, worst case: {worst_s * 1000:.1f} ms (target {TARGET_S * 1000:.0f} ms), "
        f"{worst_mb:.1f} MB allocated at the peak (target {TARGET_MB:.0f} MB)"
    )


if __name__ == "__main__":
    main()
