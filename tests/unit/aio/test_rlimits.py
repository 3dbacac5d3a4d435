"""The descriptor limit a daemon raises at start (agent.aio.rlimits), in a child process so
this test run keeps its own limits."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import resource
from agent.aio.rlimits import raise_nofile_limit
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
raised = raise_nofile_limit()
print(raised.before, raised.after, raised.hard, *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def _in_child(soft: int, hard: int) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(soft=soft, hard=hard)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    ).stdout
    return [int(x) for x in out.split()]


def test_a_soft_limit_of_1024_is_raised_to_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    assert _in_child(256, hard) == [256, hard, hard, hard, hard]


def test_a_soft_limit_at_the_hard_one_is_left_alone() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    assert _in_child(hard, hard) == [hard, hard, hard, hard, hard]
