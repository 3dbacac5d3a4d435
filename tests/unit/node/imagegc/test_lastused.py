"""The persisted last-used record: round trip, 0600, and anything unreadable is empty (never
an image made older than it is)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.node.imagegc.lastused import LastUsedStore, parse_usage
from agent.node.imagegc.planner import Usage


def test_round_trip_and_mode(tmp_path: Path) -> None:
    store = LastUsedStore(tmp_path / "state" / "image-usage.json")
    assert store.load() == {}
    record = {"sha256:a": Usage(1.5, 2.5), "sha256:b": Usage(3.0, 4.0)}
    store.save(record)
    assert store.load() == record
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in store.path.parent.iterdir()] == ["image-usage.json"]  # no temp left


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        json.dumps({"version": 2, "images": {}}).encode(),
        json.dumps({"version": 1, "images": []}).encode(),
        json.dumps(
            {"version": 1, "images": {"x": {"firstSeen": "yesterday", "lastUsed": 1}}}
        ).encode(),
        json.dumps({"version": 1, "images": {"x": {"firstSeen": True, "lastUsed": 1}}}).encode(),
        b'{"version": 1, "images": {"x": {"firstSeen": 1, "lastUsed": NaN}}}',
        b"\xff\xfe",
        b"[" * 200_000,  # RecursionError in json.loads, not a ValueError: it escaped the load
    ],
)
def test_an_unusable_record_is_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "image-usage.json"
    path.write_bytes(content)
    assert LastUsedStore(path).load() == {}


def test_parse_names_the_offending_field() -> None:
    with pytest.raises(ValueError, match=r"images\['x'\]\.lastUsed: expected a number"):
        parse_usage({"version": 1, "images": {"x": {"firstSeen": 1, "lastUsed": None}}})
