"""``agent.aio.private``: the daemons' umask, and the start-up check that tightens a data
directory's loosened paths and names each one in a warning."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from agent.aio.private import PRIVATE_UMASK, restrict_umask, tighten_tree


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_restrict_umask_sets_077_and_returns_the_old_one() -> None:
    before = os.umask(0o022)
    try:
        assert restrict_umask() == 0o022
        assert os.umask(0o022) == PRIVATE_UMASK == 0o077
    finally:
        os.umask(before)


def test_loosened_paths_are_tightened_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    (root / "pki").mkdir(parents=True, mode=0o755)
    root.chmod(0o755)
    (root / "pki").chmod(0o755)
    for name, file_mode in (("store.db", 0o644), ("pki/ca.key", 0o640), ("master.toml", 0o600)):
        (root / name).write_text("x")
        (root / name).chmod(file_mode)
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)
    (root / "pods" / "uid" / "volumes").mkdir(parents=True)
    (root / "pods").chmod(0o755)
    (root / "pods" / "uid" / "volumes").chmod(0o777)

    with caplog.at_level(logging.WARNING, logger="agent.aio.private"):
        loosened = tighten_tree(root, skip=("pods",))

    assert sorted(loosened) == sorted([root, root / "pki", root / "store.db", root / "pki/ca.key"])
    assert (mode(root), mode(root / "pki")) == (0o700, 0o700)
    assert {mode(root / n) for n in ("store.db", "pki/ca.key", "master.toml")} == {0o600}
    assert mode(outside) == 0o644  # a link is not followed
    assert (mode(root / "pods"), mode(root / "pods/uid/volumes")) == (0o755, 0o777)
    named = [r for r in caplog.records if r.getMessage().startswith("private path was readable")]
    assert len(named) == 4
    fields = {r.fields["path"]: r.fields["mode"] for r in named}  # type: ignore[attr-defined]
    assert fields[str(root / "store.db")] == "0o644" and fields[str(root)] == "0o755"
    assert tighten_tree(root, skip=("pods",)) == []  # private now: nothing to say


def test_a_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    assert tighten_tree(tmp_path / "absent") == []
