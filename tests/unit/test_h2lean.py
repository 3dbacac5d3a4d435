"""h2 without its copies (agent/proto/h2lean.py): the frame buffer must parse exactly what h2's
own does, however the bytes are split into reads, and the connection must put exactly h2's
bytes on the wire, large DATA payloads by reference."""

from __future__ import annotations

import random

import h2.config
import h2.connection
import h2.exceptions
import h2.frame_buffer
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from agent.proto import h2lean

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 1 << 20
REQUEST = [(":method", "POST"), (":scheme", "https"), (":authority", "n"), (":path", "/x")]


def test_written_against_the_installed_versions() -> None:
    # The guard is what keeps the workaround off unknown h2 internals; the CI venv pins the
    # versions it was written against, so this fails when a bump needs the module re-checked.
    assert h2lean.SUPPORTED
    conn = h2lean.new_connection(h2.config.H2Configuration(client_side=True))
    assert isinstance(conn, h2lean.LeanH2Connection)
    assert isinstance(conn.incoming_buffer, h2lean.LeanFrameBuffer)


def _frames() -> list[bytes]:
    """Every frame shape the buffer treats differently, serialized, in order."""
    block = hpack.Encoder().encode(REQUEST)
    headers = HeadersFrame(1, data=block[:3])
    cont_1 = ContinuationFrame(1, data=block[3:5])
    cont_2 = ContinuationFrame(1, data=block[5:], flags=["END_HEADERS"])
    padded = DataFrame(1, data=b"padded payload", flags=["PADDED"])
    padded.pad_length = 7
    frames: list[Frame] = [
        SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 1 << 14}),
        headers,
        cont_1,
        cont_2,
        DataFrame(1, data=bytes(range(256)) * 40),  # 10,240 bytes: reads above the small size
        DataFrame(1, data=b""),
        padded,
        DataFrame(1, data=b"short"),
        PingFrame(0, opaque_data=b"12345678"),
        WindowUpdateFrame(1, window_increment=1000),
        DataFrame(1, data=b"last", flags=["END_STREAM"]),
    ]
    return [f.serialize() for f in frames]


def _wire() -> bytes:
    return b"".join(_frames())


def _parse(buffer: h2.frame_buffer.FrameBuffer, reads: list[bytes]) -> list[str]:
    buffer.max_frame_size = MAX_FRAME
    seen: list[str] = []
    for read in reads:
        buffer.add_data(read)
        seen.extend(
            f"{type(f).__name__} {f.stream_id} {sorted(f.flags)} {f.body_len} "
            f"{getattr(f, 'data', b'')!r} {getattr(f, 'pad_length', 0)}"
            for f in buffer
        )
    return seen


def _cut(wire: bytes, cuts: set[int]) -> list[bytes]:
    points = sorted(c for c in cuts if 0 < c < len(wire))
    return [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]


@pytest.mark.parametrize("seed", range(20))
def test_frames_parse_as_h2_parses_them_however_reads_are_split(seed: int) -> None:
    rng = random.Random(seed)
    frames = _frames()
    wire = PREFACE + b"".join(frames)
    boundaries = [len(PREFACE)]
    for frame in frames:
        boundaries.append(boundaries[-1] + len(frame))
    # Cuts inside the preface, inside frame headers (a boundary + 1..8) and anywhere.
    cuts = {rng.randrange(1, len(PREFACE))}
    cuts |= {b + rng.randint(1, 8) for b in boundaries if rng.random() < 0.6}
    cuts |= {rng.randrange(1, len(wire)) for _ in range(4)}
    reads = _cut(wire, cuts)
    expected = _parse(h2.frame_buffer.FrameBuffer(server=True), [wire])
    assert len(expected) == 9  # the header block is one frame once assembled
    assert _parse(h2lean.LeanFrameBuffer(server=True), reads) == expected


def test_one_byte_reads_and_non_bytes_input() -> None:
    wire = _wire()
    expected = _parse(h2.frame_buffer.FrameBuffer(), [wire])
    reads = [bytearray(wire[i : i + 1]) for i in range(len(wire))]
    assert _parse(h2lean.LeanFrameBuffer(), reads) == expected  # type: ignore[arg-type]
    large = [bytearray(wire[:6000]), bytearray(wire[6000:])]
    assert _parse(h2lean.LeanFrameBuffer(), large) == expected  # type: ignore[arg-type]


def test_a_trickled_frame_is_gathered_not_kept_read_by_read() -> None:
    buffer = h2lean.LeanFrameBuffer()
    buffer.max_frame_size = MAX_FRAME
    payload = bytes(range(256)) * 256  # 64 KiB in 1-byte reads
    wire = DataFrame(1, data=payload).serialize()
    most_reads_kept = 0
    for i in range(len(wire) - 1):
        buffer.add_data(wire[i : i + 1])
        assert list(buffer) == []
        most_reads_kept = max(most_reads_kept, len(buffer._reads))
    buffer.add_data(wire[-1:])
    (frame,) = list(buffer)
    assert frame.data == payload
    assert most_reads_kept <= len(wire) // 4096 + 1  # gathered at least 4 KiB at a time


