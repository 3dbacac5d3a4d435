"""agent.doctor.host: the probes look without changing anything: a port's holder, a directory
that may not exist, a Unix socket's server, the systemd unit (a real ``systemctl``-shaped
program on the test's PATH)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from agent.doctor import host


def test_a_free_port_is_free_and_stays_unbound() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = host.probe_port("127.0.0.1", port)
    assert state.free and state.address == f"127.0.0.1:{port}"
    with socket.socket() as again:  # doctor's bind was closed: the port is still ours to take
        again.bind(("127.0.0.1", port))


def test_a_listening_port_names_its_process() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        state = host.probe_port("127.0.0.1", port)
    assert not state.free and not state.problem
    assert state.pid == os.getpid()
    assert state.held_by(("python",)) and not state.held_by(("node-agent",))  # this process
    assert state.holder.startswith(f"pid {os.getpid()} (")


def test_a_wildcard_listener_holds_the_loopback_port_too() -> None:
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen()
        port = server.getsockname()[1]
        state = host.probe_port("127.0.0.1", port)
    assert not state.free and state.pid == os.getpid()


def test_an_address_not_on_this_host_is_a_problem() -> None:
    state = host.probe_port("192.0.2.1", 10248)  # TEST-NET-1
    assert not state.free and "not an address of this host" in state.problem
    assert "cannot resolve" in host.probe_port("no-such-host.invalid", 1).problem


def test_an_absent_directory_is_judged_by_its_parent_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    state = host.probe_dir(path)
    assert not state.exists and state.where == tmp_path and state.is_dir and state.writable
    assert state.free_bytes > 0
    assert not (tmp_path / "a").exists()


def test_directory_mode_and_file_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    assert host.probe_dir(tmp_path).mode == 0o755
    key = tmp_path / "k"
    key.write_bytes(b"")
    key.chmod(0o640)
    assert host.file_mode(key) == 0o640
    assert host.file_mode(tmp_path / "absent") is None


def test_unix_socket_states(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    assert host.probe_unix_socket(path) == "absent"
    path.write_text("")
    assert host.probe_unix_socket(path) == "not-a-socket"
    path.unlink()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        assert host.probe_unix_socket(path) == "served"
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert host.probe_unix_socket(path) == "stale"


def fake_systemctl(tmp_path: Path, output: str) -> tuple[str, ...]:
    """A program shaped like ``systemctl show`` (prints properties, records its arguments)."""
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\ncat <<'EOF'\n{output}EOF\n")
    script.chmod(0o755)
    return (str(script),)


ACTIVE = (
    "LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n"
    "WatchdogUSec=30s\nNRestarts=2\n"
)


async def test_unit_state_reads_systemctl_show(tmp_path: Path) -> None:
    state = await host.unit_state("node-agent", fake_systemctl(tmp_path, ACTIVE))
    assert state is not None and state.get("WatchdogUSec") == "30s"
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["show", "node-agent"] and args[2].startswith("--property=LoadState,")
    result = host.judge_unit("systemd", "node-agent", state, under_systemd=False)
    assert result.ok
    assert result.detail == (
        "node-agent: active (running), enabled, restarted 2 times, watchdog 30s"
    )


async def test_no_systemctl_is_none(tmp_path: Path) -> None:
    assert await host.unit_state("node-agent", (str(tmp_path / "absent"),)) is None


@pytest.mark.parametrize(
    ("changes", "ok", "words"),
    [
        ({"ActiveState": "failed", "SubState": "failed"}, False, "journalctl -u node-agent"),
        ({"ActiveState": "inactive", "SubState": "dead"}, False, "systemctl enable --now"),
        ({"WatchdogUSec": "0"}, False, "WatchdogSec="),
        ({"LoadState": "not-found"}, True, "no node-agent unit"),
    ],
)
def test_unit_judgement(changes: dict[str, str], ok: bool, words: str) -> None:
    properties = dict(line.split("=", 1) for line in ACTIVE.splitlines())
    result = host.judge_unit(
        "systemd", "node-agent", host.UnitState({**properties, **changes}), under_systemd=True
    )
    assert result.ok is ok
    assert words in (result.fix if not ok else result.detail)


def test_expiry_text() -> None:
    from agent.pki.core import create_ca

    _, ca = create_ca()
    assert host.expiry_text(ca).startswith("valid until ")
    assert 3649 < host.days_left(ca) <= 3650 and host.lifetime_days(ca) > 3650
