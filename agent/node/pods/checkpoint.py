"""The atomic on-disk checkpoint (blocking code: callers go through the thread bridge).

Write temp, fsync, rename, fsync the directory: a crash at any instant leaves the old or the new
checkpoint, never a torn one. A checksum inside the envelope catches a file that parses as JSON
but was damaged or edited. A corrupt file is moved aside, never deleted, so it can be examined.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import CheckpointCorruptError, CheckpointError
from agent.node import crashpoints

CHECKPOINT_VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _checksum(data: Any) -> str:
    return "sha256:" + hashlib.sha256(_canonical(data)).hexdigest()


class CheckpointStore:
    """One checkpoint file: ``load`` the last complete ``save``, or learn why it is unusable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Every save in this process uses the same temp name; two bridge threads writing it at
        # once would interleave their bytes, so saves are serialised.
        self._save_lock = threading.Lock()

    def load(self) -> dict[str, Any] | None:
        """The saved data, None when no checkpoint exists.

        Raises CheckpointCorruptError (after moving the file aside) when it is unusable, and
        CheckpointError when it cannot be read at all.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read: {exc}") from exc
        problem = ""
        data: Any = None
        try:
            envelope = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            problem = f"not valid JSON ({exc})"
        else:
            if not isinstance(envelope, dict) or "data" not in envelope:
                problem = "not a checkpoint envelope"
            elif envelope.get("version") != CHECKPOINT_VERSION:
                problem = f"unknown version {envelope.get('version')!r}"
            elif envelope.get("checksum") != _checksum(envelope["data"]):
                problem = "checksum mismatch"
            elif not isinstance(envelope["data"], dict):
                problem = "data is not an object"
            else:
                data = envelope["data"]
        if problem:
            # Microseconds: a second corrupt file within the same second must not replace the
            # first one, which may be the evidence someone needs.
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            try:
                os.replace(self.path, aside)
            except OSError as exc:
                raise CheckpointCorruptError(
                    f"{self.path}: corrupt ({problem}) and could not be moved aside: {exc}"
                ) from exc
            raise CheckpointCorruptError(f"{self.path}: corrupt ({problem}); moved to {aside}")
        result: dict[str, Any] = data
        return result

    def save(self, data: Mapping[str, Any]) -> None:
        """Replace the checkpoint with ``data`` atomically; CheckpointError keeps the old one."""
        body = dict(data)
        envelope = {"version": CHECKPOINT_VERSION, "checksum": _checksum(body), "data": body}
        payload = _canonical(envelope)
        with self._save_lock:
            self._write(payload)

    def _write(self, payload: bytes) -> None:
        directory = self.path.parent
        tmp = directory / f".{self.path.name}.tmp-{os.getpid()}"
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            crashpoints.hit("checkpoint-tmp-written")
            os.replace(tmp, self.path)
            # Without this the rename itself may not survive a power cut.
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            crashpoints.hit("checkpoint-saved")
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            name = errno.errorcode.get(exc.errno or 0, "EIO")
            raise CheckpointError(
                f"{self.path}: write failed: {name}: {exc.strerror or exc}"
            ) from exc
