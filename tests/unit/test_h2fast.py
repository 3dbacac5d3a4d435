"""The small-DATA fast path (agent/proto/h2lean.py ``receive_data_frames``, ``send_small_data``,
``acknowledge_quietly``; agent/proto/h2mux.py): it must be exactly h2's behaviour, only
cheaper. Every test runs the same operations on a pair of multiplexers with the fast path and
on a pair without it (``_lean = None``: everything through h2) and requires the same bytes on
the wire, the same events and the same flow-control state, with fast-path and h2-path frames
mixed in one connection (small and large writes, reads cut inside frames, windows running
out, WINDOW_UPDATEs, PINGs, END_STREAM, resets, data for closed streams)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hyperframe.frame import DataFrame, WindowUpdateFrame

from agent.errors import ProtocolViolation
from agent.proto import h2lean
from agent.proto.h2mux import DataReceived, Event, Limits, RequestReceived, StreamMux

REQUEST = ((":method", "POST"), (":scheme", "https"), (":authority", "node"), (":path", "/x"))
# Small stream windows: they run out and come back (WINDOW_UPDATE) many times in a run.
SMALL_WINDOWS = Limits(stream_window_bytes=3000, max_frame_bytes=16384)


class Pair:
    """A client and a server multiplexer back to back; ``fast=False`` turns the fast path
    off on both (every frame through h2, as before it existed)."""

    def __init__(self, *, fast: bool, limits: Limits | None = None) -> None:
        self.client = StreamMux(client_side=True, limits=limits)
        self.server = StreamMux(client_side=False, limits=limits)
        self.taken = 0  # reads the fast path took
        for mux in (self.client, self.server):
            if not fast:
                mux._lean = None
            elif mux._lean is not None:
                self._count(mux._lean)
        self.client.initiate()
        self.server.initiate()

    def _count(self, lean: h2lean.LeanH2Connection) -> None:
        original = lean.receive_data_frames

        def counted(data: bytes) -> list[tuple[int, bytes, int]] | None:
            frames = original(data)
            self.taken += frames is not None
            return frames

        lean.receive_data_frames = counted  # type: ignore[method-assign]


def _state(mux: StreamMux) -> Any:
    """What flow control and the stream states are, in h2 and in the multiplexer."""
    conn = mux._h2
    streams = {
        sid: (
            s.state_machine.state,
            vars(s._inbound_window_manager),
            s.outbound_flow_control_window,
            s._actual_content_length,
        )
        for sid, s in conn.streams.items()
    }
    return (
        conn.state_machine.state,
        vars(conn._inbound_flow_control_window_manager),
        conn.outbound_flow_control_window,
        streams,
        dict(mux._unacked),
        sorted(mux._open_streams),
        {sid: out.queued for sid, out in mux._outbound.items()},
        mux._data_unacknowledged,
    )


class Twin:
    """The same operations on a fast pair and a slow pair, compared after each one."""

    def __init__(self, seed: int, limits: Limits | None = None) -> None:
        self.rng = random.Random(seed)
        self.fast = Pair(fast=True, limits=limits)
        self.slow = Pair(fast=False, limits=limits)
        self.pairs = (self.fast, self.slow)
        self.unacked: dict[tuple[str, int], int] = {}  # (side, stream) -> not consumed yet
        self.received: dict[tuple[str, int], bytearray] = {}
        self.sent: dict[tuple[str, int], bytearray] = {}
        self.streams: list[int] = []
        self.ended: set[tuple[str, int]] = set()
        self.answered: set[int] = set()

    def each(self, op: Any) -> list[Any]:
        results = [op(pair) for pair in self.pairs]
        assert results[0] == results[1]
        assert _state(self.fast.client) == _state(self.slow.client)
        assert _state(self.fast.server) == _state(self.slow.server)
        return results

    def pump(self, cut: str) -> None:
        """Exchange until quiet; reads whole (as the transport gave them), cut at random
        points, or one per frame boundary the sender made."""
        for _ in range(200):
            moved = False
            for side, peer in (("client", "server"), ("server", "client")):
                wires = self.each(
                    lambda pair, side=side: b"".join(getattr(pair, side).pending_output())
                )
                wire = wires[0]
                if not wire:
                    continue
                moved = True
                for read in self._cuts(wire, cut):
                    events = self.each(
                        lambda pair, read=read, peer=peer: getattr(pair, peer).receive_data(
                            read, 0.0
                        )
                    )[0]
                    self._note(peer, events)
            if not moved:
                return
        raise AssertionError("the pair never went quiet")

    def _cuts(self, wire: bytes, cut: str) -> list[bytes]:
        if cut == "whole":
            return [wire]
        reads = []
        at = 0
        while at < len(wire):
            step = self.rng.choice([1, 5, 9, 10, 13, 100, 4000, len(wire)])
            reads.append(wire[at : at + step])
            at += step
        return reads

    def _note(self, side: str, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                key = (side, event.stream_id)
                self.unacked[key] = self.unacked.get(key, 0) + event.flow_controlled_length
                self.received.setdefault(key, bytearray()).extend(event.data)
            elif isinstance(event, RequestReceived):
                self.answered.add(event.stream_id)

    def step(self) -> None:
        rng = self.rng
        op = rng.choice(
            ["send"] * 6 + ["pump"] * 5 + ["consume"] * 3 + ["open", "end", "reset", "ping"]
        )
        live = [
            sid
            for sid in self.streams
            if ("client", sid) not in self.ended or ("server", sid) not in self.ended
        ]
        if op == "open" or len(live) < 2:
            if len(self.streams) < 4:
                sid = self.each(lambda pair: pair.client.open_stream(REQUEST))[0]
                self.streams.append(sid)
                self.pump("whole")
                self.each(lambda pair: pair.server.send_headers(sid, ((":status", "200"),)))
            return
        sid = rng.choice(live)
        side = rng.choice(["client", "server"])
        if op == "send" and (side, sid) not in self.ended:
            size = rng.choice([1] * 6 + [rng.randint(1, 200), rng.randint(1, 5000), 70_000])
            data = rng.randbytes(size)
            self.sent.setdefault((side, sid), bytearray()).extend(data)
            self.each(
                lambda pair: _quiet_violation(lambda: getattr(pair, side).send_data(sid, data, 0.0))
            )
        elif op == "consume":
            owed = self.unacked.get((side, sid), 0)
            if owed:
                amount = rng.randint(1, owed)
                self.unacked[(side, sid)] = owed - amount
                self.each(lambda pair: getattr(pair, side).consumed(sid, amount))
        elif op == "pump":
            self.pump(rng.choice(["whole", "cut"]))
        elif op == "end" and (side, sid) not in self.ended and rng.random() < 0.2:
            self.ended.add((side, sid))
            self.each(lambda pair: getattr(pair, side).end_stream(sid, 0.0))
        elif op == "reset" and rng.random() < 0.3:
            self.each(lambda pair: getattr(pair, side).reset_stream(sid))
            self.streams.remove(sid)
        elif op == "ping":
            self.each(lambda pair: getattr(pair, side).ping(b"12345678"))


def _quiet_violation(call: Any) -> str:
    """A send on a stream the peer reset is refused; both pairs must refuse it alike."""
    try:
        return repr(call())
    except ProtocolViolation as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("seed", range(12))
def test_fast_and_h2_paths_mixed_give_h2s_wire_events_and_windows(seed: int) -> None:
    twin = Twin(seed, SMALL_WINDOWS)
    for _ in range(400):
        twin.step()
    # Drain: everything consumed and delivered, then compare what each side got in order.
    for key, owed in list(twin.unacked.items()):
        side, sid = key
        if owed:
            twin.each(
                lambda pair, side=side, sid=sid, owed=owed: getattr(pair, side).consumed(sid, owed)
            )
    twin.pump("whole")
    assert twin.fast.taken > 20  # the fast path was exercised, not just allowed
    for (side, sid), got in twin.received.items():
        sender = "server" if side == "client" else "client"
        # What arrived is a prefix of what was sent, in order (a reset drops the rest).
        assert bytes(twin.sent[(sender, sid)]).startswith(bytes(got))


def test_a_one_byte_exchange_never_enters_h2s_frame_handling() -> None:
    """Interactive traffic: 1-byte messages both ways, consumed as they arrive. After the
    stream is set up, not one DATA frame goes through h2's receive_data or send_data, and the
    credit comes back in h2's own WINDOW_UPDATE batches (half a window)."""
    pair = Pair(fast=True, limits=Limits(stream_window_bytes=1000, max_frame_bytes=16384))
    twin_wire: list[bytes] = []
    sid = pair.client.open_stream(REQUEST)
    _exchange(pair)
    pair.server.send_headers(sid, ((":status", "200"),))
    _exchange(pair)
    calls = {"receive": 0, "send": 0}
    for mux in (pair.client, pair.server):
        h2conn = mux._h2
        real_receive, real_send = h2conn.receive_data, h2conn.send_data

        def receive(data: Any, real: Any = real_receive) -> Any:
            calls["receive"] += 1
            return real(data)

        def send(*args: Any, real: Any = real_send, **kw: Any) -> Any:
            calls["send"] += 1
            return real(*args, **kw)

        h2conn.receive_data = receive  # type: ignore[method-assign]
        h2conn.send_data = send  # type: ignore[method-assign]
    window_updates = 0
    for i in range(2000):
        sender, receiver = (pair.client, pair.server) if i % 2 == 0 else (pair.server, pair.client)
        assert sender.send_data(sid, b"k", 0.0)
        wire = b"".join(sender.pending_output())
        assert wire == DataFrame(sid, data=b"k").serialize()
        twin_wire.append(wire)
        events = receiver.receive_data(wire, 0.0)
        assert events == [DataReceived(sid, b"k", 1)]
        receiver.consumed(sid, 1)
        back = b"".join(receiver.pending_output())
        if back:  # h2's batch: connection and stream credit once half a window was consumed
            window_updates += 1
            assert sender.receive_data(back, 0.0) == []
    assert calls["send"] == 0
    # The only reads through h2 were the WINDOW_UPDATE batches (the stream's, every 500).
    assert calls["receive"] == window_updates == 2000 // 500


