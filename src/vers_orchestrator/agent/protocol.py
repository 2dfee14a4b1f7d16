"""The vers-agent wire protocol: frames over any reliable byte stream (docs/guest-agent.md).

A frame is a 24-byte header and up to `MAX_PAYLOAD` bytes of payload::

    magic   4  b"\\xa5VAG"
    type    1  FrameType
    flags   1  the channel, for DATA, END and CREDIT frames; MORE on all but the last
               frame of an OPEN too large for one
    -       2  zero
    stream  4  unsigned, big-endian; 0 is the connection itself (HELLO)
    length  4  payload bytes
    crc     4  CRC-32 of the payload
    hcrc    4  CRC-32 of the 20 bytes before it

The byte stream carries no framing of its own that survives a reconnect or a restore: the
guest may have been frozen half-way through a frame, and either side may see the tail of
an earlier conversation first. So a decoder skips whatever is not a whole frame with both
checksums right, and each side sends `FLUSH` (enough zero bytes to complete any partial
frame the other side may still be waiting on) before its HELLO. The framing does not
depend on virtio-serial; vsock or a TCP socket can carry it unchanged.

Standard library only: the guest imports this module too, at every boot. Under TCG each
module imported costs milliseconds, so the agent's modules stay away from the heavier
ones (typing, enum, dataclasses, re, argparse, subprocess: 250 ms of a 360 ms start).
"""

from __future__ import annotations

import json
import struct
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAGIC = b"\xa5VAG"
_HEAD = struct.Struct(">4sBBHIII")
_CHECK = struct.Struct(">I")
_CREDIT = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _CHECK.size
MAX_PAYLOAD = 64 * 1024
# Bytes a receiver may hold of one channel before the sender must wait for CREDIT.
WINDOW = 1024 * 1024
# A receiver grants credit once it has consumed this much since its last grant.
CREDIT_BATCH = WINDOW // 4
FLUSH = bytes(HEADER_SIZE + MAX_PAYLOAD)
# The virtio-serial port the agent listens on (QEMU `virtserialport name=`).
PORT_NAME = "org.vers.agent.0"
# An OPEN larger than a frame is sent in pieces, all but the last flagged MORE; a request
# may take this much in all (a command line is at most about 2 MiB on Linux).
MORE = 1
MAX_REQUEST = 8 * 1024 * 1024


class FrameType:
    HELLO = 1  # stream 0; JSON. Starts a conversation (host) or answers it (guest).
    OPEN = 2  # host to guest; JSON request that opens a new stream
    MESSAGE = 3  # JSON on an open stream, either way
    DATA = 4  # bytes of one channel
    END = 5  # no more DATA on this channel
    CREDIT = 6  # 4-byte count: the sender may send that many more bytes on the channel
    CLOSE = 7  # the stream is over (from the host: cancel; from the guest: done)


class Channel:
    INPUT = 0  # stdin of a command, content of a file being written
    STDOUT = 1  # stdout of a command, content of a file being read
    STDERR = 2
    ALL = (INPUT, STDOUT, STDERR)


STREAM_NAMES = {Channel.STDOUT: "stdout", Channel.STDERR: "stderr"}


class ProtocolError(Exception):
    """The other side sent something this version cannot make sense of."""


class Frame:
    __slots__ = ("flags", "payload", "stream", "type")

    def __init__(self, frame_type: int, stream: int, flags: int, payload: bytes) -> None:
        self.type = frame_type
        self.stream = stream
        self.flags = flags
        self.payload = payload

    def channel(self) -> int:
        """The channel of a DATA, END or CREDIT frame."""
        if self.flags not in Channel.ALL:
            raise ProtocolError(f"no such channel: {self.flags}")
        return self.flags

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.payload)
        except ValueError as exc:
            raise ProtocolError(f"frame payload is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ProtocolError("frame payload is not a JSON object")
        return value

    def credit(self) -> int:
        if len(self.payload) != _CREDIT.size:
            raise ProtocolError("CREDIT frame of the wrong size")
        amount: int = _CREDIT.unpack(self.payload)[0]
        return amount


def encode(frame_type: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One frame, header and payload; `payload` must be at most MAX_PAYLOAD bytes."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = _HEAD.pack(MAGIC, frame_type, flags, 0, stream, len(payload), zlib.crc32(payload))
    return head + _CHECK.pack(zlib.crc32(head)) + payload


def encode_json(frame_type: int, stream: int, value: dict[str, Any]) -> bytes:
    return encode(frame_type, stream, json.dumps(value, separators=(",", ":")).encode())


def encode_open(stream: int, request: dict[str, Any]) -> bytes:
    """The OPEN frames of a request, as many as its JSON needs."""
    payload = json.dumps(request, separators=(",", ":")).encode()
    if len(payload) > MAX_REQUEST:
        raise ValueError(f"the request takes {len(payload)} bytes, more than {MAX_REQUEST}")
    pieces = [payload[i : i + MAX_PAYLOAD] for i in range(0, len(payload), MAX_PAYLOAD)] or [b""]
    return b"".join(
        encode(FrameType.OPEN, stream, piece, MORE if number < len(pieces) - 1 else 0)
        for number, piece in enumerate(pieces)
    )


def encode_credit(stream: int, channel: int, amount: int) -> bytes:
    return encode(FrameType.CREDIT, stream, _CREDIT.pack(amount), channel)


class FrameDecoder:
    """Whole frames out of a byte stream, skipping anything that is not one.

    `skipped` counts the bytes thrown away; after a handshake a side that sees it grow
    knows the stream is corrupt.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.skipped = 0

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        position = 0
        end_of_data = len(buffer)
        while end_of_data - position >= HEADER_SIZE:
            if buffer[position : position + 4] != MAGIC:
                found = buffer.find(MAGIC, position + 1)
                if found < 0:
                    # Keep a tail that may be the start of the next magic.
                    keep_from = max(position, end_of_data - (len(MAGIC) - 1))
                    self.skipped += keep_from - position
                    position = keep_from
                    break
                self.skipped += found - position
                position = found
                continue
            head = bytes(buffer[position : position + _HEAD.size])
            (head_check,) = _CHECK.unpack_from(buffer, position + _HEAD.size)
            _, frame_type, flags, _, stream, length, payload_check = _HEAD.unpack(head)
            if zlib.crc32(head) != head_check or length > MAX_PAYLOAD:
                self.skipped += 1
                position += 1
                continue
            end = position + HEADER_SIZE + length
            if end > end_of_data:
                break
            payload = bytes(buffer[position + HEADER_SIZE : end])
            if zlib.crc32(payload) != payload_check:
                # A header whose payload is not its own: the tail of an older conversation
                # completed by newer bytes. Look for frames inside what it swallowed.
                self.skipped += 1
                position += 1
                continue
            frames.append(Frame(frame_type, stream, flags, payload))
            position = end
        del buffer[:position]
        return frames


def error_message(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The MESSAGE an agent sends when a request fails; `code` is one of ERROR_CODES."""
    return {"error": {"code": code, "message": message, **details}}


# What a request can fail with. A host maps them to its own errors by code, never by text.
ERROR_CODES = (
    "bad_request",  # the request itself is malformed or asks for something impossible
    "cwd_not_found",  # exec: the working directory does not exist
    "not_found",  # files: no such file (read) or no such directory (write)
    "not_regular",  # files: a directory, device, FIFO or socket
    "too_large",  # files: larger than the request's max_bytes; "size" says how large
    "io_error",  # files: the guest's file system refused (permissions, full disk …)
    "internal",  # the agent failed; its message says how
)
