"""Structured log lines: kv and JSON, quoting, one line per event, idempotent set-up."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.aio.logs import kv, setup_logging, shutdown_logging

log = logging.getLogger("agent.node.pods.worker")


@pytest.fixture(autouse=True)
def _stop_logging() -> Iterator[None]:
    yield
    shutdown_logging()


def capture(fmt: str, emit: object, level: str = "debug") -> list[str]:
    """Lines written while ``emit()`` runs; shutdown_logging() flushes the listener."""
    stream = io.StringIO()
    setup_logging(fmt, level, stream)
    assert callable(emit)
    emit()
    shutdown_logging()
    text = stream.getvalue()
    assert text.endswith("\n") or text == ""
    return text.splitlines()


def raise_and_log(**fields: object) -> None:
    try:
        raise ValueError('boom\nsecond line "quoted"')
    except ValueError:
        log.exception("pod failed", extra=kv(**fields))


def test_kv_line_layout() -> None:
    [line] = capture(
        "kv", lambda: log.info("pod started", extra=kv(pod="default/web", uid="1234", attempt=2))
    )
    assert re.fullmatch(
        r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info logger=agent\.node\.pods\.worker "
        r'msg="pod started" pod=default/web uid=1234 attempt=2',
        line,
    ), line


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("plain", "plain"),
        ("with space", '"with space"'),
        ('say "hi"', r'"say \"hi\""'),
        ("a=b", '"a=b"'),
        ("", '""'),
        ("two\nlines", r'"two\nlines"'),
        ("back\\slash", r'"back\\slash"'),
        ("esc\x1b[31mred", r'"esc\u001b[31mred"'),
        ("car\rriage", r'"car\rriage"'),
        ("ünïcode", "ünïcode"),
        (7, "7"),
        (1.5, "1.5"),
        (True, "true"),
        (None, "null"),
        (Path("/var/lib/node-agent"), "/var/lib/node-agent"),
        (["a", "b"], r'"[\"a\", \"b\"]"'),
    ],
)
def test_kv_quotes_only_when_needed(value: object, rendered: str) -> None:
    [line] = capture("kv", lambda: log.info("x", extra=kv(v=value)))
    assert line.endswith(f" v={rendered}"), line


def test_kv_message_with_args_and_quotes() -> None:
    [line] = capture("kv", lambda: log.warning('pod %s said "%s"', "web", "no"))
    assert "level=warning" in line
    assert r'msg="pod web said \"no\""' in line


def test_json_line_has_the_same_keys_in_order() -> None:
    [line] = capture(
        "json",
        lambda: log.info("pod started", extra=kv(pod="default/web", attempt=2, path=Path("/x"))),
    )
    record = json.loads(line)
    assert list(record) == ["ts", "level", "logger", "msg", "pod", "attempt", "path"]
    assert record["msg"] == "pod started" and record["attempt"] == 2 and record["path"] == "/x"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_exception_stays_on_one_line(fmt: str) -> None:
    [line] = capture(fmt, lambda: raise_and_log(pod="p"))
    if fmt == "json":
        record = json.loads(line)
        assert record["level"] == "error" and record["pod"] == "p"
        assert record["exc"].startswith("Traceback")
        assert 'ValueError: boom\nsecond line "quoted"' in record["exc"]
    else:
        assert line.startswith("ts=") and ' pod=p exc="Traceback' in line
        assert r'ValueError: boom\nsecond line \"quoted\""' in line


def test_stack_info_stays_on_one_line() -> None:
    [line] = capture("json", lambda: log.info("here", stack_info=True))
    assert "test_stack_info_stays_on_one_line" in json.loads(line)["stack"]


def test_reserved_keys_are_not_overwritten() -> None:
    [line] = capture("json", lambda: log.info("x", extra=kv(msg="field", level="nope")))
    record = json.loads(line)
    assert record["msg"] == "x" and record["field_msg"] == "field"
    assert record["level"] == "info" and record["field_level"] == "nope"


def test_level_filters() -> None:
    def emit() -> None:
        log.debug("hidden")
        log.info("shown")

    lines = capture("kv", emit, level="info")
    assert len(lines) == 1 and "msg=shown" in lines[0]


def test_setup_twice_replaces_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("kv", "info", first)
    setup_logging("json", "info", second)
    assert len(logging.getLogger().handlers) == 1
    log.info("once")
    shutdown_logging()
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "once"
    # Shut down: the queue handler is gone too, so nothing piles up unread.
    assert logging.getLogger().handlers == []


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="'xml'"):
        setup_logging("xml", "info", io.StringIO())
