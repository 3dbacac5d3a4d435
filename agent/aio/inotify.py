"""Directory change notification with Linux inotify through ctypes (no dependency).

Only a hint: it wakes the manifest-directory source early so a new or changed file is picked
up in milliseconds instead of at the next poll. The poll stays as the safety net (inotify can
overflow, and some filesystems — NFS, some FUSE mounts — never report changes).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
READ_CHUNK_BYTES = 64 * 1024


def _load_libc() -> ctypes.CDLL | None:
    # dlopen(NULL): the running program, which links libc. ctypes.util.find_library would
    # spawn ldconfig, a blocking subprocess; this runs once, at import, before any loop.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "inotify_init1") else None


_LIBC = _load_libc()


class DirectoryWatcher:
    """Sets :attr:`changed` whenever something in one directory changes."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self._fd: int | None = None
        self._watching: Path | None = None

    @property
    def active(self) -> bool:
        return self._watching is not None

    def watch(self, directory: Path) -> bool:
        """Start watching ``directory``; False (and polling only) when it cannot be watched.

        Cheap syscalls on a non-blocking descriptor, so safe to call from the loop.
        """
        if self._watching == directory:
            return True
        self.close()
        libc = _LIBC
        if libc is None:
            return False
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.debug("inotify unavailable: %s", os.strerror(ctypes.get_errno()))
            return False
        if libc.inotify_add_watch(fd, os.fsencode(directory), WATCH_MASK) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            if code != errno.ENOENT:
                log.debug("cannot watch %s: %s", directory, os.strerror(code))
            return False
        self._fd = fd
        self._watching = directory
        asyncio.get_running_loop().add_reader(fd, self._on_readable)
        return True

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            while os.read(self._fd, READ_CHUNK_BYTES):
                pass
        except BlockingIOError:
            pass
        except OSError:
            self.close()  # fall back to polling; the next watch() call retries
        self.changed.set()

    def close(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
        self._fd = None
        self._watching = None
