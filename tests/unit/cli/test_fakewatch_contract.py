"""The fake master's watch (tests/unit/cli/fakewatch.py) held to the watch wire contract
(tests/contracts/watch_wire.py) that the real master keeps in tests/integration; and the watch
over it: a resume after a drop misses nothing, a compaction relists."""

from __future__ import annotations

import io

from agent.cli import nodectl_watch as nw
from tests.contracts.watch_wire import check_watch_wire
from tests.unit.cli.fakewatch import FakeWatchMaster, fake_pod


def test_the_fake_keeps_the_watch_wire_contract() -> None:
    check_watch_wire(FakeWatchMaster(), "fake")


def rows(out: io.StringIO) -> list[list[str]]:
    return [line.split()[:4] for line in out.getvalue().splitlines()]


def test_over_the_fake_a_drop_resumes_and_a_compaction_relists() -> None:
    master = FakeWatchMaster()
    master.create("a")
    master.create("b")
    out, err = io.StringIO(), io.StringIO()
    printer = nw.Printer(nw.Rendering(kind="pods", output="table", watch_events=True), out, err)
    watcher = nw.Watcher(master.transport(), printer, "default", err=err, sleep=lambda s: None)
    watcher.max_connections = 1
    watcher.run()
    assert rows(out) == [
        ["EVENT", "NAME", "READY", "STATUS"],
        ["ADDED", "a", "0/1", "Pending"],
        ["ADDED", "b", "0/1", "Pending"],
    ]
    # While the watch is away: a runs, b goes; then a refused connection, one that breaks
    # after bringing the changes, and one that finds nothing new.
    master.put(fake_pod("a", "default", "Running"))
    master.remove("b")
    master.faults = ["refuse", "break", None]
    watcher.max_connections = 3
    watcher.run()
    assert [p.split("resourceVersion=")[1].split("&")[0] for p in master.paths[1:]] == [
        "2",
        "2",
        "4",
    ]
    assert rows(out)[3:] == [
        ["MODIFIED", "a", "0/1", "Running"],
        ["DELETED", "b", "0/1", "Pending"],
    ]
    assert err.getvalue().count("reconnecting") == 2  # two outages, one line each
    # Compacted while away: the watch relists and prints only what differs.
    master.create("c")
    master.compact()
    master.remove("a")
    watcher.max_connections = 2
    watcher.run()
    assert "sendInitialEvents=true" in master.paths[-1]
    assert rows(out)[5:] == [["ADDED", "c", "0/1", "Pending"], ["DELETED", "a", "0/1", "Running"]]
