"""Private files of the daemons: the process umask, and the start-up check that a data directory
(the master's data dir, the agent's state dir) and what it holds are readable by the owner only.

Both daemons set ``PRIVATE_UMASK`` before they create anything, so files born inside them (the
ones SQLite creates itself, ``-wal`` and ``-shm``, included) are private whatever the umask of
the shell that started them. What was created before (an older version, a hand-made directory,
a restored backup) is caught by :func:`tighten_tree` at start: every directory to 0700, every
other entry to 0600, each loosened path logged as a warning that names it.

Blocking (a directory walk, chmod): call it before the event loop runs or through the bridge.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection
from pathlib import Path

from agent.aio.logs import kv

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Bits nobody but the owner may hold on a private path.
_OTHERS_BITS = stat.S_IRWXG | stat.S_IRWXO


def restrict_umask() -> int:
    """Set the process umask to ``PRIVATE_UMASK``; returns the one it replaces."""
    return os.umask(PRIVATE_UMASK)


def tighten_tree(root: Path, *, skip: Collection[str] = ()) -> list[Path]:
    """Make ``root`` 0700 and every path below it owner-only (directories 0700, the rest 0600),
    without following symbolic links; returns the paths that were looser, each logged as a
    warning. ``skip``: names of entries directly under ``root`` left alone (the agent's pod
    volumes, whose modes are the pods' business). A missing ``root`` is not an error: the
    daemon creates it private."""
    loosened: list[Path] = []
    if not root.is_dir():
        return loosened
    _tighten(root, PRIVATE_DIR_MODE, loosened)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames:
            _tighten(here / name, PRIVATE_DIR_MODE, loosened)
        for name in filenames:
            if here != root or name not in skip:
                _tighten(here / name, PRIVATE_FILE_MODE, loosened)
    return loosened


def _tighten(path: Path, mode: int, loosened: list[Path]) -> None:
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & _OTHERS_BITS:
            return
        path.chmod(mode)
    except FileNotFoundError:
        return  # removed while we walked (a checkpoint's temporary file)
    except OSError as exc:
        log.warning("private path could not be tightened", extra=kv(path=str(path), error=str(exc)))
        loosened.append(path)
        return
    was = oct(stat.S_IMODE(st.st_mode))
    log.warning(
        "private path was readable by others; tightened",
        extra=kv(path=str(path), mode=was, now=oct(mode)),
    )
    loosened.append(path)
