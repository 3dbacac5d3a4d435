"""The process's descriptor limit: a daemon holding a connection per node raises its soft
``RLIMIT_NOFILE`` to the hard limit at start.

A master serving 5,000 nodes holds 5,000 TLS connections (more with watches and streams), each a
descriptor; a shell's or a container's soft limit is often 1,024 (the hard one much higher),
and past it ``accept`` fails with EMFILE while the fleet retries. The systemd units set
``LimitNOFILE`` (docs/packaging.md); this covers every other way of starting the daemon.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NofileLimit:
    """The soft limit before and after, and the hard limit (``RLIM_INFINITY`` is -1)."""

    before: int
    after: int
    hard: int


def raise_nofile_limit() -> NofileLimit:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit (never down). A hard limit of infinity is
    capped at the kernel's ``nr_open`` (setrlimit refuses more); when even that is refused the
    soft limit stays as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return NofileLimit(soft, soft, hard)
        return NofileLimit(soft, target, hard)
    return NofileLimit(soft, soft, hard)


NR_OPEN_FALLBACK = 1 << 20  # the kernel's default fs.nr_open


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:  # a procfs read at start-up, before the loop
            return int(f.read())
    except (OSError, ValueError):
        return NR_OPEN_FALLBACK
