"""sd_notify datagrams as systemd reads them, STATUS= escaping, the token bucket (pure)."""

from __future__ import annotations

import pytest

from agent.node.notify.wire import (
    STATUS_MAX_CHARS,
    NotifyMessage,
    TokenBucket,
    escape_status,
    parse_datagram,
)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"READY=1", NotifyMessage(ready=True)),
        (b"READY=0", NotifyMessage()),
        (b"READY=1\nSTATUS=serving", NotifyMessage(ready=True, status="serving")),
        (b"STATUS=a=b\n", NotifyMessage(status="a=b")),  # the first '=' splits
        (b"STATUS=", NotifyMessage(status="")),
        (b"STATUS=one\nSTATUS=two", NotifyMessage(status="two")),  # the last one wins
        (b"WATCHDOG=1", NotifyMessage(watchdog=True)),
        (b"WATCHDOG=trigger", NotifyMessage(watchdog_trigger=True)),
        (b"STOPPING=1", NotifyMessage(stopping=True)),
        (b"RELOADING=1", NotifyMessage(reloading=True)),
        (b"MAINPID=42\nERRNO=2\nX_CUSTOM=1\nnonsense", NotifyMessage()),  # ignored, as systemd
        (b"ready=1", NotifyMessage()),  # keys are case-sensitive
        ("STATUS=caf\u00e9".encode(), NotifyMessage(status="caf\u00e9")),
    ],
)
def test_datagrams_as_systemd_reads_them(data: bytes, message: NotifyMessage) -> None:
    assert parse_datagram(data) == message


@pytest.mark.parametrize("data", [b"", b"READY=1\0", b"STATUS=\xff\xfe", b"\x00"])
def test_malformed_datagrams_are_refused_whole(data: bytes) -> None:
    assert parse_datagram(data) is None


def test_status_is_escaped_and_bounded() -> None:
    assert escape_status("ok") == "ok"
    assert escape_status("a\nb\tc\x1b[31m\\") == "a\\nb\\tc\\x1b[31m\\\\"
    assert escape_status("\u202eevil\u2028x\x85") == "\\u202eevil\\u2028x\\x85"
    long = escape_status("x" * 1000)
    assert long == "x" * STATUS_MAX_CHARS + "…"
    # An escape is never cut in half.
    cut = escape_status("x" * (STATUS_MAX_CHARS - 2) + "\x1b")
    assert cut == "x" * (STATUS_MAX_CHARS - 2) + "…"


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(10.0, 3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s(100.0) == pytest.approx(0.1)
    assert not bucket.take(100.05)
    assert bucket.take(100.1)
    assert not bucket.take(100.1)
    # Saved tokens never exceed the burst, however long the pause.
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]
    # A clock that goes back does not mint tokens.
    assert not bucket.take(50.0)
    assert bucket.wait_s(1000.0) > 0
