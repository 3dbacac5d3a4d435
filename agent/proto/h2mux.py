"""The HTTP/2 stream multiplexer (sans-IO): bytes in, past-tense events out, bytes to send.

It wraps h2 and adds what h2 leaves to its user (docs/architecture.md §5):

* bounded per-stream send buffers: ``send_data`` queues, ``StreamWritable`` is emitted when a
  stream's buffer drains below the low-water mark after it went above the high-water mark, so a
  container pipe or a socket is read only as fast as the peer reads;
* outbound chunks of ``min(queued, stream window, connection window, max frame size)``,
  resumed on WINDOW_UPDATE and on SETTINGS changes;
* receive credit returned on consumption (``consumed``), never on receipt, so what the peer may
  send is bounded by the windows we advertised; whatever was not consumed is returned when a
  stream ends or is reset;
* abuse limits: concurrent streams (REFUSED_STREAM beyond), header list size, resets per
  second (Rapid Reset), PING and SETTINGS frames per second, unsent output per connection, and
  header blocks split over too many CONTINUATION frames. A breach ends the connection with
  GOAWAY ENHANCE_YOUR_CALM and raises ``ProtocolViolation``.

No sockets, no asyncio, no clock of its own: time is passed in (``now``) by the driver.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from agent.errors import (
    H2_ENHANCE_YOUR_CALM,
    ConnectionClosedError,
    ProtocolViolation,
    StreamLimitError,
    StreamResetError,
)
from agent.proto import h2lean

Headers = tuple[tuple[str, str], ...]

STREAM_WINDOW_BYTES = 4 << 20
CONNECTION_WINDOW_BYTES = 64 << 20  # servers: also the most a client can make them buffer
# Clients (nodectl, the master's links to nodes) receive the bulk: a stream that stops reading
# pins up to one stream window of this, 1/32 here (1/16 slowed the other streams by ~10 %).
CLIENT_CONNECTION_WINDOW_BYTES = 128 << 20
MAX_FRAME_BYTES = 1 << 20
MAX_CONCURRENT_STREAMS = 256
MAX_HEADER_LIST_BYTES = 64 << 10
SEND_HIGH_WATER_BYTES = 256 << 10
SEND_LOW_WATER_BYTES = 64 << 10
MAX_UNSENT_BYTES = 32 << 20  # output the peer does not read (control frames included)
MAX_RESETS_PER_S = 200
MAX_CONTROL_FRAMES_PER_S = 100  # PING + SETTINGS received
MAX_CONTINUATION_FRAMES = 32  # per header block
_HEADERS, _RST_STREAM, _SETTINGS, _PING, _CONTINUATION = 0x1, 0x3, 0x4, 0x6, 0x9
_END_HEADERS = 0x4
# An encoded header block may exceed its header list size (RFC 9113 §6.5.2) only by frame
# padding and priority fields; beyond that it is an attack, refused before h2 buffers it.
HEADER_BLOCK_SLACK_BYTES = 1024


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    headers: Headers
    ended: bool


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    stream_id: int
    headers: Headers
    ended: bool


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream: no more data will arrive on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """The stream's send buffer drained below the low-water mark."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    payload: bytes


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    error_code: int
    last_stream_id: int | None


Event = (
    RequestReceived
    | ResponseReceived
    | TrailersReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | StreamWritable
    | PingAcknowledged
    | ConnectionEnded
)


# -- the multiplexer ------------------------------------------------------------------------


@dataclass(slots=True)
class _Outbound:
    chunks: deque[bytes | memoryview] = field(default_factory=deque)
    queued: int = 0
    end: bool = False
    trailers: Headers | None = None
    above_high_water: bool = False
    blocked_since: float | None = None  # queued data but a zero window
    end_sent: bool = False
    remote_ended: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS
    stream_window_bytes: int = STREAM_WINDOW_BYTES
    connection_window_bytes: int = CONNECTION_WINDOW_BYTES
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_header_list_bytes: int = MAX_HEADER_LIST_BYTES
    send_high_water_bytes: int = SEND_HIGH_WATER_BYTES
    send_low_water_bytes: int = SEND_LOW_WATER_BYTES
    max_unsent_bytes: int = MAX_UNSENT_BYTES
    max_resets_per_s: int = MAX_RESETS_PER_S
    max_control_frames_per_s: int = MAX_CONTROL_FRAMES_PER_S
    max_continuation_frames: int = MAX_CONTINUATION_FRAMES


