"""``node-agent images``' text output: one row per image with its verdict, the fs line."""

from __future__ import annotations

import io

from agent.cli import node_images

REPORT = {
    "dryRun": False,
    "usageBefore": {"capacityBytes": 400_000_000, "usedBytes": 360_000_000, "percent": 90.0},
    "usageAfter": {"capacityBytes": 400_000_000, "usedBytes": 300_000_000, "percent": 75.0},
    "freedBytes": 60_000_000,
    "images": [
        {
            "id": "sha256:" + "a" * 64,
            "tags": ["gc/old0:1"],
            "sizeBytes": 25_000_000,
            "lastUsed": "2026-12-03T06:00:00Z",
            "delete": True,
            "reason": "disk-usage",
            "detail": "usage 90.0% >= 85%, least recently used",
            "result": "deleted",
        },
        {
            "id": "sha256:" + "b" * 64,
            "tags": [],
            "sizeBytes": 700,
            "lastUsed": "2026-12-03T06:01:00Z",
            "delete": True,
            "reason": "disk-usage",
            "detail": "",
            "result": "refused: reserved: reserved by pod uid-1",
        },
        {
            "id": "sha256:" + "c" * 64,
            "tags": ["node-agent/pause:0.1"],
            "sizeBytes": 700,
            "lastUsed": "2026-12-03T06:02:00Z",
            "delete": False,
            "reason": "sandbox",
            "detail": "node-agent/pause:0.1",
            "result": "",
        },
    ],
}


def test_a_run_shows_each_result_and_the_usage_before_and_after() -> None:
    out = io.StringIO()
    node_images.render(REPORT, ran=True, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "SIZE", "LAST", "USED", "GC", "WHY"]
    assert lines[1].split()[:5] == [
        "gc/old0:1",
        "aaaaaaaaaaaa",
        "25.0MB",
        "2026-12-03T06:00:00Z",
        "deleted",
    ]
    assert "<none>" in lines[2] and "refused: reserved: reserved by pod uid-1" in lines[2]
    assert "keep" in lines[3] and "sandbox: node-agent/pause:0.1" in lines[3]
    assert (
        lines[4]
        == "image fs: 90.0% (360.0MB of 400.0MB) -> 75.0% (300.0MB of 400.0MB), freed 60.0MB"
    )


def test_a_listing_shows_the_plan() -> None:
    out = io.StringIO()
    node_images.render(REPORT, ran=False, out=out)
    lines = out.getvalue().splitlines()
    assert lines[1].split()[4] == "delete"
    assert lines[-1] == "image fs: 90.0% (360.0MB of 400.0MB)"
