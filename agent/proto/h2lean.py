"""h2 without the per-byte copies and the per-frame payload dumps: our one guarded place for
working around h2 4.x / hyperframe 6.x internals (docs/architecture.md §5, docs/streaming.md).

What stock h2 costs a relay, measured on the master (docs/streaming.md, "h2's copies"): every
received DATA byte is copied three times before the application sees it (appended to the frame
buffer, sliced out of it, ``tobytes()`` of the slice), every sent one four times (padding join,
``header + body``, appended to the output buffer, ``bytes()`` of the buffer), and every
received frame is described with ``repr`` even when logging is off. Here:

* ``LeanFrameBuffer`` keeps the received reads as they are and cuts frames out of them: a DATA
  payload is copied once, into the ``bytes`` the application gets;
* ``LeanH2Connection`` queues large DATA payloads for the transport by reference, next to their
  9-byte header (``data_to_send_pieces`` for ``writelines``); small frames are still
  serialized into one buffer, so interactive traffic stays one TLS record per write;
* hyperframe's DATA ``repr`` no longer hex-encodes the payload;
* the small-DATA fast path (``receive_data_frames``, ``send_small_data``,
  ``acknowledge_quietly``): a read that is exactly whole plain DATA frames for streams open
  for receiving, a small payload on a stream open for sending, credit returned below h2's
  WINDOW_UPDATE threshold — h2's own bookkeeping of them (its window counters, content
  length) done here without its frame objects, state machines, events and logging calls,
  ~5x cheaper per frame; anything else returns "not taken" having changed nothing, and the
  caller goes through h2 (docs/streaming.md, "The small-frame fast path").

Everything else (state machines, flow control, validation) is h2's own. ``SUPPORTED`` says
whether the installed versions are the ones this was written against; on others the
connection class is stock h2 and only the (harmless) ``repr`` fix applies.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

import h2
import h2.config
import h2.connection
import h2.exceptions
import h2.frame_buffer
import h2.stream
import h2.windows
import hyperframe
import hyperframe.exceptions
import hyperframe.frame

SUPPORTED = h2.__version__.startswith("4.") and hyperframe.__version__.startswith("6.")

# Below this a DATA payload is copied into the output buffer with its header: a separate TLS
# record (and AEAD pass) for a 9-byte header costs more than copying a small payload.
PIECE_MIN_BYTES = 64 << 10
# Reads below this are gathered into one buffer instead of being kept one by one.
SMALL_READ_BYTES = 4 << 10
# A leftover of a read below this is copied out rather than keeping the whole read alive.
UNPIN_BELOW_BYTES = 64 << 10
_FRAME_HEADER_BYTES = 9
FRAME_HEADER = struct.Struct(">HBBBL")  # length (24 bits as H + B), type, flags, stream id
_END_STREAM = 0x1
_DATA = 0x0
# The fast path's states: where h2's transition for RECV_DATA / SEND_DATA keeps the state and
# does nothing but (for RECV_DATA) build the event we build ourselves. Compared by identity:
# hashing an Enum member runs Python code.
_CLIENT_OPEN = h2.connection.ConnectionState.CLIENT_OPEN
_SERVER_OPEN = h2.connection.ConnectionState.SERVER_OPEN
_OPEN = h2.stream.StreamState.OPEN
_HALF_CLOSED_LOCAL = h2.stream.StreamState.HALF_CLOSED_LOCAL
_HALF_CLOSED_REMOTE = h2.stream.StreamState.HALF_CLOSED_REMOTE


def _short_repr(data: bytes | None) -> str:
    return f"<{len(data or b'')} bytes>"


def _data_frame_repr(self: hyperframe.frame.DataFrame) -> str:
    return f"DataFrame(stream_id={self.stream_id}, flags={self.flags!r}): {_short_repr(self.data)}"


# h2 logs every received frame as repr(frame), built even when logging is off, and hyperframe's
# repr hex-encodes the whole payload before cutting it to 20 characters: up to two thirds of a
# receiver's CPU with large DATA frames. DATA frames, the hot ones, also skip the sorted flag
# list; the other frame types keep hyperframe's full description.
hyperframe.frame._raw_data_repr = _short_repr
hyperframe.frame.DataFrame.__repr__ = _data_frame_repr  # type: ignore[method-assign,assignment]


class LeanFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's ``FrameBuffer`` over a queue of received reads instead of one growing bytearray.

    Same contract as the parent (preface check, frame length limit, header-block assembly,
    the same exceptions), plus the length limit is applied as soon as a frame's header has
    arrived rather than once the whole oversized frame has been buffered.

    Memory stays proportional to the bytes buffered, as with h2's bytearray: reads under
    ``SMALL_READ_BYTES`` are gathered into one buffer rather than queued one by one (a peer
    trickling a frame in 1-byte TLS records must not cost an object per byte), and a small
    leftover of a large read is copied out rather than keeping the whole read alive."""

    def __init__(self, server: bool = False) -> None:
        super().__init__(server=server)
        self._reads: deque[memoryview] = deque()  # views of immutable bytes, in order
        self._small = bytearray()  # small reads after the queued ones, gathered
        self._buffered = 0  # bytes in both
        self._header: tuple[hyperframe.frame.Frame, int] | None = None  # parsed, body pending

    def add_data(self, data: Any) -> None:
        view = memoryview(data)
        if self._preamble_len:
            taken = min(self._preamble_len, len(view))
            if self._preamble[:taken] != view[:taken]:
                raise h2.exceptions.ProtocolError("Invalid HTTP/2 preamble.")
            view = view[taken:]
            self._preamble_len -= taken
            self._preamble = self._preamble[taken:]
        self._buffered += len(view)
        if len(view) < SMALL_READ_BYTES:
            self._small += view
            if len(self._small) >= SMALL_READ_BYTES:
                self._queue_small()
        else:
            self._queue_small()
            # Kept by reference until parsed: only immutable bytes are safe to keep.
            self._reads.append(view if isinstance(data, bytes) else memoryview(bytes(view)))

    def _queue_small(self) -> None:
        if self._small:
            self._reads.append(memoryview(bytes(self._small)))
            self._small = bytearray()

    def __next__(self) -> hyperframe.frame.Frame:
        while True:
            frame = self._next_frame()
            assembled = self._update_header_buffer(frame)
            if assembled is not None:
                return assembled

    def _next_frame(self) -> hyperframe.frame.Frame:
        if self._header is None:
            if self._buffered < _FRAME_HEADER_BYTES:
                raise StopIteration
            header = self._take(_FRAME_HEADER_BYTES)
            try:
                frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(header))
            except (
                hyperframe.exceptions.InvalidDataError,
                hyperframe.exceptions.InvalidFrameError,
            ) as err:
                msg = f"Received frame with invalid header: {err!s}"
                raise h2.exceptions.ProtocolError(msg) from err
            self._validate_frame_length(length)
            # Kept until the body is complete, so a trickled body is not re-parsed per read.
            self._header = (frame, length)
        frame, length = self._header
        if self._buffered < length:
            raise StopIteration
        self._header = None
        body = self._take(length)
        if isinstance(frame, hyperframe.frame.DataFrame) and "PADDED" not in frame.flags:
            # What DataFrame.parse_body does for an unpadded frame, minus its copy.
            frame.data = body
            frame.body_len = length
            return frame
        try:
            frame.parse_body(memoryview(body))
        except hyperframe.exceptions.InvalidDataError as err:
            raise h2.exceptions.ProtocolError("Received frame with non-compliant data") from err
        except hyperframe.exceptions.InvalidFrameError as err:
            raise h2.exceptions.FrameDataMissingError("Frame data missing or invalid") from err
        return frame

    def _take(self, size: int) -> bytes:
        """The next ``size`` bytes as one ``bytes``: the only copy a payload gets."""
        if not size:
            return b""
        if size > self._buffered - len(self._small):
            self._queue_small()
        self._buffered -= size
        parts: list[memoryview] = []
        while size:
            head = self._reads[0]
            if len(head) > size:
                parts.append(head[:size])
                self._reads[0] = _unpinned(head[size:])
                break
            parts.append(self._reads.popleft())
            size -= len(head)
        if len(parts) == 1:
            part = parts[0]
            if isinstance(part.obj, bytes) and len(part.obj) == len(part):
                return part.obj  # a whole read that was exactly this many bytes
            return part.tobytes()
        return b"".join(parts)


