"""The agent's end of the conversation: the port, the frames on it, and the open streams.

A conversation starts with the host's HELLO and lasts until a host says HELLO again (a
new server, or a VM restored from a commit talking to its new host). Streams belong to
one conversation: when it ends they are told (`on_close`) and never send again. Commands
they started keep running; files half-written are removed. While no host is connected,
what streams send waits, bounded by their credit.
"""

from __future__ import annotations

import errno
import os
import sys
from collections import deque

from . import protocol
from .loop import EDGE, READ, WRITE, Loop
from .protocol import Channel, Frame, FrameType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    StreamFactory = Callable[["Connection", int, dict[str, Any]], "Stream"]

READ_SIZE = 256 * 1024
# Frames queued in one loop turn leave in writes of up to this much (the port takes at most
# 32 KiB per write; fewer writes are fewer notifications of the host).
WRITE_BATCH = 64 * 1024
AGENT_VERSION = "1.0"


class Stream:
    """One request and everything said about it; subclasses implement the operations.

    Outgoing channels start with `protocol.WINDOW` bytes of credit; the host grants more
    as it consumes. Incoming bytes are granted back with `consumed`.
    """

    def __init__(self, connection: Connection, stream_id: int) -> None:
        self.connection = connection
        self.id = stream_id
        # False once the conversation is over or the stream finished: nothing more is sent.
        self.open = True
        self.credit = {channel: protocol.WINDOW for channel in Channel.ALL}
        self._unacknowledged = {channel: 0 for channel in Channel.ALL}

    # -- sending ------------------------------------------------------------------

    def send_message(self, value: dict[str, Any]) -> None:
        if self.open:
            self.connection.send(
                protocol.encode_json(FrameType.MESSAGE, self.id, value), stream=self.id
            )

    def send_data(self, channel: int, data: bytes) -> None:
        """Send `data` on `channel`; the caller has checked that the credit covers it."""
        if not self.open:
            return
        self.credit[channel] -= len(data)
        for start in range(0, len(data), protocol.MAX_PAYLOAD):
            piece = data[start : start + protocol.MAX_PAYLOAD]
            self.connection.send(
                protocol.encode(FrameType.DATA, self.id, piece, channel), stream=self.id, bulk=True
            )

    def send_end(self, channel: int) -> None:
        if self.open:
            self.connection.send(
                protocol.encode(FrameType.END, self.id, b"", channel), stream=self.id
            )

    def consumed(self, channel: int, amount: int) -> None:
        """`amount` bytes the host sent on `channel` are dealt with; it may send more."""
        self._unacknowledged[channel] += amount
        if self.open and self._unacknowledged[channel] >= protocol.CREDIT_BATCH:
            self.connection.send(
                protocol.encode_credit(self.id, channel, self._unacknowledged[channel])
            )
            self._unacknowledged[channel] = 0

    def finish(self) -> None:
        """The stream is done: tell the host and forget it."""
        if self.open:
            self.connection.send(protocol.encode(FrameType.CLOSE, self.id), stream=self.id)
            self.open = False
        self.connection.forget(self)

    def fail(self, code: str, message: str) -> None:
        self.send_message(protocol.error_message(code, message))
        self.finish()

    # -- what the host says; the defaults refuse what an operation does not expect -------

    def on_message(self, value: dict[str, Any]) -> None:
        self.fail("bad_request", "this stream takes no messages")

    def on_data(self, channel: int, data: bytes) -> None:
        self.fail("bad_request", "this stream takes no data")

    def on_end(self, channel: int) -> None:
        self.fail("bad_request", "this stream takes no data")

    def on_credit(self, channel: int, amount: int) -> None:
        self.credit[channel] += amount

    def on_close(self) -> None:
        """The host cancelled the stream or went away; stop sending and clean up."""
        self.open = False