def test_a_window_overrun_is_h2s_flow_control_error_either_way() -> None:
    """A peer that sends past the stream window: the fast path declines the frame and h2
    ends the connection with its FLOW_CONTROL_ERROR, as without the fast path."""
    outcomes = []
    for fast in (True, False):
        pair = Pair(fast=fast, limits=Limits(stream_window_bytes=100, max_frame_bytes=16384))
        sid = pair.client.open_stream(REQUEST)
        _exchange(pair)
        assert pair.server.receive_data(DataFrame(sid, data=b"a" * 60).serialize(), 0.0)
        with pytest.raises(ProtocolViolation) as raised:
            pair.server.receive_data(DataFrame(sid, data=b"b" * 41).serialize(), 0.0)
        outcomes.append((str(raised.value), pair.server.data_to_send()))
    assert outcomes[0] == outcomes[1]
    assert "low control" in outcomes[0][0]  # h2's "Flow control window shrunk below 0"


@pytest.mark.parametrize(
    "frame",
    [
        DataFrame(99, data=b"x").serialize(),  # a stream never opened
        DataFrame(1, data=b"x").serialize()[:-1],  # a partial frame, then nothing
        DataFrame(1, data=b"x", flags=["END_STREAM"]).serialize(),
        WindowUpdateFrame(1, window_increment=10).serialize() + DataFrame(1, data=b"x").serialize(),
        b"\x00\x00\x01\x00\x00\x80\x00\x00\x01x",  # the reserved bit set on the stream id
        b"\x00\x00\x01\x00\x20\x00\x00\x00\x01x",  # a flag DATA does not define
    ],
)
def test_what_the_fast_path_declines_h2_judges_the_same(frame: bytes) -> None:
    outcomes = []
    for fast in (True, False):
        pair = Pair(fast=fast)
        sid = pair.client.open_stream(REQUEST)
        assert sid == 1
        _exchange(pair)
        try:
            outcome: object = pair.server.receive_data(frame, 0.0)
        except ProtocolViolation as exc:
            outcome = f"violation: {exc}"
        outcomes.append((outcome, pair.server.data_to_send(), _state(pair.server)))
    assert outcomes[0] == outcomes[1]


