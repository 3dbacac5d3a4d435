"""The sans-IO HTTP/2 multiplexer, driven by a second multiplexer or by hand-made frames:
flow control and credit, back-pressure, half-close, resets, and every abuse limit."""

from __future__ import annotations

import h2.errors
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from agent.errors import (
    ConnectionClosedError,
    ProtocolViolation,
    StreamLimitError,
    StreamResetError,
)
from agent.proto.h2mux import (
    HEADER_BLOCK_SLACK_BYTES,
    MAX_FRAME_BYTES,
    ConnectionEnded,
    DataReceived,
    Event,
    Limits,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamMux,
    StreamReset,
    StreamWritable,
    TrailersReceived,
    _FrameScanner,
    header,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = (
    (":method", "POST"),
    (":scheme", "https"),
    (":authority", "node"),
    (":path", "/v1/x"),
)


class Pair:
    """A client and a server multiplexer connected back to back."""

    def __init__(self, client: Limits | None = None, server: Limits | None = None) -> None:
        self.client = StreamMux(client_side=True, limits=client)
        self.server = StreamMux(client_side=False, limits=server)
        self.client.initiate()
        self.server.initiate()
        self.now = 0.0
        self.pump()

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Exchange bytes until both are quiet; returns (server events, client events)."""
        at_server: list[Event] = []
        at_client: list[Event] = []
        for _ in range(100):
            up = self.client.data_to_send()
            if up:
                at_server += self.server.receive_data(up, self.now)
            down = self.server.data_to_send()
            if down:
                at_client += self.client.receive_data(down, self.now)
            if not up and not down:
                break
        return at_server, at_client


def _data(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def test_request_response_with_body_trailers_and_half_close() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST)
    assert pair.client.send_data(sid, b"hello", pair.now)
    pair.client.end_stream(sid, pair.now)
    at_server, _ = pair.pump()
    assert isinstance(at_server[0], RequestReceived) and not at_server[0].ended
    assert header(at_server[0].headers, ":path") == "/v1/x"
    assert header(at_server[0].headers, "missing") is None
    assert _data(at_server) == b"hello"
    assert isinstance(at_server[-1], StreamEnded)
    pair.server.send_headers(sid, ((":status", "200"),))
    pair.server.send_data(sid, b"x" * 200_000, pair.now)
    pair.server.end_stream(sid, pair.now, (("exit-code", "3"),))
    pair.server.end_stream(sid, pair.now)  # a second end is a no-op
    _, at_client = pair.pump()
    assert isinstance(at_client[0], ResponseReceived) and not at_client[0].ended
    assert len(_data(at_client)) == 200_000
    trailers = [e for e in at_client if isinstance(e, TrailersReceived)]
    assert trailers[0].headers == (("exit-code", "3"),)
    assert isinstance(at_client[-1], StreamEnded)
    assert pair.server.open_streams == 0
    assert pair.client.open_streams == 0


def test_large_writes_reach_the_wire_as_pieces_and_arrive_intact() -> None:
    """``pending_output`` (what the driver hands to ``writelines``): a frame-sized chunk goes
    to the wire by reference, a larger one is cut into frames (h2 copies each cut), and the
    pieces are the connection's bytes in order. A caller's bytearray is copied when queued."""
    pair = Pair()
    sid = pair.client.open_stream(REQUEST)
    pair.pump()
    frame_sized = b"f" * MAX_FRAME_BYTES
    # Cut into two maximum-size frames and a small one.
    chunk = bytes(range(256)) * (MAX_FRAME_BYTES // 128) + b"tail"
    pair.client.send_data(sid, frame_sized, pair.now)
    pair.client.send_data(sid, chunk, pair.now)
    pieces = pair.client.pending_output()
    # A header and a payload per large frame; the small one is serialized whole.
    assert [len(piece) for piece in pieces] == [9, MAX_FRAME_BYTES] * 3 + [9 + 4]
    assert any(piece is frame_sized for piece in pieces)
    wire = b"".join(pieces)
    received: list[Event] = []
    for start in range(0, len(wire), 100_000):  # reads that do not line up with frames
        received += pair.server.receive_data(wire[start : start + 100_000], pair.now)
    assert _data(received) == frame_sized + chunk
    assert pair.client.pending_output() == []
    mutable = bytearray(b"m" * 100_000)
    pair.client.send_data(sid, mutable, pair.now)  # type: ignore[arg-type]
    mutable[:] = b"x" * 100_000
    wire = b"".join(pair.client.pending_output())
    assert _data(pair.server.receive_data(wire, pair.now)) == b"m" * 100_000


def test_headers_only_exchange_in_both_directions() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST, end_stream=True)
    at_server, _ = pair.pump()
    assert isinstance(at_server[0], RequestReceived) and at_server[0].ended
    pair.server.send_headers(sid, ((":status", "204"),), end_stream=True)
    _, at_client = pair.pump()
    assert isinstance(at_client[0], ResponseReceived) and at_client[0].ended
    assert pair.server.open_streams == pair.client.open_streams == 0
    assert pair.server.queued_bytes(sid) == 0 and pair.server.stalled_since(sid) is None


def test_response_ended_before_the_request_keeps_the_stream_until_both_ended() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST)
    pair.pump()
    pair.server.send_headers(sid, ((":status", "200"),), end_stream=True)
    pair.pump()
    assert pair.server.open_streams == 1  # the client may still send its body
    pair.client.send_data(sid, b"late", pair.now)
    pair.client.end_stream(sid, pair.now)
    at_server, _ = pair.pump()
    assert _data(at_server) == b"late"
    assert pair.server.open_streams == 0


def test_credit_is_returned_only_on_consumption() -> None:
    window = 64 << 10
    pair = Pair(server=Limits(stream_window_bytes=window, connection_window_bytes=1 << 20))
    sid = pair.client.open_stream(REQUEST)
    pair.client.send_data(sid, b"a" * (window + 1000), pair.now)
    at_server, _ = pair.pump()
    assert len(_data(at_server)) == window  # the rest waits for credit
    assert pair.client.queued_bytes(sid) == 1000
    assert pair.client.stalled_since(sid) == pair.now
    pair.server.consumed(sid, 0)  # nothing: no-op
    pair.server.consumed(999, 10)  # unknown stream: no-op
    pair.server.consumed(sid, window)
    at_server, _ = pair.pump()
    assert len(_data(at_server)) == 1000
    assert pair.client.stalled_since(sid) is None


def test_send_buffer_high_and_low_water_marks() -> None:
    limits = Limits(send_high_water_bytes=20_000, send_low_water_bytes=10_000)
    pair = Pair(
        client=limits, server=Limits(stream_window_bytes=65_535, connection_window_bytes=65_535)
    )
    sid = pair.client.open_stream(REQUEST)
    assert pair.client.send_data(sid, b"b" * 50_000, pair.now)
    assert not pair.client.send_data(sid, b"b" * 100_000, pair.now)  # above high water
    pair.pump()
    got = 0
    writable = []
    for _ in range(10):
        got_now = pair.client.queued_bytes(sid)
        pair.server.consumed(sid, 65_535)
        _, at_client = pair.pump()
        writable += [e for e in at_client if isinstance(e, StreamWritable)]
        got = got_now
    assert got >= 0
    assert writable == [StreamWritable(sid)]  # once, when it fell below the low-water mark


def test_sending_on_a_closed_or_unknown_stream_is_refused() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST, end_stream=True)
    with pytest.raises(ProtocolViolation, match="not open for sending"):
        pair.client.send_data(sid, b"x", pair.now)
    with pytest.raises(ProtocolViolation, match="not open for sending"):
        pair.client.send_data(77, b"x", pair.now)
    pair.client.end_stream(77, pair.now)  # unknown: ignored


def test_resets_both_ways_release_stream_and_credit() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST)
    pair.client.send_data(sid, b"q" * 1000, pair.now)
    pair.pump()
    before = pair.client.connection_window
    pair.client.reset_stream(sid)  # ours: CANCEL
    pair.client.reset_stream(sid)  # twice: no-op
    at_server, _ = pair.pump()
    assert StreamReset(sid, h2.errors.ErrorCodes.CANCEL, True) in at_server
    assert pair.server.open_streams == 0
    assert pair.client.connection_window >= before  # the server acked what it never consumed

    sid = pair.client.open_stream(REQUEST)
    pair.pump()
    pair.server.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
    _, at_client = pair.pump()
    assert StreamReset(sid, h2.errors.ErrorCodes.REFUSED_STREAM, True) in at_client


def test_data_for_a_stream_we_reset_is_acknowledged_at_once() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST)
    pair.pump()
    pair.server.reset_stream(sid)
    # The client sends before it hears of the reset: the server takes the bytes off the
    # connection window right away, no application will ever consume them.
    pair.client.send_data(sid, b"z" * 5000, pair.now)
    up = pair.client.data_to_send()
    events = pair.server.receive_data(up, pair.now)
    assert not [e for e in events if isinstance(e, DataReceived)]


def test_ping_ack_and_goaway_are_reported() -> None:
    pair = Pair()
    pair.client.ping(b"12345678")
    _, at_client = pair.pump()
    assert PingAcknowledged(b"12345678") in at_client
    pair.server.close(0, "bye")
    pair.server.close(0, "again")  # idempotent
    _, at_client = pair.pump()
    assert any(isinstance(e, ConnectionEnded) and e.error_code == 0 for e in at_client)
    assert pair.client.closed
    with pytest.raises(ProtocolViolation, match="closing"):
        pair.client.open_stream(REQUEST)


# -- attacks --------------------------------------------------------------------------------


def _server() -> tuple[StreamMux, hpack.Encoder]:
    server = StreamMux(client_side=False)
    server.initiate()
    server.data_to_send()
    server.receive_data(PREFACE + SettingsFrame(0).serialize(), 0.0)
    return server, hpack.Encoder()


def _headers_frame(encoder: hpack.Encoder, sid: int, *, end: bool = True) -> bytes:
    frame = HeadersFrame(sid)
    frame.data = encoder.encode(list(REQUEST))
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def _goaway(server: StreamMux) -> int:
    out = server.data_to_send()
    assert out, "no GOAWAY queued"
    return out.count(b"\x07")  # any bytes at all; the code is checked by the caller


def test_rapid_reset_ends_the_connection() -> None:
    server, encoder = _server()
    limit = server.limits.max_resets_per_s
    with pytest.raises(ProtocolViolation, match="rapid reset"):
        for i in range(limit + 1):
            sid = 2 * i + 1
            rst = RstStreamFrame(sid)
            rst.error_code = 8
            server.receive_data(_headers_frame(encoder, sid, end=False) + rst.serialize(), 0.5)
    assert server.closed
    assert _goaway(server)


def test_resets_spread_over_time_are_fine() -> None:
    server, encoder = _server()
    for i in range(server.limits.max_resets_per_s * 2):
        sid = 2 * i + 1
        rst = RstStreamFrame(sid)
        rst.error_code = 8
        server.receive_data(_headers_frame(encoder, sid, end=False) + rst.serialize(), i * 0.1)
    assert not server.closed


@pytest.mark.parametrize(
    "flood",
    [lambda: PingFrame(0).serialize(), lambda: SettingsFrame(0).serialize()],
    ids=["ping", "settings"],
)
def test_control_frame_flood_ends_the_connection(flood: object) -> None:
    server, _ = _server()
    assert callable(flood)
    with pytest.raises(ProtocolViolation, match="PING/SETTINGS"):
        for _ in range(server.limits.max_control_frames_per_s + 1):
            server.receive_data(flood(), 0.0)
    assert server.closed


def test_continuation_flood_ends_the_connection_before_h2_buffers_it() -> None:
    server, encoder = _server()
    first = HeadersFrame(1)
    first.data = encoder.encode(list(REQUEST))
    wire = first.serialize()
    with pytest.raises(ProtocolViolation, match="CONTINUATION"):
        server.receive_data(wire, 0.0)
        for _ in range(server.limits.max_continuation_frames + 1):
            cont = ContinuationFrame(1)
            cont.data = b"\x00" * 10
            raw = cont.serialize()
            # Split across reads: the scanner must follow frame boundaries between feeds.
            server.receive_data(raw[:4], 0.0)
            server.receive_data(raw[4:], 0.0)
    assert server.closed


def test_too_many_streams_and_oversized_headers_end_the_connection() -> None:
    server = StreamMux(client_side=False, limits=Limits(max_concurrent_streams=2))
    server.initiate()
    server.data_to_send()
    encoder = hpack.Encoder()
    ack = SettingsFrame(0)
    ack.flags.add("ACK")
    server.receive_data(PREFACE + SettingsFrame(0).serialize() + ack.serialize(), 0.0)
    server.receive_data(_headers_frame(encoder, 1, end=False), 0.0)
    server.receive_data(_headers_frame(encoder, 3, end=False), 0.0)
    with pytest.raises(ProtocolViolation, match="protocol error"):
        server.receive_data(_headers_frame(encoder, 5, end=False), 0.0)

    server, encoder = _server()
    big = HeadersFrame(1)
    big.data = encoder.encode([*REQUEST, ("x-big", "v" * 70_000)])
    big.flags.add("END_HEADERS")
    with pytest.raises(ProtocolViolation, match="protocol error"):
        server.receive_data(big.serialize(), 0.0)
    assert server.closed


def test_a_peer_that_does_not_read_loses_the_connection() -> None:
    server, _ = _server()
    server.check_unsent(server.limits.max_unsent_bytes)  # at the limit: fine
    with pytest.raises(ProtocolViolation, match="does not read"):
        server.check_unsent(server.limits.max_unsent_bytes + 1)
    assert server.closed


def test_a_slow_reader_may_leave_its_window_of_data_unsent_but_no_more() -> None:
    # The client grants a connection window far above the unsent limit and reads slowly:
    # the DATA it allowed may sit in our transport; control output beyond it may not.
    limit = 1 << 20
    pair = Pair(
        client=Limits(stream_window_bytes=8 << 20, connection_window_bytes=16 << 20),
        server=Limits(max_unsent_bytes=limit),
    )
    sid = pair.client.open_stream(REQUEST)
    pair.pump()
    pair.server.send_headers(sid, ((":status", "200"),))
    payload = b"x" * (3 * limit)
    pair.server.send_data(sid, payload, pair.now)
    sent = len(pair.server.data_to_send())  # written to a transport the client does not read
    assert sent > 3 * limit
    pair.server.check_unsent(sent)  # all of it within the client's window: fine
    pair.server.check_unsent(3 * limit + limit)
    with pytest.raises(ProtocolViolation, match="does not read"):
        pair.server.check_unsent(3 * limit + limit + 1)


def test_data_granted_back_no_longer_excuses_unsent_output() -> None:
    limit = 1 << 20
    pair = Pair(  # h2 grants credit back once half of a window was consumed
        client=Limits(stream_window_bytes=3 << 20, connection_window_bytes=3 << 20),
        server=Limits(max_unsent_bytes=limit),
    )
    sid = pair.client.open_stream(REQUEST)
    pair.pump()
    pair.server.send_headers(sid, ((":status", "200"),))
    pair.server.send_data(sid, b"y" * (2 * limit), pair.now)
    _, at_client = pair.pump()
    pair.client.consumed(
        sid, sum(e.flow_controlled_length for e in at_client if isinstance(e, DataReceived))
    )
    pair.pump()  # the client's WINDOW_UPDATEs (connection and stream) reach the server
    with pytest.raises(ProtocolViolation, match="does not read"):
        pair.server.check_unsent(limit + 1)


def test_window_update_and_goaway_frames_by_hand() -> None:
    server, encoder = _server()
    server.receive_data(_headers_frame(encoder, 1, end=False), 0.0)
    server.send_headers(1, ((":status", "200"),))
    update = WindowUpdateFrame(0)
    update.window_increment = 1000
    server.receive_data(update.serialize(), 0.0)
    data = DataFrame(1)
    data.data = b"tail"
    data.flags.add("END_STREAM")
    events = server.receive_data(data.serialize(), 0.0)
    assert _data(events) == b"tail"
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 1
    goaway.error_code = 0
    events = server.receive_data(goaway.serialize(), 0.0)
    assert ConnectionEnded(0, 1) in events


def test_frame_scanner_follows_preface_headers_and_payloads_split_anywhere() -> None:
    scanner = _FrameScanner(client_side=False)
    encoder = hpack.Encoder()
    head = HeadersFrame(1)
    head.data = encoder.encode(list(REQUEST))
    wire = PREFACE + head.serialize()
    for i in range(3):
        cont = ContinuationFrame(1)
        cont.data = b"\x00" * 5
        if i == 2:
            cont.flags.add("END_HEADERS")
        wire += cont.serialize()
    stray = ContinuationFrame(1)  # outside a header block: not counted
    wire += stray.serialize()
    for byte in wire:
        scanner.feed(bytes([byte]))
    assert scanner.continuations == 3
    client_scanner = _FrameScanner(client_side=True)
    client_scanner.feed(SettingsFrame(0).serialize())
    assert client_scanner.continuations == 0


def test_padding_only_data_is_acknowledged_and_empty_sends_are_harmless() -> None:
    server, encoder = _server()
    server.receive_data(_headers_frame(encoder, 1, end=False), 0.0)
    padded = DataFrame(1)
    padded.data = b""
    padded.flags.add("PADDED")
    padded.pad_length = 200
    events = server.receive_data(padded.serialize(), 0.0)
    assert not [e for e in events if isinstance(e, DataReceived)]
    assert server.data_to_send()  # the padding's credit went straight back
    server.send_headers(1, ((":status", "200"),))
    assert server.send_data(1, b"", 0.0)
    assert server.stream_ids() == [1]


def test_a_stall_keeps_its_first_timestamp() -> None:
    window = 1000
    pair = Pair(server=Limits(stream_window_bytes=window, connection_window_bytes=1 << 20))
    sid = pair.client.open_stream(REQUEST)
    pair.now = 1.0
    pair.client.send_data(sid, b"s" * (window + 10), pair.now)
    pair.pump()
    pair.now = 5.0
    pair.client.send_data(sid, b"s", pair.now)
    assert pair.client.stalled_since(sid) == 1.0


def test_a_header_block_over_the_list_limit_is_refused_before_its_payload_arrives() -> None:
    server, _ = _server()
    limit = server.limits.max_header_list_bytes
    # Only the 9-byte frame header of a HEADERS frame announcing more than the limit.
    announced = (
        (limit + HEADER_BLOCK_SLACK_BYTES + 1).to_bytes(3, "big")
        + b"\x01\x00"
        + b"\x00\x00\x00\x01"
    )
    with pytest.raises(ProtocolViolation, match="header block over"):
        server.receive_data(announced, 0.0)
    assert server.closed

    server, _ = _server()
    first = HeadersFrame(1)
    first.data = b"\x00" * (limit // 2 + 1)  # the block grows over CONTINUATION frames
    cont = ContinuationFrame(1)
    cont.data = b"\x00" * (limit // 2 + HEADER_BLOCK_SLACK_BYTES)
    server.receive_data(first.serialize(), 0.0)
    with pytest.raises(ProtocolViolation, match="header block over"):
        server.receive_data(cont.serialize(), 0.0)


def test_the_header_list_limit_holds_before_the_peer_acknowledges_our_settings() -> None:
    server = StreamMux(client_side=False, limits=Limits(max_header_list_bytes=8 << 10))
    server.initiate()
    server.data_to_send()
    server.receive_data(PREFACE + SettingsFrame(0).serialize(), 0.0)  # and never an ACK
    encoder = hpack.Encoder()
    frame = HeadersFrame(1)
    # 20 KiB decoded from ~1 KiB on the wire (the dynamic table repeats one header).
    frame.data = encoder.encode([*REQUEST, *[("x-repeat", "v" * 1000)] * 20])
    frame.flags.add("END_HEADERS")
    assert len(frame.data) < 2 << 10
    with pytest.raises(ProtocolViolation, match="protocol error"):
        server.receive_data(frame.serialize(), 0.0)


def test_resets_and_pings_in_one_read_are_counted_before_h2_parses_them() -> None:
    server, encoder = _server()
    pairs = []
    for i in range(server.limits.max_resets_per_s + 1):
        rst = RstStreamFrame(2 * i + 1)
        rst.error_code = 8
        pairs.append(_headers_frame(encoder, 2 * i + 1, end=False) + rst.serialize())
    with pytest.raises(ProtocolViolation, match="rapid reset"):
        server.receive_data(b"".join(pairs), 0.0)
    assert not server._h2.streams  # h2 never created the streams

    server, _ = _server()
    pings = PingFrame(0).serialize() * (server.limits.max_control_frames_per_s + 1)
    with pytest.raises(ProtocolViolation, match="PING/SETTINGS"):
        server.receive_data(pings, 0.0)
    assert len(server.data_to_send()) < 100  # the GOAWAY, and not one PING answer (17 bytes)


def test_a_request_over_the_peers_stream_limit_is_refused_and_the_connection_stays() -> None:
    pair = Pair(server=Limits(max_concurrent_streams=2))
    first = pair.client.open_stream(REQUEST)
    pair.client.open_stream(REQUEST)
    pair.pump()
    with pytest.raises(StreamLimitError) as info:
        pair.client.open_stream(REQUEST)
    assert info.value.http_status == 503
    assert info.value.h2_error_code == h2.errors.ErrorCodes.REFUSED_STREAM
    assert not pair.client.closed
    # One stream ending makes room again.
    pair.client.reset_stream(first)
    pair.pump()
    pair.client.open_stream(REQUEST)


def test_spent_stream_ids_close_the_connection() -> None:
    pair = Pair()
    pair.client._h2.highest_outbound_stream_id = 2**31 - 1  # the last id was used
    with pytest.raises(ProtocolViolation, match="stream ids exhausted"):
        pair.client.open_stream(REQUEST)
    assert pair.client.closed


def test_after_our_goaway_sending_fails_with_our_errors_only() -> None:
    # h2 sends nothing once GOAWAY was sent (python-hyper/h2#1181): the caller gets our
    # errors, and a stream's unsent output ends as a reset of that stream.
    pair = Pair()
    answered = pair.client.open_stream(REQUEST)
    pending = pair.client.open_stream(REQUEST)
    pair.pump()
    pair.server.send_headers(pending, [(":status", "200")])
    pair.server.close(0, "stopping")
    with pytest.raises(ConnectionClosedError, match="connection closing"):
        pair.server.send_headers(answered, [(":status", "200")])
    pair.server.send_data(pending, b"late output", pair.now)
    resets = [e for e in pair.server.receive_data(b"", pair.now) if isinstance(e, StreamReset)]
    assert resets == [StreamReset(pending, h2.errors.ErrorCodes.CANCEL, False)]
    assert pending not in pair.server.stream_ids()


def test_after_the_peers_goaway_sending_fails_with_our_errors_only() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST)
    pair.pump()
    pair.server.send_headers(sid, [(":status", "200")])
    pair.server.close(0, "stopping")
    _, at_client = pair.pump()
    assert any(isinstance(e, ConnectionEnded) for e in at_client)
    pair.client.send_data(sid, b"stdin after goaway", pair.now)
    assert sid not in pair.client.stream_ids()


def test_answering_a_stream_the_peer_reset_is_our_reset_error() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST)
    pair.pump()
    pair.client.reset_stream(sid)
    pair.pump()
    with pytest.raises(StreamResetError) as info:
        pair.server.send_headers(sid, [(":status", "200")])
    assert info.value.remote
