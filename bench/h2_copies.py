"""What HTTP/2 framing costs per byte: our multiplexer on stock h2 against the same multiplexer
with ``agent/proto/h2lean.py`` (h2 without its per-byte copies).

Run: ``.venv/bin/python bench/h2_copies.py [--mib 1024] [--rounds 3]``

In one process, a client ``StreamMux`` sends ``--mib`` MiB on one stream to a server
``StreamMux`` in writes of 256 KiB and of 1 MiB (frames up to 256 KiB, as our servers
advertise); the server's input is cut into 256 KiB reads that do not line up with frames, as a
TLS transport delivers them, and it returns credit as it consumes. The CPU time of the two
multiplexers' calls (sending, receiving, credit) per byte is reported, stock h2 and lean
alternating in each round, medians of ``--rounds``; glibc malloc is tuned as in our daemons
(``agent.aio.malloc``). No sockets and no TLS: this is the HTTP/2 share of a relay's CPU only,
bounded by ``--mib``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.aio.malloc import tune_malloc
from agent.proto import h2lean, h2mux

READ_BYTES = (256 << 10) - 7  # off the frame grid on purpose
REQUEST = ((":method", "POST"), (":scheme", "https"), (":authority", "node"), (":path", "/x"))


def _mux(client_side: bool, lean: bool) -> h2mux.StreamMux:
    supported = h2lean.SUPPORTED
    h2lean.SUPPORTED = lean  # new_connection picks the class at construction
    try:
        return h2mux.StreamMux(client_side=client_side)
    finally:
        h2lean.SUPPORTED = supported


def _feed(mux: h2mux.StreamMux, pieces: list[bytes]) -> list[h2mux.Event]:
    wire = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    events: list[h2mux.Event] = []
    for start in range(0, len(wire), READ_BYTES):
        events += mux.receive_data(wire[start : start + READ_BYTES], 0.0)
    return events


def ns_per_byte(lean: bool, total_bytes: int, write_bytes: int) -> float:
    client, server = _mux(True, lean), _mux(False, lean)
    client.initiate()
    server.initiate()
    for _ in range(3):  # preface and SETTINGS both ways
        _feed(server, client.pending_output() or [b""])
        _feed(client, server.pending_output() or [b""])
    stream_id = client.open_stream(REQUEST)
    payload = os.urandom(write_bytes)
    moved = 0
    cpu_s = 0.0
    while moved < total_bytes:
        start = time.process_time()
        client.send_data(stream_id, payload, 0.0)
        wire = client.pending_output()
        cpu_s += time.process_time() - start
        # The join that stands in for the kernel is not ours: outside the timed part.
        joined = [b"".join(wire)]
        start = time.process_time()
        for event in _feed(server, joined):
            if isinstance(event, h2mux.DataReceived):
                server.consumed(event.stream_id, event.flow_controlled_length)
                moved += len(event.data)
        for piece in server.pending_output():
            client.receive_data(piece, 0.0)
        cpu_s += time.process_time() - start
    return cpu_s / moved * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not h2lean.SUPPORTED:
        print("h2lean does not support the installed h2/hyperframe; nothing to compare")
        return 1
    tune_malloc()
    total = args.mib << 20
    for write_bytes in (256 << 10, 1 << 20):
        results: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for lean in (False, True):
                results[lean].append(ns_per_byte(lean, total, write_bytes))
        stock, lean = statistics.median(results[False]), statistics.median(results[True])
        print(
            f"writes of {write_bytes >> 10:5d} KiB: stock h2 {stock:.3f} ns/B "
            f"{[round(x, 3) for x in results[False]]}, lean {lean:.3f} ns/B "
            f"{[round(x, 3) for x in results[True]]}; lean costs x{lean / stock:.2f} of stock"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