class Connection:
    def __init__(self, loop: Loop, fd: int, operations: dict[str, StreamFactory]) -> None:
        """Serve `fd`, the port (or any stream socket), which must be non-blocking."""
        self.loop = loop
        self._operations = operations
        self._fd = fd
        self._decoder = protocol.FrameDecoder()
        # Control frames go before data, except behind data of their own stream: a stream's
        # frames always leave in the order it sent them.
        self._urgent: deque[bytes] = deque()
        self._bulk: deque[tuple[int, bytes]] = deque()
        self._queued: dict[int, int] = {}
        # The frame being written; it is always finished, even across conversations, so
        # the host never waits on half a frame.
        self._writing: memoryview | None = None
        self.streams: dict[int, Stream] = {}
        # Requests that come in several OPEN frames, by stream, until the last one.
        self._opening: dict[int, bytearray] = {}
        self.session: str | None = None
        loop.watch(self._fd, READ | WRITE | EDGE, self._on_ready)
        loop.before_wait(self._flush)

    def announce(self) -> None:
        """Tell a host that may be listening that a new agent started (the old one's streams
        are gone)."""
        self.send_raw(protocol.FLUSH)
        self.send(protocol.encode_json(FrameType.HELLO, 0, self._hello(None)))

    # -- sending ------------------------------------------------------------------

    def send(self, frame: bytes, *, stream: int = 0, bulk: bool = False) -> None:
        """Queue `frame` and write what the port takes; `bulk` is DATA of `stream`."""
        if bulk or self._queued.get(stream):
            self._bulk.append((stream, frame))
            self._queued[stream] = self._queued.get(stream, 0) + 1
        else:
            self._urgent.append(frame)

    def send_raw(self, data: bytes) -> None:
        self._urgent.append(data)

    def _next_frame(self) -> bytes | None:
        if self._urgent:
            return self._urgent.popleft()
        if self._bulk:
            stream, frame = self._bulk.popleft()
            left = self._queued[stream] - 1
            if left:
                self._queued[stream] = left
            else:
                del self._queued[stream]
            return frame
        return None

    def _flush(self) -> None:
        while True:
            if self._writing is None:
                batch = []
                size = 0
                while size < WRITE_BATCH and (frame := self._next_frame()) is not None:
                    batch.append(frame)
                    size += len(frame)
                if not batch:
                    return
                self._writing = memoryview(b"".join(batch))
            try:
                written = os.write(self._fd, self._writing)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EPIPE):
                    return
                raise
            self._writing = self._writing[written:] if written < len(self._writing) else None

    # -- receiving ----------------------------------------------------------------

    def _on_ready(self, events: int) -> None:
        # Edge-triggered: read until the port has nothing more, then write what waits.
        while True:
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                # No host is connected (it hung up, or never came); the next host's bytes
                # wake us up again. This is not where a conversation ends: the guest may
                # learn of the old host's leaving only after it has read the new one's
                # HELLO. A conversation ends with the next HELLO.
                break
            for frame in self._decoder.feed(data):
                self._dispatch(frame)
        self._flush()

    def _end_conversation(self) -> None:
        self.session = None
        self._opening.clear()
        self._urgent.clear()
        self._bulk.clear()
        self._queued.clear()
        for stream in list(self.streams.values()):
            stream.on_close()
        self.streams.clear()

    def forget(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]

    def _dispatch(self, frame: Frame) -> None:
        if frame.type == FrameType.HELLO:
            self._on_hello(frame)
            return
        if self.session is None:
            return  # bytes of a conversation that is over
        if frame.type == FrameType.OPEN:
            self._open(frame)
            return
        stream = self.streams.get(frame.stream)
        if stream is None:
            return  # a stream that finished or was cancelled meanwhile
        try:
            if frame.type == FrameType.MESSAGE:
                stream.on_message(frame.json())
            elif frame.type == FrameType.DATA:
                stream.on_data(frame.channel(), frame.payload)
            elif frame.type == FrameType.END:
                stream.on_end(frame.channel())
            elif frame.type == FrameType.CREDIT:
                stream.on_credit(frame.channel(), frame.credit())
            elif frame.type == FrameType.CLOSE:
                self.forget(stream)
                stream.on_close()
        except (protocol.ProtocolError, ValueError) as exc:
            stream.fail("bad_request", str(exc))

    def _on_hello(self, frame: Frame) -> None:
        try:
            hello = frame.json()
            offered = [v for v in hello.get("versions", []) if v in protocol.SUPPORTED_VERSIONS]
            session = str(hello["session"])
        except (protocol.ProtocolError, KeyError, TypeError):
            return
        self._end_conversation()
        self.send_raw(protocol.FLUSH)
        if not offered:
            supported = list(protocol.SUPPORTED_VERSIONS)
            reply = {"session": session, "error": f"this agent speaks versions {supported}"}
            self.send(protocol.encode_json(FrameType.HELLO, 0, reply))
            return
        self.session = session
        self.send(protocol.encode_json(FrameType.HELLO, 0, self._hello(session, max(offered))))

    def _hello(
        self, session: str | None, version: int = protocol.PROTOCOL_VERSION
    ) -> dict[str, Any]:
        return {
            "version": version,
            "session": session,
            "agent": f"vers-agent {AGENT_VERSION}",
            "pid": os.getpid(),
            "boot_id": _boot_id(),
        }

    def _open(self, frame: Frame) -> None:
        if frame.stream in self.streams or frame.stream == 0:
            self.send(
                protocol.encode_json(
                    FrameType.MESSAGE,
                    frame.stream,
                    protocol.error_message("bad_request", "stream id already in use"),
                )
            )
            return
        opening = self._opening.get(frame.stream)
        if opening is not None or frame.flags & protocol.MORE:
            opening = self._opening.setdefault(frame.stream, bytearray())
            opening += frame.payload
            if frame.flags & protocol.MORE and len(opening) <= protocol.MAX_REQUEST:
                return
            del self._opening[frame.stream]
            frame = Frame(frame.type, frame.stream, 0, bytes(opening))
        try:
            if len(frame.payload) > protocol.MAX_REQUEST:
                raise protocol.ProtocolError(
                    f"a request takes at most {protocol.MAX_REQUEST} bytes"
                )
            request = frame.json()
            factory = self._operations.get(str(request.get("op")))
            if factory is None:
                raise protocol.ProtocolError(f"unknown operation {request.get('op')!r}")
        except protocol.ProtocolError as exc:
            stream = Stream(self, frame.stream)
            self.streams[frame.stream] = stream
            stream.fail("bad_request", str(exc))
            return
        try:
            stream = factory(self, frame.stream, request)
        except Exception as exc:  # a bug in an operation must not take the agent down
            log(f"{request.get('op')} failed: {exc!r}")
            stream = Stream(self, frame.stream)
            self.streams[frame.stream] = stream
            stream.fail("internal", f"{type(exc).__name__}: {exc}")
            return
        if stream.open:
            self.streams[frame.stream] = stream


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot_id:
            return boot_id.read().strip()
    except OSError:
        return ""


def log(message: str) -> None:
    print(f"vers-agent: {message}", file=sys.stderr, flush=True)
