"""agent/cli/nodectl_lean.py: which invocations the lean exec path takes, and which it leaves
to the full client untouched (the exec itself is tests/integration/test_streaming.py's
test_a_plain_exec_with_sessions_off_runs_without_asyncio)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import nodectl_lean
from tests.helpers import REPO_ROOT


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["exec", "p", "--", "true"], (None, False, "default", None, "p", ["true"])),
        (
            [
                "--config",
                "c",
                "--no-session",
                "exec",
                "-n",
                "ns",
                "-c",
                "web",
                "p",
                "--",
                "a",
                "-b",
            ],
            ("c", True, "ns", "web", "p", ["a", "-b"]),
        ),
        (
            ["--config=c", "exec", "--namespace", "ns", "p", "--container", "w", "--", "ls", "--"],
            ("c", False, "ns", "w", "p", ["ls", "--"]),
        ),
    ],
)
def test_the_plain_exec_forms_are_taken(argv: list[str], parsed: object) -> None:
    assert nodectl_lean.parse(argv) == parsed


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "-i", "p", "--", "cat"],
        ["exec", "-t", "p", "--", "sh"],
        ["exec", "-it", "p", "--", "sh"],
        ["exec", "--direct", "p", "--", "true"],
        ["exec", "-nns", "p", "--", "true"],  # a combined short option: argparse's to read
        ["exec", "p", "true"],  # the legacy form (kubectl's deprecation hint)
        ["exec", "p", "--"],
        ["exec", "p", "--", ""],
        ["exec", "--", "true"],
        ["exec", "p", "q", "--", "true"],
        ["exec", "p", "-n"],
        ["-v", "exec", "p", "--", "true"],
        ["--server", "https://m", "exec", "p", "--", "true"],
        ["--config"],
        ["get", "pods"],
        [],
    ],
)
def test_everything_else_is_left_to_the_full_client(argv: list[str]) -> None:
    assert nodectl_lean.parse(argv) is None
    assert nodectl_lean.run_exec(argv) is None


CONFIG = 'server = "https://127.0.0.1:1"\nca = "C"\nclient_cert = "X"\nclient_key = "K"\n'


@pytest.mark.parametrize(
    ("text", "no_session", "taken"),
    [
        (CONFIG + "session_idle_timeout_s = 0\n", False, True),
        (CONFIG, True, True),  # --no-session
        (CONFIG, False, False),  # sessions on: the full client runs it and starts one
        (CONFIG + "session_idle_timeout_s = 600\n", False, False),
        (CONFIG + "session_idle_timeout_s = false\n", False, False),
        (CONFIG.replace('"https://127.0.0.1:1"', '["https://a", "https://b"]'), True, False),
        (CONFIG.replace("127.0.0.1:1", "a,https://b"), True, False),
        (CONFIG.replace("https://", "http://"), True, False),
        (CONFIG + "color = 1\n", True, False),  # a key the full client refuses, with words
        ('server = "https://m"\n', True, False),
        ("not toml [", True, False),
    ],
)
def test_only_a_simple_config_with_sessions_off_is_taken(
    tmp_path: Path, text: str, no_session: bool, taken: bool
) -> None:
    config = tmp_path / "config"
    config.write_text(text)
    try:
        nodectl_lean._config(str(config), no_session)
    except nodectl_lean._NotTaken:
        assert not taken
    else:
        assert taken


def test_a_missing_config_is_the_full_clients_to_explain(tmp_path: Path) -> None:
    with pytest.raises(nodectl_lean._NotTaken):
        nodectl_lean._config(str(tmp_path / "none"), True)


def test_no_master_is_the_full_clients_error_and_nothing_heavy_is_loaded_first(
    tmp_path: Path,
) -> None:
    """A master that cannot be reached: not taken (the full client reports it, as before),
    and deciding so loaded nothing the other commands would pay for."""
    config = tmp_path / "config"
    config.write_text(CONFIG + "session_idle_timeout_s = 0\n")
    probe = (
        "import sys\n"
        "from agent.cli import nodectl_lean\n"
        "assert nodectl_lean.run_exec(['--config', sys.argv[1], 'get', 'pods']) is None\n"
        "assert not {'ssl', 'asyncio', 'tomllib', 'typing'} & set(sys.modules), sys.modules\n"
        "print(nodectl_lean.run_exec(['--config', sys.argv[1], 'exec', 'p', '--', 'true']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "None\n"), done.stderr


def test_without_memory_files_the_full_client_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin's key goes to ssl through an anonymous memory file (Linux); elsewhere the
    full client, which has a 0600 temporary directory for it, runs the command."""
    config = tmp_path / "config"
    config.write_text(CONFIG + "session_idle_timeout_s = 0\n")
    nodectl_lean._config(str(config), False)
    monkeypatch.delattr("os.memfd_create")
    with pytest.raises(nodectl_lean._NotTaken):
        nodectl_lean._config(str(config), False)
