"""``node-agent check FILE|DIR…``: what the agent would do with static manifests, before they
are dropped into the manifest directory.

Each file is read as the agent reads it (at most ``MAX_MANIFEST_BYTES``, UTF-8, the strict
loader) and parsed by the same parser with the node's name: every error of every document is
printed with its path, the fields the API server adds are printed as warnings, and each pod the
agent would run is printed as ``ok: pod NAMESPACE/NAME (N containers)``. A directory is checked
as the agent scans it (files ending in ``.yaml``, ``.yml`` or ``.json``, hidden ones skipped).
The exit status is 1 when anything was wrong, else 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from agent.errors import ManifestError
from agent.manifest import parse_manifests
from agent.manifest_loader import MAX_MANIFEST_BYTES
from agent.names import escape

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")  # as agent.node.pods.sources


def _files(arg: str) -> list[Path]:
    path = Path(arg)
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    return [path]


def _read(path: Path, shown: str) -> str:
    with path.open("rb") as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"file larger than {MAX_MANIFEST_BYTES} bytes", shown)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError("", f"not UTF-8 (at byte {exc.start})", shown) from None


def check_file(path: Path, node_name: str, out: TextIO, err: TextIO) -> bool:
    """Check one file, printing what the agent would do; True when it is valid."""
    shown = escape(str(path))
    warnings: list[str] = []
    try:
        pods = parse_manifests(
            _read(path, shown), source=shown, node_name=node_name, warnings=warnings
        )
    except ManifestError as exc:
        where = f"{exc.source}: " if exc.source else ""
        for field, problem in exc.causes:
            print(
                f"error: {where}{escape(field)}: {escape(problem)}"
                if field
                else f"error: {where}{escape(problem)}",
                file=err,
            )
        return False
    except OSError as exc:
        print(f"error: {shown}: {escape(exc.strerror or str(exc))}", file=err)
        return False
    for warning in warnings:
        print(f"Warning: {shown}: {escape(warning)}", file=err)
    if not pods:
        print(f"ok: {shown}: no pods", file=out)
    for pod in pods:
        count = len(pod.spec.containers)
        noun = "container" if count == 1 else "containers"
        print(f"ok: pod {escape(pod.full_name)} ({count} {noun})", file=out)
    return True


def main(
    paths: Sequence[str], node_name: str, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout  # looked up now: a caller (pytest) may have replaced them
    err = err or sys.stderr
    good = True
    for arg in paths:
        files = _files(arg)
        if not files:
            print(f"ok: {escape(arg)}: no manifest files", file=out)
        for path in files:
            good = check_file(path, node_name, out, err) and good
    return 0 if good else 1
