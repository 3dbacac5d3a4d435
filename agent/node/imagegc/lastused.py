"""The images' last-used record, persisted in the state dir (``image-usage.json``) so that the
LRU order survives an agent restart (Nomad's in-memory counts leak images after a restart,
nomad #26452).

Written as the checkpoint is: a temporary file (0600, in the 0700 state dir), fsync, rename,
fsync of the directory — a crash leaves the old record or the new one, never half of one. A
record that cannot be read or parsed is logged and treated as empty: every image is then
first seen now, which only delays GC by ``image_minimum_gc_age`` — never deletes early.
Blocking: the manager calls ``load``/``save`` through its ThreadBridge.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from agent.aio.logs import kv
from agent.aio.private import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from agent.node.imagegc.planner import Usage

log = logging.getLogger(__name__)

USAGE_FILE = "image-usage.json"
USAGE_VERSION = 1
MAX_FILE_BYTES = 16 * 1024 * 1024  # ~100k images; anything bigger is not ours


class LastUsedStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, Usage]:
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("image usage record unreadable", extra=kv(path=str(self.path), error=exc))
            return {}
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            return parse_usage(json.loads(raw))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested too deeply
            log.warning(
                "image usage record ignored: every image counts as first seen now",
                extra=kv(path=str(self.path), error=str(exc)),
            )
            return {}

    def save(self, usage: Mapping[str, Usage]) -> None:
        body = {
            "version": USAGE_VERSION,
            "images": {
                image_id: {"firstSeen": u.first_seen, "lastUsed": u.last_used}
                for image_id, u in sorted(usage.items())
            },
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        directory = self.path.parent
        tmp = directory / f".{self.path.name}.tmp-{os.getpid()}"
        with self._lock:
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE
                )
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
                dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise


def parse_usage(data: object) -> dict[str, Usage]:
    """The record ``save`` wrote; ValueError naming what is wrong for anything else."""
    if not isinstance(data, dict) or data.get("version") != USAGE_VERSION:
        raise ValueError(f"not a version {USAGE_VERSION} image usage record")
    images = data.get("images")
    if not isinstance(images, dict):
        raise ValueError("images: expected an object")
    out: dict[str, Usage] = {}
    for image_id, entry in images.items():
        if not isinstance(entry, dict):
            raise ValueError(f"images[{image_id!r}]: expected an object")
        times = []
        for name in ("firstSeen", "lastUsed"):
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"images[{image_id!r}].{name}: expected a number")
            if not math.isfinite(value):
                raise ValueError(f"images[{image_id!r}].{name}: not finite")
            times.append(float(value))
        out[str(image_id)] = Usage(first_seen=times[0], last_used=times[1])
    return out
