"""``make run-ha``'s script (scripts/demo-ha.sh), the pieces a unit test can run without etcd,
masters or Docker work: its refusals (an unknown flag, a port that is not one, a relative
HA_DIR, which it would delete) and its tear-down (``--stop`` with no demo running ends the
processes an interrupted demo recorded, by id, and deletes HA_DIR). The whole demo ran by hand
(docs/decisions.md, "Several masters from the outside"): it is a demo, not in CI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import wait_for

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo-ha.sh"


def run(*flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (("--soon",), {}, "run-ha: unknown flag --soon (known: --until-running, --stop)"),
        ((), {"HA_PORT": "http"}, "run-ha: HA_PORT=http is not a port number (1-65530)"),
        ((), {"HA_ETCD_PORT": "70000"}, "run-ha: HA_ETCD_PORT=70000 is not a port number"),
        ((), {"HA_WAIT_S": "soon"}, "run-ha: HA_WAIT_S=soon is not a number of seconds"),
        ((), {"HA_DIR": "demo"}, "run-ha: HA_DIR=demo must be an absolute path"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(
    flags: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    done = run(*flags, **env)
    assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
    assert done.stdout == ""


def test_stop_ends_what_an_interrupted_demo_recorded_and_deletes_its_directory(
    tmp_path: Path,
) -> None:
    ha = tmp_path / "ha"
    ha.mkdir()
    (ha / "etcd").mkdir()  # its data, say
    left = subprocess.Popen(["sleep", "300"])  # a daemon the demo started, left behind
    (ha / "pids").write_text(f"{left.pid}\n")
    try:
        done = run("--stop", HA_DIR=str(ha))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "run-ha: nothing running; cleaned up\n"
        assert left.wait(timeout=30) == -15  # SIGTERM, by its id
        assert not ha.exists()
    finally:
        if left.poll() is None:
            left.kill()
            left.wait()


def test_stop_asks_a_running_demo_to_tear_itself_down(tmp_path: Path) -> None:
    ha = tmp_path / "ha"
    ha.mkdir()
    # The demo's own process: a shell that, like the script's trap, cleans up on SIGTERM.
    trapped = tmp_path / "trapped"
    demo = subprocess.Popen(
        ["bash", "-c", f"trap 'rm -rf {ha}; exit 143' TERM; touch {trapped}; "
         "while true; do sleep 0.1; done"]
    )  # fmt: skip
    (ha / "demo.pid").write_text(f"{demo.pid}\n")
    try:
        # Its trap is set once the file exists: SIGTERM now runs it.
        wait_for(trapped.exists, what="the stand-in demo started")
        done = run("--stop", HA_DIR=str(ha))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "run-ha: stopped\n"
        assert demo.wait(timeout=30) == 143
        assert not ha.exists()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
