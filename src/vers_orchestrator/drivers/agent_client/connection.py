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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vers_orchestrator.agent import protocol
from vers_orchestrator.agent.protocol import Channel, Frame, FrameType
from vers_orchestrator.drivers.base import AgentUnavailable, GuestAgentError, InvalidRequest

READ_SIZE = 256 * 1024
# How long a commit waits for requests already sent to reach the agent (see `quiesced`).
QUIESCE_TIMEOUT_SECONDS = 2.0
MAX_UNREAD_MESSAGES = 64


@dataclass(frozen=True, slots=True)
class Timeouts:
    # A request's first answer comes within this, or the agent is taken for gone. The
    # agent answers at once (a command runs after "started"); a loaded guest may not.
    reply_seconds: float = 30.0
    # While a stream waits longer than this for its next frame, the agent is pinged; no
    # pong within `ping_seconds` breaks the connection (a frozen or stopped agent).
    heartbeat_seconds: float = 15.0
    ping_seconds: float = 15.0


# Stands for "the connection's reply timeout" where a timeout is a parameter.
REPLY = -1.0


class AgentStream:
    """One request: frames from the agent in arrival order, and data to it within credit.

    The agent is not trusted with the host's memory: a stream holds at most a window of
    unread data per channel and a bounded number of unread messages, and an agent that
    sends more breaks its connection.
    """

    def __init__(self, connection: AgentConnection, stream_id: int) -> None:
        self._connection = connection
        self.id = stream_id
        self._frames: asyncio.Queue[Frame | AgentUnavailable] = asyncio.Queue()
        self._credit = {channel: protocol.WINDOW for channel in Channel.ALL}
        self._credit_changed = asyncio.Event()
        self._unacknowledged = {channel: 0 for channel in Channel.ALL}
        self._unread = {channel: 0 for channel in Channel.ALL}
        self._unread_messages = 0
        # True once the agent has said anything: it has read the request.
        self.acknowledged = False
        self.closed = False

    async def next(self, timeout_seconds: float | None = None) -> Frame:
        """The next MESSAGE, DATA, END or CLOSE. Raises AgentUnavailable if the connection
        broke, or if nothing came within `timeout_seconds` (None: as long as the agent
        answers pings: a command may run for days).

        Taking a DATA frame is consuming it: the agent may send that much more.
        """
        item = await self._wait(timeout_seconds)
        if isinstance(item, AgentUnavailable):
            self._frames.put_nowait(item)  # every later call fails the same way
            raise item
        if item.type == FrameType.DATA:
            channel = item.channel()
            self._unread[channel] -= len(item.payload)
            self._unacknowledged[channel] += len(item.payload)
            if self._unacknowledged[channel] >= protocol.CREDIT_BATCH and not self.closed:
                amount, self._unacknowledged[channel] = self._unacknowledged[channel], 0
                await self._connection.write(protocol.encode_credit(self.id, channel, amount))
        else:
            self._unread_messages -= 1
            if item.type == FrameType.CLOSE:
                self._finished()
        return item

    async def _wait(self, timeout_seconds: float | None) -> Frame | AgentUnavailable:
        timeouts = self._connection.timeouts
        if timeout_seconds == REPLY:
            timeout_seconds = timeouts.reply_seconds
        if timeout_seconds is not None:
            try:
                return await asyncio.wait_for(self._frames.get(), timeout_seconds)
            except TimeoutError:
                raise AgentUnavailable(
                    f"the guest agent did not answer within {timeout_seconds:g} s"
                ) from None
        while True:
            try:
                return await asyncio.wait_for(self._frames.get(), timeouts.heartbeat_seconds)
            except TimeoutError:
                await self._connection.check_alive()

    async def message(self, timeout_seconds: float | None = REPLY) -> dict[str, Any]:
        """The next frame, which must be a MESSAGE; by default within the reply timeout."""
        frame = await self.next(timeout_seconds)
        if frame.type != FrameType.MESSAGE:
            raise AgentUnavailable(f"guest agent: expected a message, got frame type {frame.type}")
        return frame.json()

    async def send(self, channel: int, data: bytes) -> None:
        """Send `data`, waiting for credit as needed (as long as the agent answers pings)."""
        view = memoryview(data)
        while view:
            while self._credit[channel] <= 0:
                if self.closed:
                    raise GuestAgentError("guest agent closed the stream")
                self._credit_changed.clear()
                try:
                    await asyncio.wait_for(
                        self._credit_changed.wait(), self._connection.timeouts.heartbeat_seconds
                    )
                except TimeoutError:
                    await self._connection.check_alive()
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
        """Called by the connection's reader; raises AgentUnavailable on a breach."""
        self.acknowledged = True
        if frame.type == FrameType.CREDIT:
            self._credit[frame.channel()] += frame.credit()
            self._credit_changed.set()
            return
        if frame.type == FrameType.DATA:
            channel = frame.channel()
            self._unread[channel] += len(frame.payload)
            if self._unread[channel] > protocol.WINDOW:
                raise AgentUnavailable("the guest agent sent more data than it had credit for")
        else:
            self._unread_messages += 1
            if self._unread_messages > MAX_UNREAD_MESSAGES:
                raise AgentUnavailable("the guest agent sent more messages than were read")
        self._frames.put_nowait(frame)

    def _fail(self, error: AgentUnavailable) -> None:
        self._frames.put_nowait(error)
        self._credit_changed.set()

    def _finished(self) -> None:
        self.closed = True
        self._credit_changed.set()
        self._connection.forget(self)


class AgentConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        self.timeouts = timeouts
        self._reader = reader
        self._writer = writer
        self._decoder = protocol.FrameDecoder()
        self._write_lock = asyncio.Lock()
        self._streams: dict[int, AgentStream] = {}
        self._ids = itertools.count(1)
        self._open_gate = asyncio.Event()
        self._open_gate.set()
        self._reading: asyncio.Task[None] | None = None
        self.broken: AgentUnavailable | None = None
        self._pinging: asyncio.Future[None] | None = None
        # The agent's HELLO: version, pid, boot_id …
        self.agent: dict[str, Any] = {}

    @classmethod
    async def connect(cls, socket_path: Path, ready_timeout: float) -> AgentConnection:
        """Connect to the agent behind `socket_path`, waiting up to `ready_timeout` seconds
        for it to answer (a guest that is still booting answers once its agent starts)."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError as exc:
            raise AgentUnavailable(f"cannot connect to the guest agent: {exc}") from exc
        return await cls.start(reader, writer, ready_timeout)

    @classmethod
    async def start(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ready_timeout: float,
        timeouts: Timeouts = Timeouts(),
    ) -> AgentConnection:
        connection = cls(reader, writer, timeouts)
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
                raise AgentUnavailable(
                    f"the guest agent did not answer within {timeout_seconds:g} s"
                )
            try:
                data = await asyncio.wait_for(self._reader.read(READ_SIZE), remaining)
            except TimeoutError:
                continue
            except OSError as exc:
                raise AgentUnavailable(f"guest agent connection failed: {exc}") from exc
            if not data:
                raise AgentUnavailable("guest agent connection closed")
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
                        raise AgentUnavailable(f"guest agent refused: {answer['error']}")
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
                    raise AgentUnavailable("guest agent connection closed")
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
                # Skipped bytes are an agent that restarted (FLUSH, then its HELLO) or a
                # corrupt stream: which one, the next frame tells.
                if self._decoder.skipped > len(protocol.FLUSH):
                    raise AgentUnavailable("guest agent sent bytes that are not frames")
        except AgentUnavailable as exc:
            self._break(exc)
        except (OSError, protocol.ProtocolError, ValueError) as exc:
            self._break(AgentUnavailable(f"guest agent connection failed: {exc!r}"))

    def _dispatch(self, frame: Frame) -> None:
        if frame.type == FrameType.HELLO:
            raise AgentUnavailable("the guest agent restarted")
        if self._decoder.skipped:
            raise AgentUnavailable("guest agent sent bytes that are not frames")
        stream = self._streams.get(frame.stream)
        if stream is not None:
            stream._deliver(frame)

    def _break(self, error: AgentUnavailable) -> None:
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
                error = AgentUnavailable(f"guest agent connection failed: {exc!r}")
                self._break(error)
                raise error from exc

    async def open(self, request: dict[str, Any]) -> AgentStream:
        """Send a request (OPEN) and return its stream."""
        await self._open_gate.wait()
        self.raise_if_broken()
        stream = AgentStream(self, next(self._ids))
        try:
            frames = protocol.encode_open(stream.id, request)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        self._streams[stream.id] = stream
        await self.write(frames)
        return stream

    async def check_alive(self) -> None:
        """Ping the agent (one ping at a time for all waiting streams); no pong within
        `timeouts.ping_seconds` breaks the connection, and this raises AgentUnavailable."""
        self.raise_if_broken()
        if self._pinging is None or self._pinging.done():
            self._pinging = asyncio.ensure_future(self._ping())
        await asyncio.shield(self._pinging)

    async def _ping(self) -> None:
        stream = await self.open({"op": "ping"})
        try:
            await stream.message(self.timeouts.ping_seconds)
        except AgentUnavailable as exc:
            error = AgentUnavailable(f"the guest agent stopped answering ({exc})")
            self._break(error)
            raise error from None
        finally:
            await stream.cancel()

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
            self._break(AgentUnavailable("guest agent connection closed by the host"))
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()
