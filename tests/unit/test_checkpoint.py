"""Checkpoint atomicity: a crash at any point leaves the old or the new file, never a torn one."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.errors import CheckpointCorruptError, CheckpointError
from agent.node.pods.checkpoint import CheckpointStore


class SimulatedCrash(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even except-Exception handlers."""


def test_round_trip_and_absent(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state" / "checkpoint.json")
    assert store.load() is None
    store.save({"pods": {"u": {"x": 1}}})
    assert store.load() == {"pods": {"u": {"x": 1}}}
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


def test_crash_between_write_and_rename_keeps_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.json")
    store.save({"generation": 1})

    def crash(src: object, dst: object) -> None:
        raise SimulatedCrash

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SimulatedCrash):
        store.save({"generation": 2})
    monkeypatch.undo()
    assert store.load() == {"generation": 1}
    # The torn temp file of the crashed write is ignored, and the next save overwrites it.
    store.save({"generation": 3})
    assert store.load() == {"generation": 3}


def test_disk_full_keeps_old_and_cleans_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.json")
    store.save({"generation": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="ENOSPC"):
        store.save({"generation": 2})
    monkeypatch.undo()
    assert store.load() == {"generation": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]


def test_read_only_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.json")
    store.save({"generation": 1})
    real_open = os.open

    def read_only(path: object, flags: int, *args: object) -> int:
        if flags & os.O_WRONLY:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(CheckpointError, match="EROFS"):
        store.save({"generation": 2})
    monkeypatch.undo()
    assert store.load() == {"generation": 1}


def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    CheckpointStore(tmp_path / "checkpoint.json").save({"a": 1})
    assert len(synced) == 2
    assert ".checkpoint.json.tmp-" in synced[0]
    assert synced[1] == str(tmp_path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{trunc", "not valid JSON"),
        (b"[1, 2]", "not a checkpoint envelope"),
        (json.dumps({"version": 9, "checksum": "", "data": {}}).encode(), "unknown version"),
        (
            json.dumps({"version": 1, "checksum": "sha256:00", "data": {"a": 1}}).encode(),
            "checksum mismatch",
        ),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_corrupt_file_is_moved_aside(tmp_path: Path, content: bytes, problem: str) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.json")
    store.path.write_bytes(content)
    with pytest.raises(CheckpointCorruptError, match=problem) as info:
        store.load()
    [aside] = tmp_path.glob("checkpoint.json.corrupt-*")
    assert aside.read_bytes() == content
    assert str(aside) in str(info.value)
    assert store.load() is None


def test_edited_data_detected(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.json")
    store.save({"pods": {"a": 1}})
    envelope = json.loads(store.path.read_text())
    envelope["data"]["pods"]["a"] = 2
    store.path.write_text(json.dumps(envelope))
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch"):
        store.load()


def test_disk_full_during_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.json")
    store.save({"generation": 1})
    real_write = os.write

    def short_then_full(fd: int, data: bytes) -> int:
        # The first call writes a little, as a nearly full disk does, then the disk is full.
        monkeypatch.setattr(os, "write", full)
        return real_write(fd, bytes(data[:3]))

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(CheckpointError) as info:
        store.save({"generation": 2})
    monkeypatch.undo()
    assert "ENOSPC" in str(info.value) and str(store.path) in str(info.value)
    assert store.load() == {"generation": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]


def test_data_that_is_not_an_object_is_corrupt(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.json")
    data = [1, 2]
    checksum = (
        "sha256:" + hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()
    )
    store.path.write_text(json.dumps({"version": 1, "checksum": checksum, "data": data}))
    with pytest.raises(CheckpointCorruptError, match="data is not an object"):
        store.load()


def test_two_corrupt_files_are_both_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.json")
    for content in (b"first", b"second"):
        store.path.write_bytes(content)
        with pytest.raises(CheckpointCorruptError):
            store.load()
    kept = sorted(p.read_bytes() for p in tmp_path.glob("checkpoint.json.corrupt-*"))
    assert kept == [b"first", b"second"]


def test_concurrent_saves_never_tear(tmp_path: Path) -> None:
    """The daemon's thread bridge may run two saves at once; the file is always one of them."""
    store = CheckpointStore(tmp_path / "checkpoint.json")
    payloads = [{"writer": n, "blob": str(n) * (64 * 1024 + n)} for n in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(store.save, payloads * 4))
    assert store.load() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]
