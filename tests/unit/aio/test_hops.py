"""Per-hop stamps (agent/aio/hops.py): off unless the variable names a directory; when on,
small messages are stamped into a file the bench reads back, large ones are not, and a full
file stops stamping instead of growing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.aio import hops
from agent.aio.hops import HopRecorder, Point, Side


def test_off_unless_the_variable_names_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hops.ENV_VAR, raising=False)
    assert hops._from_env() is None
    monkeypatch.setenv(hops.ENV_VAR, "")
    assert hops._from_env() is None


def test_small_messages_stamped_in_order_large_ones_not(tmp_path: Path) -> None:
    recorder = HopRecorder(str(tmp_path))
    before = time.monotonic_ns()
    recorder.mark(Point.TLS_READ, Side.SERVER, 10)
    recorder.mark(Point.POD_WRITE, Side.NONE, hops.SMALL_BYTES + 1)  # bulk: not stamped
    recorder.mark(Point.POD_WRITE, Side.NONE, 1)
    records = hops.read_records(str(tmp_path / f"{os.getpid()}.hops"))
    assert [(p, s, n) for _, p, s, n in records] == [
        (Point.TLS_READ, Side.SERVER, 10),
        (Point.POD_WRITE, Side.NONE, 1),
    ]
    assert before <= records[0][0] <= records[1][0] <= time.monotonic_ns()
    assert (tmp_path / f"{os.getpid()}.hops").stat().st_mode & 0o777 == 0o600


def test_a_full_file_stops_stamping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hops, "CAPACITY_RECORDS", 3)
    recorder = HopRecorder(str(tmp_path))
    for _ in range(5):
        recorder.mark(Point.LOCAL_READ, Side.NONE, 1)
    path = tmp_path / f"{os.getpid()}.hops"
    assert path.stat().st_size == 3 * hops.RECORD.size
    assert len(hops.read_records(str(path))) == 3