CLIENT_LIMITS = Limits(connection_window_bytes=CLIENT_CONNECTION_WINDOW_BYTES)


class _RateCounter:
    """Events per one-second window (a fixed window is enough to catch a flood)."""

    __slots__ = ("_count", "_limit", "_window_start")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._window_start = float("-inf")
        self._count = 0

    def hit(self, now: float, count: int = 1) -> bool:
        """Count ``count`` events; True when the limit is exceeded."""
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += count
        return self._count > self._limit


class _FrameScanner:
    """Walks the frame headers of the inbound byte stream (without keeping payloads), before
    h2 parses it: h2 buffers a whole header block before decoding it (so an endless
    CONTINUATION sequence would grow memory without an event), and it parses a whole read
    before we see its events (one 256 KiB read of RST_STREAM or PING frames is ~10,000 stream
    states or queued answers). Counting here lets the limits act before that work is done."""

    __slots__ = (
        "_header",
        "_in_block",
        "_preface_left",
        "_skip",
        "block_bytes",
        "continuations",
        "control_frames",
        "resets",
    )

    def __init__(self, client_side: bool) -> None:
        # A server first reads the 24-byte client preface; a client reads frames at once.
        self._preface_left = 0 if client_side else 24
        self._header = b""
        self._skip = 0
        self._in_block = False
        self.continuations = 0
        self.block_bytes = 0  # the current header block's frame payloads so far
        self.resets = 0  # RST_STREAM frames in the last feed
        self.control_frames = 0  # PING and SETTINGS frames in the last feed

    def at_boundary(self) -> bool:
        """Between frames: no preface, header or payload in progress, no header block open."""
        return not (self._preface_left or self._skip or self._header or self._in_block)

    def feed(self, data: bytes) -> None:
        self.resets = self.control_frames = 0
        view = memoryview(data)
        while view:
            if self._preface_left:
                taken = min(self._preface_left, len(view))
                self._preface_left -= taken
                view = view[taken:]
                continue
            if self._skip:
                taken = min(self._skip, len(view))
                self._skip -= taken
                view = view[taken:]
                continue
            need = 9 - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) < 9:
                return
            high, low, kind, flags, _ = h2lean.FRAME_HEADER.unpack(self._header)
            self._header = b""
            self._skip = (high << 8) | low
            if kind == _HEADERS:
                self._in_block = not flags & _END_HEADERS
                self.continuations = 0
                self.block_bytes = self._skip
            elif kind == _CONTINUATION and self._in_block:
                self.continuations += 1
                self.block_bytes += self._skip
                self._in_block = not flags & _END_HEADERS
            elif kind == _RST_STREAM:
                self.resets += 1
            elif kind in (_PING, _SETTINGS):
                self.control_frames += 1


