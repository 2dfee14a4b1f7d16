"""One conversation with a guest's vers-agent: the handshake, the streams, their credit.

The byte stream is a unix socket to QEMU's virtio-serial port (or any stream socket). A
connection starts with FLUSH and HELLO, skips whatever precedes the agent's answer (the
tail of an earlier conversation, after a restart of ours or a restore of the guest), and
from then on expects whole frames only. Anything else (a skipped byte, the agent saying
HELLO again because it restarted, the socket closing) breaks the connection for good:
every open stream fails with `GuestAgentError`, and the owner connects anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from vers_orchestrator.agent import protocol
from vers_orchestrator.agent.protocol import Channel, Frame, FrameType
from vers_orchestrator.drivers.base import GuestAgentError

READ_SIZE = 256 * 1024
# How long a commit waits for requests already sent to reach the agent (see `quiesced`).
QUIESCE_TIMEOUT_SECONDS = 2.0


class AgentStream:
    """One request: frames from the agent in arrival order, and data to it within credit."""

    def __init__(self, connection: AgentConnection, stream_id: int) -> None:
        self._connection = connection
        self.id = stream_id
        self._frames: asyncio.Queue[Frame | GuestAgentError] = asyncio.Queue()
        self._credit = {channel: protocol.WINDOW for channel in Channel.ALL}
        self._credit_changed = asyncio.Event()
        self._unacknowledged = {channel: 0 for channel in Channel.ALL}
        # True once the agent has said anything: it has read the request.
        self.acknowledged = False
        self.closed = False

    async def next(self) -> Frame:
        """The next MESSAGE, DATA, END or CLOSE; raises GuestAgentError if the connection broke.

        Taking a DATA frame is consuming it: the agent may send that much more.
        """
        item = await self._frames.get()
        if isinstance(item, GuestAgentError):
            self._frames.put_nowait(item)  # every later call fails the same way
            raise item
        if item.type == FrameType.DATA:
            channel = item.channel()
            self._unacknowledged[channel] += len(item.payload)
            if self._unacknowledged[channel] >= protocol.CREDIT_BATCH and not self.closed:
                amount, self._unacknowledged[channel] = self._unacknowledged[channel], 0
                await self._connection.write(protocol.encode_credit(self.id, channel, amount))
        elif item.type == FrameType.CLOSE:
            self._finished()
        return item

    async def message(self) -> dict[str, Any]:
        """The next frame, which must be a MESSAGE; an agent's error message raises."""
        frame = await self.next()
        if frame.type != FrameType.MESSAGE:
            raise GuestAgentError(f"guest agent: expected a message, got frame type {frame.type}")
        return frame.json()

    async def send(self, channel: int, data: bytes) -> None:
        """Send `data`, waiting for credit as needed."""
        view = memoryview(data)
        while view:
            while self._credit[channel] <= 0:
                if self.closed:
                    raise GuestAgentError("guest agent closed the stream")
                self._credit_changed.clear()
                await self._credit_changed.wait()
                self._connection.raise_if_broken()
            size = min(len(view), self._credit[channel], protocol.MAX_PAYLOAD)
            self._credit[channel] -= size
            await self._connection.write(
                protocol.encode(FrameType.DATA, self.id, bytes(view[:size]), channel)
            )
            view = view[size:]

    async def end(self, channel: int) -> None:
        await self._connection.write(protocol.encode(FrameType.END, self.id, b"", channel))

    async def cancel(self) -> None:
        """Tell the agent to stop (a command keeps running, detached); idempotent."""
        if not self.closed:
            self._finished()
            with contextlib.suppress(GuestAgentError):
                await self._connection.write(protocol.encode(FrameType.CLOSE, self.id))

    def _deliver(self, frame: Frame) -> None:
        self.acknowledged = True
        if frame.type == FrameType.CREDIT:
            self._credit[frame.channel()] += frame.credit()
            self._credit_changed.set()
        else:
            self._frames.put_nowait(frame)

    def _fail(self, error: GuestAgentError) -> None:
        self._frames.put_nowait(error)
        self._credit_changed.set()

    def _finished(self) -> None:
        self.closed = True
        self._credit_changed.set()
        self._connection.forget(self)


class AgentConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = protocol.FrameDecoder()
        self._write_lock = asyncio.Lock()
        self._streams: dict[int, AgentStream] = {}
        self._ids = itertools.count(1)
        self._open_gate = asyncio.Event()
        self._open_gate.set()
        self._reading: asyncio.Task[None] | None = None
        self.broken: GuestAgentError | None = None
        # The agent's HELLO: version, pid, boot_id …
        self.agent: dict[str, Any] = {}

    @classmethod
    async def connect(cls, socket_path: Path, ready_timeout: float) -> AgentConnection:
        """Connect to the agent behind `socket_path`, waiting up to `ready_timeout` seconds
        for it to answer (a guest that is still booting answers once its agent starts)."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError as exc:
            raise GuestAgentError(f"cannot connect to the guest agent: {exc}") from exc
        return await cls.start(reader, writer, ready_timeout)

    @classmethod
    async def start(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ready_timeout: float
    ) -> AgentConnection:
        connection = cls(reader, writer)
        try:
            await connection._handshake(ready_timeout)
        except BaseException:
            await connection.close()
            raise
        connection._reading = asyncio.create_task(connection._read_frames())
        return connection

    async def _handshake(self, timeout_seconds: float) -> None:
        session = await self._say_hello()
        deadline = time.monotonic() + timeout_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestAgentError(
                    f"the guest agent did not answer within {timeout_seconds:g} s"
                )
            try:
                data = await asyncio.wait_for(self._reader.read(READ_SIZE), remaining)
            except TimeoutError:
                continue
            except OSError as exc:
                raise GuestAgentError(f"guest agent connection failed: {exc}") from exc
            if not data:
                raise GuestAgentError("guest agent connection closed")
            for frame in self._decoder.feed(data):
                if frame.type != FrameType.HELLO:
                    continue  # of an earlier conversation
                answer = frame.json()
                if answer.get("session") is None:
                    # An agent (re)started: it may or may not have read our HELLO. Say it
                    # again under a new session and wait for that answer only.
                    session = await self._say_hello()
                elif answer["session"] == session:
                    if "error" in answer:
                        raise GuestAgentError(f"guest agent refused: {answer['error']}")
                    self.agent = answer
                    self._decoder.skipped = 0
                    return

    async def _say_hello(self) -> str:
        session = secrets.token_hex(8)
        hello = {"versions": list(protocol.SUPPORTED_VERSIONS), "session": session}
        await self.write(
            protocol.FLUSH + protocol.encode_json(FrameType.HELLO, 0, hello), check=False
        )
        return session

    async def _read_frames(self) -> None:
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    raise GuestAgentError("guest agent connection closed")
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
                # Skipped bytes are an agent that restarted (FLUSH, then its HELLO) or a
                # corrupt stream: which one, the next frame tells.
                if self._decoder.skipped > len(protocol.FLUSH):
                    raise GuestAgentError("guest agent sent bytes that are not frames")
        except GuestAgentError as exc:
            self._break(exc)
        except (OSError, protocol.ProtocolError, ValueError) as exc:
            self._break(GuestAgentError(f"guest agent connection failed: {exc!r}"))

    def _dispatch(self, frame: Frame) -> None:
        if frame.type == FrameType.HELLO:
            raise GuestAgentError("the guest agent restarted")
        if self._decoder.skipped:
            raise GuestAgentError("guest agent sent bytes that are not frames")
        stream = self._streams.get(frame.stream)
        if stream is not None:
            stream._deliver(frame)

    def _break(self, error: GuestAgentError) -> None:
        if self.broken is None:
            self.broken = error
        for stream in list(self._streams.values()):
            stream._fail(error)
        self._streams.clear()
        self._writer.close()

    def raise_if_broken(self) -> None:
        if self.broken is not None:
            raise self.broken

    async def write(self, data: bytes, *, check: bool = True) -> None:
        if check:
            self.raise_if_broken()
        async with self._write_lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (OSError, RuntimeError) as exc:
                error = GuestAgentError(f"guest agent connection failed: {exc!r}")
                self._break(error)
                raise error from exc

    async def open(self, request: dict[str, Any]) -> AgentStream:
        """Send a request (OPEN) and return its stream."""
        await self._open_gate.wait()
        self.raise_if_broken()
        stream = AgentStream(self, next(self._ids))
        self._streams[stream.id] = stream
        await self.write(protocol.encode_json(FrameType.OPEN, stream.id, request))
        return stream

    def forget(self, stream: AgentStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    @contextlib.asynccontextmanager
    async def quiesced(self) -> AsyncIterator[None]:
        """No new request is sent while inside, and every request sent before has reached
        the agent (or QUIESCE_TIMEOUT_SECONDS passed).

        A commit snapshots the guest's memory: a request that QEMU had already handed to the
        guest but the agent had not read yet would be read, and run, by every VM restored
        from the commit too.
        """
        self._open_gate.clear()
        try:
            deadline = time.monotonic() + QUIESCE_TIMEOUT_SECONDS
            while time.monotonic() < deadline and self.broken is None:
                if all(stream.acknowledged for stream in self._streams.values()):
                    break
                await asyncio.sleep(0.002)
            yield
        finally:
            self._open_gate.set()

    async def close(self) -> None:
        if self.broken is None:
            self._break(GuestAgentError("guest agent connection closed by the host"))
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()
