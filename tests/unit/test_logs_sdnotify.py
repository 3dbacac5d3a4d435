"""Structured log lines (kv and JSON, one line per event) and the sd_notify datagrams."""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path

import pytest

from agent.aio.logs import kv, setup_logging, shutdown_logging
from agent.aio.sdnotify import SystemdNotifier


def emit(fmt: str, *args: object, exc: bool = False, **fields: object) -> str:
    stream = io.StringIO()
    setup_logging(fmt, "debug", stream)
    log = logging.getLogger("agent.test")
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed", extra=kv(**fields))
    else:
        log.info(*args, extra=kv(**fields))  # type: ignore[arg-type]
    shutdown_logging()
    return stream.getvalue()


def test_kv_format_quotes_only_when_needed() -> None:
    line = emit("kv", "pod started", pod="default/web", attempt=2, note='say "hi"', empty="")
    assert line.endswith("\n") and line.count("\n") == 1
    assert 'level=info logger=agent.test msg="pod started" pod=default/web attempt=2' in line
    assert r'note="say \"hi\""' in line
    assert 'empty=""' in line
    assert line.startswith("ts=")


def test_json_format_and_exceptions_on_one_line() -> None:
    line = emit("json", exc=True, pod="p")
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["msg"] == "failed" and record["pod"] == "p" and record["level"] == "error"
    assert "ValueError: boom" in record["exc"]
    kv_line = emit("kv", exc=True)
    assert kv_line.count("\n") == 1 and "exc=" in kv_line


def test_reserved_keys_are_not_overwritten() -> None:
    record = json.loads(emit("json", "x", msg="field"))
    assert record["msg"] == "x" and record["field_msg"] == "field"


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_datagrams(tmp_path: Path, abstract: bool) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"node-agent-test-{id(tmp_path)}"
        server.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        server.bind(address)
    server.settimeout(2)
    with server:
        notifier = SystemdNotifier(address)
        assert notifier.ready("running 3 pods")
        assert server.recv(4096) == b"READY=1\nSTATUS=running 3 pods"
        assert notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert server.recv(4096) == b"STOPPING=1"


def test_sd_notify_without_socket_or_dead_socket(tmp_path: Path) -> None:
    assert SystemdNotifier(None).ready() is False
    assert SystemdNotifier(str(tmp_path / "gone.sock")).watchdog() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert SystemdNotifier(None).watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert SystemdNotifier(None).watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert SystemdNotifier(None).watchdog_interval_s() is None
