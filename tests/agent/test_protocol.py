"""The frame format both ends share: whole frames out, everything else skipped."""

from __future__ import annotations

import os

import pytest

from vers_orchestrator.agent import protocol
from vers_orchestrator.agent.protocol import Channel, FrameDecoder, FrameType


def _frames(decoder: FrameDecoder, data: bytes) -> list[tuple[int, int, int, bytes]]:
    return [(f.type, f.stream, f.flags, f.payload) for f in decoder.feed(data)]


def test_frames_come_out_as_they_went_in() -> None:
    data = (
        protocol.encode_json(FrameType.HELLO, 0, {"versions": [1]})
        + protocol.encode(FrameType.DATA, 7, b"\x00\xff" * 100, Channel.STDERR)
        + protocol.encode_credit(7, Channel.INPUT, 12345)
    )
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    assert [(f.type, f.stream, f.flags) for f in frames] == [
        (FrameType.HELLO, 0, 0),
        (FrameType.DATA, 7, Channel.STDERR),
        (FrameType.CREDIT, 7, Channel.INPUT),
    ]
    assert frames[0].json() == {"versions": [1]}
    assert frames[1].payload == b"\x00\xff" * 100
    assert frames[2].credit() == 12345
    assert decoder.skipped == 0


def test_a_frame_fed_byte_by_byte_comes_out_once_whole() -> None:
    frame = protocol.encode(FrameType.DATA, 3, b"payload", Channel.STDOUT)
    decoder = FrameDecoder()
    out = []
    for byte in frame:
        out += _frames(decoder, bytes([byte]))
    assert out == [(FrameType.DATA, 3, Channel.STDOUT, b"payload")]


def test_bytes_that_are_not_frames_are_skipped() -> None:
    noise = os.urandom(5000).replace(protocol.MAGIC, b"")
    frame = protocol.encode(FrameType.MESSAGE, 1, b"{}")
    decoder = FrameDecoder()
    assert _frames(decoder, noise + frame + noise[:100] + frame) == [
        (FrameType.MESSAGE, 1, 0, b"{}"),
        (FrameType.MESSAGE, 1, 0, b"{}"),
    ]
    assert decoder.skipped == len(noise) + 100


def test_a_frame_whose_payload_was_damaged_is_not_one() -> None:
    damaged = bytearray(protocol.encode(FrameType.DATA, 1, b"abcdef", Channel.STDOUT))
    damaged[-1] ^= 0x01
    good = protocol.encode(FrameType.END, 1, b"", Channel.STDOUT)
    assert _frames(FrameDecoder(), bytes(damaged) + good) == [
        (FrameType.END, 1, Channel.STDOUT, b"")
    ]


def test_a_stale_half_frame_is_completed_by_flush_and_dropped() -> None:
    # An older conversation stopped half-way through a large frame; the new one starts
    # with FLUSH, so its HELLO is not swallowed as the rest of that payload.
    stale = protocol.encode(FrameType.DATA, 9, os.urandom(60_000), Channel.STDOUT)[:30_000]
    hello = protocol.encode_json(FrameType.HELLO, 0, {"session": "new"})
    decoder = FrameDecoder()
    frames = decoder.feed(stale + protocol.FLUSH + hello)
    assert [frame.json() for frame in frames] == [{"session": "new"}]


def test_a_header_claiming_more_than_a_frame_holds_is_skipped() -> None:
    bogus = bytearray(protocol.encode(FrameType.DATA, 1, b"x"))
    bogus[12:16] = (protocol.MAX_PAYLOAD + 1).to_bytes(4, "big")
    good = protocol.encode(FrameType.CLOSE, 1)
    assert _frames(FrameDecoder(), bytes(bogus) + good) == [(FrameType.CLOSE, 1, 0, b"")]


def test_a_payload_over_the_limit_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        protocol.encode(FrameType.DATA, 1, bytes(protocol.MAX_PAYLOAD + 1))


def test_an_unknown_channel_is_a_protocol_error() -> None:
    (frame,) = FrameDecoder().feed(protocol.encode(FrameType.END, 1, b"", 9))
    with pytest.raises(protocol.ProtocolError, match="no such channel: 9"):
        frame.channel()
