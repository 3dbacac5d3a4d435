"""Fuzz of the exec frame decoder (``agent.proto.execframe``): random and mutated byte streams
fed in random pieces. Only ``ProtocolViolation`` or whole frames come out; frames re-encode to
exactly the bytes consumed; nothing is buffered beyond one frame's header and payload."""

from __future__ import annotations

import random

from agent.errors import ProtocolViolation
from agent.proto.execframe import (
    MAX_PAYLOAD_BYTES,
    Channel,
    FrameDecoder,
    decode_resize,
    encode,
    encode_resize,
)
from tests.unit.fuzz.inputs import holds, mutate_bytes, random_bytes, rng, sample

COUNT = 3000
HEADER_BYTES = 5


def valid_stream(r: random.Random) -> bytes:
    frames = []
    for _ in range(r.randint(0, 6)):
        if r.random() < 0.2:
            frames.append(encode_resize(r.randint(0, 65535), r.randint(0, 65535)))
        else:
            frames.append(encode(r.choice(list(Channel)), r.randbytes(r.randint(0, 64))))
    return b"".join(frames)


def makers() -> list:
    def mutated(r: random.Random) -> bytes:
        return mutate_bytes(r, valid_stream(r))

    def huge_length(r: random.Random) -> bytes:
        length = r.choice([MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES + 1, 2**32 - 1])
        return bytes([r.randrange(4)]) + length.to_bytes(4, "big") + r.randbytes(16)

    return [valid_stream, mutated, mutated, random_bytes, huge_length]


def test_frames_or_a_protocol_violation_whatever_the_pieces() -> None:
    r = rng("execframe")

    def decode(data: bytes) -> None:
        allowed = frozenset(r.sample(list(Channel), r.randint(1, len(Channel))))
        decoder = FrameDecoder(allowed)
        frames = []
        pos = 0
        while pos < len(data):
            step = r.randint(1, 32)
            frames += decoder.feed(data[pos : pos + step])
            pos += step
            assert decoder.pending_bytes <= HEADER_BYTES + MAX_PAYLOAD_BYTES
        consumed = b"".join(encode(f.channel, f.payload) for f in frames)
        assert data.startswith(consumed)
        assert len(data) - len(consumed) == decoder.pending_bytes
        assert all(f.channel in allowed for f in frames)
        for frame in frames:
            if frame.channel is Channel.RESIZE and len(frame.payload) != 4:
                try:
                    decode_resize(frame.payload)
                except ProtocolViolation:
                    continue
                raise AssertionError("a resize of the wrong size decoded")

    holds(decode, sample(r, makers(), COUNT))
