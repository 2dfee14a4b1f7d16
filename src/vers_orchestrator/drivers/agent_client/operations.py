"""What the host asks of vers-agent, in the driver's terms (`drivers/base.py`).

Each function opens one stream, speaks the operation's part of the protocol
(`vers_orchestrator/agent/execs.py`, `files.py`, `system.py` document the messages) and
turns the agent's error codes into the driver's exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from vers_orchestrator.agent.protocol import STREAM_NAMES, Channel, FrameType
from vers_orchestrator.drivers.agent_client.connection import REPLY, AgentConnection, AgentStream
from vers_orchestrator.drivers.base import (
    AgentUnavailable,
    ExecRequest,
    ExecResult,
    FileTooLarge,
    GuestAgentError,
    GuestFileNotFound,
    InvalidRequest,
    NotRegularFile,
    OutputSink,
)

# An exec with a timeout is killed by the agent at the deadline; the host gives up waiting
# for its answer this much later.
EXEC_ANSWER_GRACE_SECONDS = 30.0


def _raise_for(
    reply: dict[str, Any], path: str | None = None, max_bytes: int | None = None
) -> None:
    error = reply.get("error")
    if error is None:
        return
    code = error.get("code")
    message = str(error.get("message", error))
    if code == "not_found" and path is not None and message.startswith("no such file"):
        raise GuestFileNotFound(path)
    if code == "not_regular" and path is not None:
        raise NotRegularFile(path)
    if code == "too_large" and path is not None and max_bytes is not None:
        raise FileTooLarge(path, int(error.get("size", 0)), max_bytes)
    if code in ("bad_request", "cwd_not_found"):
        raise InvalidRequest(message)
    raise GuestAgentError(message)


async def _send_all(
    stream: AgentStream, channel: int, source: bytes | AsyncIterable[bytes]
) -> None:
    if isinstance(source, bytes):
        await stream.send(channel, source)
    else:
        async for chunk in source:
            await stream.send(channel, chunk)
    await stream.end(channel)


async def _answer_while_sending(stream: AgentStream, sending: asyncio.Task[None]) -> dict[str, Any]:
    """The agent's next message, while `sending` runs; a failure of either ends both.

    No reply timeout: the answer comes after the last byte, however long sending takes
    (a 1 GiB upload), as long as the agent answers pings."""
    answer = asyncio.ensure_future(stream.message(None))
    try:
        done, _ = await asyncio.wait({sending, answer}, return_when=asyncio.FIRST_COMPLETED)
        if sending in done and sending.exception() is not None:
            raise sending.exception()  # type: ignore[misc]
        return await answer
    finally:
        for task in (sending, answer):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def run_command(
    connection: AgentConnection,
    request: ExecRequest,
    sink: OutputSink | None = None,
    started: Callable[[], None] | None = None,
) -> ExecResult:
    """Run `request.argv`; without `sink` the output is kept up to `request.output_limit`
    bytes per stream, with `sink` every chunk is handed to it as it comes (awaited, so a
    slow sink slows the command down) and the result carries no output. `started` is
    called once the agent has started the command (or reported that it could not)."""
    if not request.argv:
        raise InvalidRequest("argv must not be empty")
    stream = await connection.open(
        {
            "op": "exec",
            "argv": list(request.argv),
            "env": dict(request.env),
            "cwd": request.working_dir,
            "stdin": bool(request.stdin),
            "timeout_ms": None
            if request.timeout_seconds is None
            else round(request.timeout_seconds * 1000),
            "output_limit": None if sink is not None else request.output_limit,
            "name": request.name,
        }
    )
    feeding: asyncio.Task[None] | None = None
    finished = False
    truncated = {Channel.STDOUT: False, Channel.STDERR: False}
    try:
        _raise_for(await stream.message())
        if started is not None:
            started()
        if request.stdin:
            feeding = asyncio.create_task(_send_all(stream, Channel.INPUT, request.stdin))
        deadline = None
        if request.timeout_seconds is not None:
            deadline = time.monotonic() + request.timeout_seconds + EXEC_ANSWER_GRACE_SECONDS
        output = {Channel.STDOUT: bytearray(), Channel.STDERR: bytearray()}
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                frame = await asyncio.wait_for(stream.next(), remaining)
            except TimeoutError:
                raise AgentUnavailable("the guest agent did not report the command's end") from None
            if frame.type == FrameType.DATA:
                channel = frame.channel()
                if sink is not None:
                    await sink(STREAM_NAMES[channel], frame.payload)
                    continue
                # The agent keeps to the limit; the host does not take its word for it.
                room = request.output_limit - len(output[channel])
                if len(frame.payload) > room:
                    truncated[channel] = True
                output[channel] += frame.payload[: max(room, 0)]
            elif frame.type == FrameType.MESSAGE:
                reply = frame.json()
                _raise_for(reply)
                if "exit" in reply:
                    finished = True
                    exit_report = reply["exit"]
                    return ExecResult(
                        exit_code=int(exit_report["code"]),
                        stdout=bytes(output[Channel.STDOUT]),
                        stderr=bytes(output[Channel.STDERR]),
                        stdout_truncated=bool(exit_report.get("stdout_truncated"))
                        or truncated[Channel.STDOUT],
                        stderr_truncated=bool(exit_report.get("stderr_truncated"))
                        or truncated[Channel.STDERR],
                        timed_out=bool(exit_report.get("timed_out")),
                        stdout_bytes=int(exit_report.get("stdout_bytes", 0)),
                        stderr_bytes=int(exit_report.get("stderr_bytes", 0)),
                    )
            elif frame.type == FrameType.CLOSE:
                raise AgentUnavailable("the guest agent ended the command without an exit")
    finally:
        if feeding is not None:
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding
        if not finished:
            await stream.cancel()


@dataclass(slots=True)
class FileDownload:
    """A file being read: its size and mode, then its bytes as they come."""

    size: int
    mode: int
    _stream: AgentStream

    async def chunks(self) -> AsyncIterator[bytes]:
        received = 0
        while True:
            frame = await self._stream.next()
            if frame.type == FrameType.DATA:
                received += len(frame.payload)
                if received > self.size:
                    raise AgentUnavailable("the guest agent sent more than the file's size")
                yield frame.payload
            elif frame.type == FrameType.MESSAGE:
                reply = frame.json()
                _raise_for(reply)
                if "done" in reply:
                    return
            elif frame.type == FrameType.CLOSE:
                raise AgentUnavailable("the guest agent ended the read early")


@contextlib.asynccontextmanager
async def open_file(
    connection: AgentConnection, path: str, max_bytes: int | None = None
) -> AsyncIterator[FileDownload]:
    """A regular file of the guest, to read as a stream; leaving early cancels the read.

    Raises GuestFileNotFound, NotRegularFile, FileTooLarge (over `max_bytes`) or
    GuestAgentError before anything is read.
    """
    stream = await connection.open({"op": "read_file", "path": path, "max_bytes": max_bytes})
    try:
        reply = await stream.message()
        _raise_for(reply, path, max_bytes)
        info = reply["file"]
        if max_bytes is not None and int(info["size"]) > max_bytes:
            raise AgentUnavailable("the guest agent offered a file over max_bytes")
        yield FileDownload(int(info["size"]), int(info["mode"]), stream)
    finally:
        await stream.cancel()


async def read_file(connection: AgentConnection, path: str, max_bytes: int | None) -> bytes:
    async with open_file(connection, path, max_bytes) as download:
        return b"".join([chunk async for chunk in download.chunks()])


async def write_file(
    connection: AgentConnection,
    path: str,
    source: bytes | AsyncIterable[bytes],
    *,
    mode: int | None,
    create_dirs: bool,
) -> int:
    """Replace the guest's file at `path` with the bytes of `source`; returns their count.

    The agent writes beside the target and renames at the end, so the file is either the
    old one or the whole new one; an exception from `source` cancels the write.
    """
    stream = await connection.open(
        {"op": "write_file", "path": path, "mode": mode, "create_dirs": create_dirs}
    )
    try:
        ready = await stream.message()
        _raise_for(ready, path)
        sending = asyncio.create_task(_send_all(stream, Channel.INPUT, source))
        done = await _answer_while_sending(stream, sending)
        _raise_for(done, path)
        return int(done["done"]["bytes"])
    finally:
        await stream.cancel()


async def _ask(
    connection: AgentConnection,
    request: dict[str, Any],
    answer: str,
    timeout_seconds: float = REPLY,
) -> dict[str, Any]:
    """A request with one answer: the `answer` part of the agent's reply."""
    stream = await connection.open(request)
    try:
        reply = await stream.message(timeout_seconds)
        _raise_for(reply)
        part: dict[str, Any] = reply[answer]
        return part
    finally:
        await stream.cancel()


async def refresh(
    connection: AgentConnection,
    *,
    time_ns: int | None = None,
    sync_ns: int | None = None,
    seed: bytes | None = None,
    hostname: str | None = None,
    host_keys: bool = False,
    timeout_seconds: float = REPLY,
) -> dict[str, Any]:
    """Set the guest's clock to `time_ns` (or bring it towards `sync_ns` gently), reseed its
    RNG, rename it, renew its SSH host keys; nanoseconds since the epoch, host time."""
    request = {
        "op": "refresh",
        "time_ns": time_ns,
        "sync_ns": sync_ns,
        "seed": None if seed is None else seed.hex(),
        "hostname": hostname,
        "host_keys": host_keys,
    }
    return await _ask(connection, request, "done", timeout_seconds)


async def ping(connection: AgentConnection) -> dict[str, Any]:
    return await _ask(connection, {"op": "ping"}, "pong")