def test_data_queued_behind_a_closed_window_keeps_its_order() -> None:
    """A small write while earlier data waits for credit is queued behind it (the fast path
    only frames a write with nothing queued ahead): the peer gets every byte in order."""
    pair = Pair(fast=True, limits=Limits(stream_window_bytes=1000, max_frame_bytes=16384))
    sid = pair.client.open_stream(REQUEST)
    _exchange(pair)
    pair.client.send_data(sid, b"A" * 1500, 0.0)  # 1000 go, 500 wait for credit
    pair.client.send_data(sid, b"B", 0.0)
    got = _exchange(pair)
    assert _data(got) == b"A" * 1000
    pair.server.consumed(sid, 1000)
    got = _exchange(pair)
    pair.client.send_data(sid, b"C", 0.0)
    got += _exchange(pair)
    assert _data(got) == b"A" * 500 + b"B" + b"C"


def _exchange(pair: Pair) -> list[Event]:
    at_server: list[Event] = []
    for _ in range(20):
        up = pair.client.data_to_send()
        if up:
            at_server += pair.server.receive_data(up, 0.0)
        down = pair.server.data_to_send()
        if down:
            pair.client.receive_data(down, 0.0)
        if not up and not down:
            break
    return at_server


def _data(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def test_a_read_past_the_connection_window_is_h2s_error_either_way() -> None:
    """Frames each within their stream's window, together past the connection's: declined as
    a whole (nothing taken), and h2 ends the connection as without the fast path."""
    limits = Limits(connection_window_bytes=65_535, max_frame_bytes=16384)
    outcomes = []
    for fast in (True, False):
        pair = Pair(fast=fast, limits=limits)
        first, second = pair.client.open_stream(REQUEST), pair.client.open_stream(REQUEST)
        _exchange(pair)
        frames = [DataFrame(sid, data=b"w" * 16384).serialize() for sid in (first, second)] * 2
        with pytest.raises(ProtocolViolation) as raised:
            pair.server.receive_data(b"".join(frames), 0.0)
        outcomes.append((str(raised.value), pair.server.data_to_send()))
    assert outcomes[0] == outcomes[1]


def test_the_fast_calls_decline_streams_h2_does_not_have_open() -> None:
    """Direct calls (the multiplexer does not make these: it knows its streams): a send on a
    stream h2 never opened, credit for a stream h2 closed — declined, nothing changed."""
    pair = Pair(fast=True)
    sid = pair.client.open_stream(REQUEST, end_stream=True)
    _exchange(pair)
    pair.server.send_headers(sid, ((":status", "204"),), end_stream=True)
    _exchange(pair)
    lean = pair.server._lean
    assert lean is not None
    before = _state(pair.server)
    assert not lean.send_small_data(77, b"x")
    assert not lean.acknowledge_quietly(1, sid)  # closed both ways
    assert not lean.acknowledge_quietly(0, sid)
    assert _state(pair.server) == before