def test_a_small_leftover_does_not_keep_a_large_read_alive() -> None:
    buffer = h2lean.LeanFrameBuffer()
    buffer.max_frame_size = MAX_FRAME
    next_header = DataFrame(1, data=b"x" * 10).serialize()[:5]
    buffer.add_data(DataFrame(1, data=b"d" * 500_000).serialize() + next_header)
    (frame,) = list(buffer)
    assert len(frame.data) == 500_000
    (rest,) = buffer._reads
    assert rest.obj == next_header  # a copy of the 5 bytes, not a view of the 500 KB read


def test_a_payload_that_is_a_whole_read_is_not_copied() -> None:
    buffer = h2lean.LeanFrameBuffer()
    buffer.max_frame_size = MAX_FRAME
    payload = b"x" * 70_000
    buffer.add_data(DataFrame(3, data=payload).serialize()[:9])
    read = bytes(payload)
    buffer.add_data(read)
    (frame,) = list(buffer)
    assert frame.data is read


def test_a_wrong_preface_is_refused_even_when_split() -> None:
    buffer = h2lean.LeanFrameBuffer(server=True)
    buffer.add_data(PREFACE[:10])
    with pytest.raises(h2.exceptions.ProtocolError, match="preamble"):
        buffer.add_data(b"GET / HTTP/1.1\r\n")


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    buffer = h2lean.LeanFrameBuffer()
    buffer.max_frame_size = 1 << 14
    buffer.add_data(DataFrame(1, data=b"x" * (1 << 15)).serialize()[:9])
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        list(buffer)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        # DATA on stream 0: refused when its header is parsed.
        (b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x", h2.exceptions.ProtocolError),
        # A window increment of zero: non-compliant data.
        (
            WindowUpdateFrame(1, window_increment=1).serialize()[:-4] + b"\x00" * 4,
            h2.exceptions.ProtocolError,
        ),
        # A PING of 7 bytes: frame data missing.
        (b"\x00\x00\x07\x06\x00\x00\x00\x00\x001234567", h2.exceptions.FrameDataMissingError),
    ],
)
def test_bad_frames_raise_what_h2_raises(frame: bytes, error: type[Exception]) -> None:
    for buffer in (h2.frame_buffer.FrameBuffer(), h2lean.LeanFrameBuffer()):
        buffer.max_frame_size = MAX_FRAME
        buffer.add_data(frame)
        with pytest.raises(error):
            list(buffer)


# -- sending ----------------------------------------------------------------------------------


def _both(client_side: bool = True) -> tuple[h2.connection.H2Connection, h2lean.LeanH2Connection]:
    config = h2.config.H2Configuration(client_side=client_side)
    stock, lean = h2.connection.H2Connection(config=config), h2lean.LeanH2Connection(config)
    for conn in (stock, lean):
        conn.initiate_connection()
        conn.max_outbound_frame_size = MAX_FRAME
        conn.outbound_flow_control_window = 1 << 30
    return stock, lean


def _drive(conn: h2.connection.H2Connection, payloads: list[tuple[bytes, int | None]]) -> None:
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, REQUEST)
    conn.streams[stream_id].outbound_flow_control_window = 1 << 30
    for data, pad_length in payloads:
        conn.send_data(stream_id, data, pad_length=pad_length)
    conn.end_stream(stream_id)


def test_the_wire_is_h2s_and_large_payloads_go_by_reference() -> None:
    large = b"L" * h2lean.PIECE_MIN_BYTES
    just_below = b"b" * (h2lean.PIECE_MIN_BYTES - 1)
    payloads: list[tuple[bytes, int | None]] = [
        (b"small", None),
        (large, None),
        (just_below, None),
        (b"p" * h2lean.PIECE_MIN_BYTES, 5),  # padded: serialized by hyperframe
        (b"after", None),
    ]
    stock, lean = _both()
    _drive(stock, payloads)
    _drive(lean, payloads)
    pieces = lean.data_to_send_pieces()
    assert b"".join(pieces) == stock.data_to_send()
    assert any(piece is large for piece in pieces)
    assert not any(piece is just_below for piece in pieces)
    assert lean.data_to_send_pieces() == []


def test_end_stream_on_a_large_frame_is_in_its_header() -> None:
    stock, lean = _both()
    for conn in (stock, lean):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, REQUEST)
        conn.streams[stream_id].outbound_flow_control_window = 1 << 30
        conn.send_data(stream_id, b"E" * (64 << 10), end_stream=True)
    assert lean.data_to_send() == stock.data_to_send()


def test_data_to_send_with_an_amount_keeps_the_rest_in_order() -> None:
    stock, lean = _both()
    payloads: list[tuple[bytes, int | None]] = [(b"A" * (32 << 10), None), (b"tail", None)]
    _drive(stock, payloads)
    _drive(lean, payloads)
    expected = stock.data_to_send()
    head = lean.data_to_send(100)
    assert len(head) == 100
    assert head + lean.data_to_send() == expected
    assert lean.data_to_send(10) == b""


def test_clearing_the_output_drops_pieces_too() -> None:
    _, lean = _both()
    _drive(lean, [(b"C" * (32 << 10), None)])
    lean.clear_outbound_data_buffer()
    assert lean.data_to_send() == b""


def test_data_frame_repr_does_not_dump_the_payload() -> None:
    frame = DataFrame(5, data=b"secret" * 1000, flags=["END_STREAM"])
    assert repr(frame) == "DataFrame(stream_id=5, flags=['END_STREAM']): <6000 bytes>"
