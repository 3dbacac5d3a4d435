"""Anonymous registrations under ``approval`` at volume against a real master process (real TLS
on loopback) from two source addresses: the waiting queue stops at its cap, the excess gets 429
with Retry-After, the store stays small, and waiting requests expire (issue 14, item 3)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from agent.pki.core import build_csr, generate_key
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from tests.helpers import MasterProcess, wait_for

MakeMaster = Callable[..., MasterProcess]

SOURCES = ("127.0.0.2", "127.0.0.3")  # loopback addresses on Linux: the client binds to them
REQUESTS_PER_SOURCE = 1000
CONCURRENCY_PER_SOURCE = 8
CAP = 50
RATE_PER_S = 5.0  # the default
BURST = 40
FLOOD_DEADLINE_S = 180.0  # no new request after it
REQUEST_TIMEOUT_S = 30.0
# docs/security.md: with CAP requests of this size waiting, store.db and its WAL stay under this.
STORE_LIMIT_BYTES = 4 * 1024 * 1024
LABELS = {f"example.com/label-{n}": "v" * 63 for n in range(16)}  # ~1.7 KiB a request


def body(n: int, source: str) -> bytes:
    name = f"flood-{source.rsplit('.', 1)[-1]}-{n}"
    csr = build_csr(generate_key(), NODE_CN_PREFIX + name, [NODES_GROUP], [name]).decode()
    return json.dumps(
        {"nodeName": name, "csr": csr, "labels": LABELS, "addresses": [source], "hostname": name}
    ).encode()


async def flood(url: str, ca_file: Path, source: str, deadline: float) -> list[tuple[int, Any]]:
    """REQUESTS_PER_SOURCE registrations from ``source``; (status, Retry-After or the body)."""
    tls = ssl.create_default_context(cafile=str(ca_file))
    connector = aiohttp.TCPConnector(ssl=tls, local_addr=(source, 0), limit=CONCURRENCY_PER_SOURCE)
    answers: list[tuple[int, Any]] = []
    queue = list(range(REQUESTS_PER_SOURCE))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue and time.monotonic() < deadline:
            payload = body(queue.pop(), source)
            async with session.post(
                f"{url}/v1/registrations",
                data=payload,
                headers={"Content-Type": "application/json"},
            ) as resp:
                data = await resp.json(content_type=None)
                if resp.status == 429:
                    answers.append((429, (resp.headers.get("Retry-After"), data)))
                else:
                    answers.append((resp.status, data))

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY_PER_SOURCE)))
    return answers


def waiting(master: MasterProcess) -> int:
    return sum(n["status"]["registration"]["phase"] == "Pending" for n in master.nodes().values())


def store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("store.db*"))


def test_a_registration_flood_is_bounded_and_expires(make_master: MakeMaster) -> None:
    master = make_master()
    limits: dict[str, Any] = {
        "trust": ["approval"],
        "max_pending_registrations": CAP,
        "registration_rate_per_s": RATE_PER_S,
        "registration_burst": BURST,
    }
    master.configure(**limits)
    master.start()
    before = store_bytes(master.root)
    deadline = time.monotonic() + FLOOD_DEADLINE_S

    async def both() -> list[list[tuple[int, Any]]]:
        ca = master.root / "pki" / "ca.crt"
        floods = asyncio.gather(*(flood(master.url, ca, s, deadline) for s in SOURCES))
        return await asyncio.wait_for(floods, FLOOD_DEADLINE_S + REQUEST_TIMEOUT_S)

    answers = [a for per_source in asyncio.run(both()) for a in per_source]
    assert len(answers) == 2 * REQUESTS_PER_SOURCE, "the flood did not finish in time"
    statuses = Counter(status for status, _ in answers)
    assert statuses == {202: CAP, 429: 2 * REQUESTS_PER_SOURCE - CAP}, statuses
    for _, (retry_after, error) in (a for a in answers if a[0] == 429):
        assert retry_after is not None and int(retry_after) >= 1, retry_after
        assert error["error"]["code"] == 429 and error["error"]["message"], error
    reasons = Counter(
        "rate" if "too many registration requests" in a[1][1]["error"]["message"] else "queue"
        for a in answers
        if a[0] == 429
    )
    assert reasons["rate"] > 0 and reasons["queue"] > 0, reasons  # both limits were hit
    assert waiting(master) == CAP
    size = store_bytes(master.root)
    print(f"store: {before} bytes before, {size} after")
    assert size < STORE_LIMIT_BYTES, (before, size)

    # Waiting requests expire: a short time-to-live (reloaded with SIGHUP) empties the queue.
    master.configure(**limits, pending_registration_ttl_s=1.0)
    master.sighup()
    wait_for(lambda: waiting(master) == 0, what="waiting registrations expired", timeout_s=30)
    assert master.nodes() == {}