class StreamMux:
    """One HTTP/2 connection's state: feed it bytes, act on its events, send its bytes."""

    def __init__(self, *, client_side: bool, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.client_side = client_side
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self._h2 = h2lean.new_connection(config)
        self._h2.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.limits.stream_window_bytes,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: self.limits.max_frame_bytes,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_list_bytes,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self._h2.max_inbound_frame_size = self.limits.max_frame_bytes
        # h2 applies our header list limit only once the peer acknowledged our SETTINGS; a
        # peer that never does would get h2's default until then.
        self._h2.decoder.max_header_list_size = self.limits.max_header_list_bytes
        self._outbound: dict[int, _Outbound] = {}
        self._unacked: dict[int, int] = {}  # stream -> received bytes not yet consumed
        self._open_streams: set[int] = set()
        self._resets = _RateCounter(self.limits.max_resets_per_s)
        self._control = _RateCounter(self.limits.max_control_frames_per_s)
        self._scanner = _FrameScanner(client_side)
        # The small-DATA fast path (h2lean): h2's per-frame Python skipped where it only
        # moves counters. None on h2 versions h2lean does not know: always through h2.
        self._lean = self._h2 if isinstance(self._h2, h2lean.LeanH2Connection) else None
        self._pending_events: list[Event] = []
        # DATA the peer's windows let us send that it has not granted back yet: a reader that
        # is merely slow can leave that much in our transport legitimately.
        self._data_unacknowledged = 0
        self.closed = False

    # -- connection ----------------------------------------------------------------------

    def initiate(self) -> None:
        self._h2.initiate_connection()
        extra = self.limits.connection_window_bytes - 65535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    def pending_output(self) -> list[bytes]:
        """What ``data_to_send`` would return, as buffers for ``transport.writelines``: large
        DATA payloads are not copied into one output buffer (agent/proto/h2lean.py)."""
        if isinstance(self._h2, h2lean.LeanH2Connection):
            return self._h2.data_to_send_pieces()
        data = self._h2.data_to_send()  # pragma: no cover - h2 versions h2lean does not know
        return [data] if data else []  # pragma: no cover

    def check_unsent(self, transport_buffered: int) -> None:
        """The driver reports how much of our output the peer has not taken yet. DATA within
        the peer's connection window is the peer's own allowance (a slow reader with a large
        window); beyond it, a peer that makes us queue more than ``max_unsent_bytes`` (control
        frames it never reads) loses the connection."""
        excess = transport_buffered - self._data_unacknowledged
        if excess > self.limits.max_unsent_bytes:
            self._violation(f"peer does not read: {transport_buffered} bytes unsent")

    def ping(self, payload: bytes) -> None:
        self._h2.ping(payload)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """GOAWAY: no new streams; the driver closes the transport once output is flushed."""
        if not self.closed:
            self.closed = True
            self._h2.close_connection(error_code=error_code, additional_data=reason.encode())

    @property
    def open_streams(self) -> int:
        return len(self._open_streams)

    @property
    def connection_window(self) -> int:
        return int(self._h2.outbound_flow_control_window)

    # -- inbound -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; returns what happened. Raises ProtocolViolation after
        queueing GOAWAY when the peer broke the protocol or an abuse limit."""
        scanner = self._scanner
        if self._lean is not None and scanner.at_boundary():
            # A read of whole plain DATA frames for open streams (the interactive case): no
            # limit counts DATA, and h2 would only move window counters and make events.
            frames = self._lean.receive_data_frames(data)
            if frames is not None:
                events = self._pending_events
                self._pending_events = []
                for stream_id, payload, length in frames:
                    self._data_received(stream_id, payload, length, events)
                return events  # no window opened: nothing queued can move (no _flush)
        scanner.feed(data)
        if scanner.continuations > self.limits.max_continuation_frames:
            self._violation(f"more than {self.limits.max_continuation_frames} CONTINUATION frames")
        if scanner.block_bytes > self.limits.max_header_list_bytes + HEADER_BLOCK_SLACK_BYTES:
            self._violation(f"header block over {self.limits.max_header_list_bytes} bytes")
        if scanner.resets and self._resets.hit(now, scanner.resets):
            self._violation("too many stream resets (rapid reset)")
        if scanner.control_frames and self._control.hit(now, scanner.control_frames):
            self._violation("too many PING/SETTINGS frames")
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued GOAWAY (too many streams, oversized header list, bad frames...).
            self.closed = True
            raise ProtocolViolation(f"HTTP/2 protocol error: {exc}") from exc
        events = self._pending_events
        self._pending_events = []
        for event in h2_events:
            self._translate(event, now, events)
        self._flush(now, events)
        return events

    def _translate(self, event: h2.events.Event, now: float, out: list[Event]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            # h2 enforces MAX_CONCURRENT_STREAMS itself (our values apply from the start).
            assert event.stream_id is not None and event.headers is not None
            self._open(event.stream_id)
            out.append(
                RequestReceived(
                    event.stream_id, _headers(event.headers), event.stream_ended is not None
                )
            )
        elif isinstance(event, h2.events.ResponseReceived):
            assert event.stream_id is not None and event.headers is not None
            out.append(
                ResponseReceived(
                    event.stream_id, _headers(event.headers), event.stream_ended is not None
                )
            )
        elif isinstance(event, h2.events.TrailersReceived):
            assert event.stream_id is not None and event.headers is not None
            out.append(TrailersReceived(event.stream_id, _headers(event.headers)))
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            self._data_received(event.stream_id, event.data, event.flow_controlled_length or 0, out)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            self._remote_ended(event.stream_id, out)
        elif isinstance(event, h2.events.StreamReset):
            # Counted against the reset rate by the scanner, before h2 parsed the frames.
            assert event.stream_id is not None
            self._forget(event.stream_id)
            out.append(StreamReset(event.stream_id, int(event.error_code or 0), True))
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:  # the connection window: DATA granted back
                self._data_unacknowledged = max(
                    0, self._data_unacknowledged - int(event.delta or 0)
                )
        elif isinstance(event, h2.events.PingAckReceived):
            out.append(PingAcknowledged(bytes(event.ping_data or b"")))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True
            out.append(ConnectionEnded(int(event.error_code or 0), event.last_stream_id))
        # h2 reports the end of a stream as its own StreamEnded event (also when it came with
        # headers or data). WindowUpdated needs no event: _flush runs after every receive.

    def _data_received(self, stream_id: int, data: bytes, length: int, out: list[Event]) -> None:
        if stream_id in self._open_streams and data:
            self._unacked[stream_id] = self._unacked.get(stream_id, 0) + length
            out.append(DataReceived(stream_id, data, length))
        elif length:
            self._h2.acknowledge_received_data(length, stream_id)

    # -- streams -------------------------------------------------------------------------

    def _remote_ended(self, stream_id: int, events: list[Event]) -> None:
        # h2 reports END_STREAM only for streams it has open, which are ours too.
        out = self._outbound[stream_id]
        out.remote_ended = True
        events.append(StreamEnded(stream_id))
        if out.end_sent:
            self._done(stream_id)

    def _done(self, stream_id: int) -> None:
        """Both sides ended: the stream no longer counts against the concurrency limit. Its
        receive bookkeeping stays until the application consumed what it was given."""
        self._open_streams.discard(stream_id)
        self._outbound.pop(stream_id, None)
        unacked = self._unacked.pop(stream_id, 0)
        if unacked:
            self._h2.acknowledge_received_data(unacked, stream_id)

    def _open(self, stream_id: int) -> None:
        self._open_streams.add(stream_id)
        self._outbound[stream_id] = _Outbound()
        self._unacked[stream_id] = 0

    def _forget(self, stream_id: int) -> None:
        self._open_streams.discard(stream_id)
        self._outbound.pop(stream_id, None)
        unacked = self._unacked.pop(stream_id, 0)
        if unacked:
            # Credit of a stream that is gone still counts against the connection window.
            self._h2.acknowledge_received_data(unacked, stream_id)

    def open_stream(self, headers: Iterable[tuple[str, str]], *, end_stream: bool = False) -> int:
        """Client side: start a request; returns its stream id."""
        if self.closed:
            raise ProtocolViolation("connection is closing; no new streams")
        try:
            stream_id = int(self._h2.get_next_available_stream_id())
        except h2.exceptions.NoAvailableStreamIDError:
            # 2^30 streams on one connection: it is spent; close it so callers open another.
            self.close(0, "stream ids exhausted")
            raise ProtocolViolation("stream ids exhausted on this connection") from None
        try:
            self._h2.send_headers(stream_id, list(headers), end_stream=end_stream)
        except h2.exceptions.TooManyStreamsError as exc:
            raise StreamLimitError(f"the peer allows no more concurrent streams: {exc}") from exc
        self._open(stream_id)
        if end_stream:
            self._outbound[stream_id].end = self._outbound[stream_id].end_sent = True
        return stream_id

    def send_headers(
        self, stream_id: int, headers: Iterable[tuple[str, str]], *, end_stream: bool = False
    ) -> None:
        """Server side: the response headers."""
        try:
            self._h2.send_headers(stream_id, list(headers), end_stream=end_stream)
        except h2.exceptions.StreamClosedError as exc:
            # The peer reset it first (our answer crossed its RST_STREAM).
            raise StreamResetError(stream_id, exc.error_code or 0, True) from exc
        except h2.exceptions.ProtocolError as exc:
            # h2 sends nothing once GOAWAY went either way (python-hyper/h2#1181).
            raise ConnectionClosedError(f"connection closing: {exc}") from exc
        if end_stream:
            self._finish_local(stream_id)

    def send_data(self, stream_id: int, data: bytes, now: float) -> bool:
        """Queue data; False when the stream's buffer is above the high-water mark (wait for
        ``StreamWritable`` before sending more)."""
        out = self._outbound.get(stream_id)
        if out is None or out.end:
            raise ProtocolViolation(f"stream {stream_id} is not open for sending")
        if (
            not out.chunks
            and self._lean is not None
            and data
            and self._lean.send_small_data(stream_id, data)
        ):
            # Nothing queued ahead and the windows take it: one frame, framed here. No
            # window opened, so no other stream's queue can move (no _flush).
            self._data_unacknowledged += len(data)
            return True
        if data:
            # Queued and sent by reference (h2lean): a caller's mutable buffer is copied once.
            out.chunks.append(data if isinstance(data, bytes) else bytes(data))
            out.queued += len(data)
        self._flush(now, self._pending_events)
        if out.queued > self.limits.send_high_water_bytes:
            out.above_high_water = True
            return False
        return True

    def end_stream(self, stream_id: int, now: float, trailers: Headers | None = None) -> None:
        """Half-close our side once everything queued is sent (with trailers if given)."""
        out = self._outbound.get(stream_id)
        if out is None or out.end:
            return
        out.end = True
        out.trailers = trailers
        self._flush(now, self._pending_events)

    def reset_stream(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if stream_id in self._open_streams:
            self._forget(stream_id)
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._h2.reset_stream(stream_id, error_code)

    def consumed(self, stream_id: int, nbytes: int) -> None:
        """The application took ``nbytes`` (flow-controlled length) of the stream's data:
        return that credit to the peer."""
        if nbytes <= 0 or stream_id not in self._unacked:
            return
        self._unacked[stream_id] -= nbytes
        if self._lean is None or not self._lean.acknowledge_quietly(nbytes, stream_id):
            self._h2.acknowledge_received_data(nbytes, stream_id)

    def queued_bytes(self, stream_id: int) -> int:
        out = self._outbound.get(stream_id)
        return out.queued if out is not None else 0

    def stalled_since(self, stream_id: int) -> float | None:
        """When the stream's queued output last found a zero window (None: not stalled)."""
        out = self._outbound.get(stream_id)
        return out.blocked_since if out is not None else None

    def stream_ids(self) -> list[int]:
        return sorted(self._open_streams)

    # -- outbound ------------------------------------------------------------------------

    def _finish_local(self, stream_id: int) -> None:
        out = self._outbound[stream_id]  # h2 refused headers on a stream it does not know
        out.end = out.end_sent = True
        out.chunks.clear()
        out.queued = 0
        if out.remote_ended:
            self._done(stream_id)

    def _flush(self, now: float, events: list[Event]) -> None:
        """Move queued data into h2 as far as the windows allow."""
        for stream_id, out in list(self._outbound.items()):
            try:
                self._flush_stream(stream_id, out, now, events)
            except h2.exceptions.StreamClosedError:  # pragma: no cover - defensive
                # h2 closed the stream under us (a reset crossing our data): drop our side.
                self._forget(stream_id)
            except h2.exceptions.ProtocolError:
                # GOAWAY went either way: h2 sends nothing more on this connection
                # (python-hyper/h2#1181), so what the stream still had to send is lost.
                self._forget(stream_id)
                events.append(StreamReset(stream_id, h2.errors.ErrorCodes.CANCEL, False))

    def _flush_stream(
        self, stream_id: int, out: _Outbound, now: float, events: list[Event]
    ) -> None:
        while out.chunks:
            window = self._h2.local_flow_control_window(stream_id)
            size = min(out.queued, max(0, window), self._h2.max_outbound_frame_size)
            if size <= 0:
                if out.blocked_since is None:
                    out.blocked_since = now
                break
            out.blocked_since = None
            self._h2.send_data(stream_id, self._take(out, size))
            self._data_unacknowledged += size
        if not out.chunks:
            out.blocked_since = None
        if out.above_high_water and out.queued <= self.limits.send_low_water_bytes:
            out.above_high_water = False
            events.append(StreamWritable(stream_id))
        if out.end and not out.chunks and not out.end_sent:
            out.end_sent = True
            if out.trailers is not None:
                self._h2.send_headers(stream_id, list(out.trailers), end_stream=True)
            else:
                self._h2.end_stream(stream_id)
            out.trailers = None
            if out.remote_ended:
                self._done(stream_id)

    @staticmethod
    def _take(out: _Outbound, size: int) -> bytes | memoryview:
        # Views, not slices: a chunk larger than a frame is cut without copying its rest.
        parts: list[bytes | memoryview] = []
        need = size
        while need:
            head = out.chunks[0]
            if len(head) <= need:
                parts.append(out.chunks.popleft())
                need -= len(head)
            else:
                view = memoryview(head)
                parts.append(view[:need])
                out.chunks[0] = view[need:]
                need = 0
        out.queued -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _violation(self, reason: str) -> None:
        self.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, reason)
        raise ProtocolViolation(reason, H2_ENHANCE_YOUR_CALM)


def _headers(raw: Iterable[tuple[Any, Any]]) -> Headers:
    # header_encoding="utf-8" in the configuration: h2 hands over str pairs.
    return tuple((str(k), str(v)) for k, v in raw)


def header(headers: Headers, name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None
