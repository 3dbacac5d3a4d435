"""glibc malloc tuning for the streaming path (docs/architecture.md §6).

Relaying means allocating and freeing 64 KiB to 1 MiB buffers all the time; with glibc's defaults
each of them is an mmap/munmap pair or a heap trim, which measured at more than half of the
relay's CPU. Raising the mmap threshold, the trim threshold and the top pad keeps those buffers
in the heap. Costs a few tens of MiB of retained memory at most. A no-op off glibc.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20
TRIM_THRESHOLD_BYTES = 64 << 20
TOP_PAD_BYTES = 16 << 20


def tune_malloc() -> bool:
    """Apply the settings; False when this libc has no ``mallopt``."""
    try:
        # The interpreter's own symbols, libc's among them: ctypes.util.find_library would
        # run ldconfig in a subprocess, milliseconds that nodectl's start-up cannot spare.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = True
    for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_TOP_PAD, TOP_PAD_BYTES),
    ):
        ok = bool(mallopt(option, value)) and ok
    return ok