def _unpinned(rest: memoryview) -> memoryview:
    """``rest`` of a read, copied out when it is small next to the read it would keep alive
    (a partial frame at the end of a large read, on a peer that then goes quiet)."""
    base = rest.obj
    base_bytes = len(base) if isinstance(base, bytes) else rest.nbytes
    if len(rest) < UNPIN_BELOW_BYTES and base_bytes >= 4 * len(rest):
        return memoryview(rest.tobytes())
    return rest


class LeanH2Connection(h2.connection.H2Connection):
    """h2's connection with ``LeanFrameBuffer`` for input and large DATA payloads passed to the
    transport by reference. Call ``data_to_send_pieces`` (for ``writelines``) or the usual
    ``data_to_send``."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.incoming_buffer = LeanFrameBuffer(server=not config.client_side)
        self._pieces: list[bytes] = []

    def _prepare_for_sending(self, frames: list[hyperframe.frame.Frame]) -> None:
        for frame in frames:
            data = getattr(frame, "data", b"")
            if (
                type(frame) is hyperframe.frame.DataFrame
                and len(data) >= PIECE_MIN_BYTES
                and "PADDED" not in frame.flags
            ):
                length = len(data)
                assert length <= self.max_outbound_frame_size
                frame.body_len = length
                flags = _END_STREAM if "END_STREAM" in frame.flags else 0
                self._move_buffered()
                self._pieces.append(
                    FRAME_HEADER.pack(
                        (length >> 8) & 0xFFFF, length & 0xFF, frame.type, flags, frame.stream_id
                    )
                )
                self._pieces.append(data)
            else:
                self._data_to_send += frame.serialize()
                assert frame.body_len <= self.max_outbound_frame_size

    def _move_buffered(self) -> None:
        # h2 also writes to _data_to_send itself (the preface): order is kept by moving it
        # into the piece list before a payload is queued by reference.
        if self._data_to_send:
            self._pieces.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()

    def data_to_send_pieces(self) -> list[bytes]:
        """Everything queued, in order, as buffers for ``transport.writelines``."""
        self._move_buffered()
        pieces, self._pieces = self._pieces, []
        return pieces

    def data_to_send(self, amount: int | None = None) -> bytes:
        data = b"".join(self.data_to_send_pieces())
        if amount is not None and len(data) > amount:
            self._pieces.append(data[amount:])
            data = data[:amount]
        return data

    def clear_outbound_data_buffer(self) -> None:
        self._pieces = []
        self._data_to_send = bytearray()

    # -- the small-DATA fast path ------------------------------------------------------------

    def receive_data_frames(self, data: bytes) -> list[tuple[int, bytes, int]] | None:
        """``receive_data`` for the common interactive read: when ``data`` is exactly whole
        DATA frames without flags (no padding, no END_STREAM), each non-empty, within the
        frame size, for a stream h2 has open for receiving (headers received, no
        content-length to check) and within both receive windows, and nothing else is
        buffered or pending (no partial frame, no header block, the preface done, the
        connection open): h2's bookkeeping done (connection and stream windows consumed, the
        stream's body length counted) and ``(stream id, payload, flow-controlled length)``
        returned per frame, in order — the ``DataReceived`` events h2 would have made.
        Otherwise ``None``, nothing changed: the caller hands ``data`` to ``receive_data``,
        which judges it as always (a window overrun, a closed stream are h2's errors)."""
        buffer = self.incoming_buffer
        assert isinstance(buffer, LeanFrameBuffer)
        state = self.state_machine.state
        if (
            buffer._buffered
            or buffer._header is not None
            or buffer._preamble_len
            or buffer._headers_buffer
            or not (state is _CLIENT_OPEN or state is _SERVER_OPEN)
        ):
            return None
        end = len(data)
        max_size = self.max_inbound_frame_size
        frames: list[tuple[int, int, int]] = []
        pos = 0
        while pos < end:
            if end - pos < _FRAME_HEADER_BYTES:
                return None
            high, low, kind, flags, stream_id = FRAME_HEADER.unpack_from(data, pos)
            length = (high << 8) | low
            if kind != _DATA or flags or not length or length > max_size:
                return None
            start = pos + _FRAME_HEADER_BYTES
            pos = start + length
            if pos > end:
                return None
            frames.append((stream_id, start, length))
        # Validate every frame before changing anything: all taken or none.
        wanted: dict[int, int] = {}
        for stream_id, _, length in frames:
            wanted[stream_id] = wanted.get(stream_id, 0) + length
        total = sum(wanted.values())
        if total > self._inbound_flow_control_window_manager.current_window_size:
            return None
        for stream_id, stream_total in wanted.items():
            stream = self.streams.get(stream_id)  # a reserved bit set: no such key either
            if stream is None:
                return None
            machine = stream.state_machine
            if (
                not (machine.state is _OPEN or machine.state is _HALF_CLOSED_LOCAL)
                or not machine.headers_received
                or stream._expected_content_length is not None
                or stream_total > stream._inbound_window_manager.current_window_size
            ):
                return None
        self._inbound_flow_control_window_manager.current_window_size -= total
        out: list[tuple[int, bytes, int]] = []
        for stream_id, start, length in frames:
            stream = self.streams[stream_id]
            stream._inbound_window_manager.current_window_size -= length
            stream._actual_content_length += length
            out.append((stream_id, data[start : start + length], length))
        return out

    def send_small_data(self, stream_id: int, data: bytes | memoryview) -> bool:
        """``send_data(stream_id, data)`` without END_STREAM or padding, for a payload under
        ``PIECE_MIN_BYTES`` on a stream h2 has open for sending, within the frame size and
        both send windows, the connection open: the frame serialized into the output buffer
        (after whatever is queued, in order) and both windows debited, as h2 does. False,
        nothing changed, when any of that does not hold (the caller uses ``send_data``)."""
        size = len(data)
        if not 0 < size < PIECE_MIN_BYTES or size > self.max_outbound_frame_size:
            return False
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        state, connection_state = stream.state_machine.state, self.state_machine.state
        if (
            not (state is _OPEN or state is _HALF_CLOSED_REMOTE)
            or not (connection_state is _CLIENT_OPEN or connection_state is _SERVER_OPEN)
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
        ):
            return False
        self._data_to_send += FRAME_HEADER.pack(size >> 8, size & 0xFF, _DATA, 0, stream_id)
        self._data_to_send += data
        self.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        return True

    def acknowledge_quietly(self, size: int, stream_id: int) -> bool:
        """``acknowledge_received_data(size, stream_id)`` when it would send nothing (neither
        the connection's nor the stream's processed bytes reach h2's WINDOW_UPDATE
        threshold) on a stream h2 has open: only the two counters move. False, nothing
        changed, otherwise (the caller uses ``acknowledge_received_data``)."""
        stream = self.streams.get(stream_id)
        if size <= 0 or stream is None or not stream.open:
            return False
        connection = self._inbound_flow_control_window_manager
        window = stream._inbound_window_manager
        if not (_quiet(connection, size) and _quiet(window, size)):
            return False
        connection._bytes_processed += size
        window._bytes_processed += size
        return True


def _quiet(manager: h2.windows.WindowManager, size: int) -> bool:
    """Whether h2's ``process_bytes(size)`` would return no increment (and so change nothing
    but the processed count): the negation of ``WindowManager._maybe_update_window``'s test."""
    processed = manager._bytes_processed + size
    current, largest = manager.current_window_size, manager.max_window_size
    return not ((current == 0 and processed > min(1024, largest // 4)) or processed >= largest // 2)


def new_connection(config: h2.config.H2Configuration) -> h2.connection.H2Connection:
    """The lean connection on the h2 versions it was written against, stock h2 elsewhere."""
    if SUPPORTED:
        return LeanH2Connection(config)
    return h2.connection.H2Connection(config=config)  # pragma: no cover - other h2 versions
