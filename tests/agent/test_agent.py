"""vers-agent itself, run on this machine over a socketpair instead of a virtio-serial port.

The same program guests run (`python -m vers_orchestrator.agent`), spoken to by the host's
own client, without a VM: what the protocol promises across reconnects, restarts, and
streams that stop reading. (Everything a user does through it is tested on real VMs in
tests/drivers and tests/api.) No cgroups here: the agent kills by session instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from vers_orchestrator.agent import protocol
from vers_orchestrator.agent.protocol import FrameType
from vers_orchestrator.drivers.agent_client import operations
from vers_orchestrator.drivers.agent_client.connection import (
    AgentConnection,
    AgentStream,
    Timeouts,
)
from vers_orchestrator.drivers.base import (
    AgentUnavailable,
    ExecRequest,
    GuestAgentError,
    InvalidRequest,
)


class LocalAgent:
    """An agent process serving one end of a socketpair; the test holds the other."""

    def __init__(self) -> None:
        self.host_end, self._guest_end = socket.socketpair()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "vers_orchestrator.agent",
                "--fd", str(self._guest_end.fileno()), "--cgroup-root", "",
            ],
            pass_fds=[self._guest_end.fileno()],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    async def connect(self) -> AgentConnection:
        # A fresh file description each time: closing one connection leaves the socket.
        reader, writer = await asyncio.open_connection(sock=self.host_end.dup())
        return await AgentConnection.start(reader, writer, 10.0)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.host_end.close()
        self._guest_end.close()


@asynccontextmanager
async def agent() -> AsyncIterator[LocalAgent]:
    local = LocalAgent()
    local.start()
    try:
        yield local
    finally:
        local.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_a_new_connection_is_a_new_conversation() -> None:
    async def check() -> None:
        async with agent() as local:
            first = await local.connect()
            hello = first.agent
            assert (hello["version"], hello["agent"]) == (1, "vers-agent 1.0")
            slow = asyncio.ensure_future(
                operations.run_command(first, ExecRequest(argv=("sleep", "30")))
            )
            await asyncio.sleep(0.3)
            await first.close()
            with pytest.raises(GuestAgentError):
                await slow
            second = await local.connect()
            result = await operations.run_command(second, ExecRequest(argv=("echo", "again")))
            assert result.stdout == b"again\n"
            await second.close()

    run(check)


def test_an_agent_that_restarts_breaks_the_connection() -> None:
    async def check() -> None:
        async with agent() as local:
            connection = await local.connect()
            local.kill()
            local.start()  # announces itself with a HELLO of no session
            for _ in range(200):
                if connection.broken is not None:
                    break
                await asyncio.sleep(0.05)
            assert str(connection.broken) == "the guest agent restarted"
            await connection.close()
            again = await local.connect()
            assert (await operations.ping(again))["streams"] == 0
            await again.close()

    run(check)


def test_a_stream_nobody_reads_does_not_stop_the_others(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 * protocol.WINDOW))

    async def check() -> None:
        async with agent() as local:
            connection = await local.connect()
            async with operations.open_file(connection, str(big)) as stalled:
                # Its window fills and the agent waits for credit: nothing else does.
                assert stalled.size == 8 * protocol.WINDOW
                await asyncio.sleep(0.5)
                result = await operations.run_command(
                    connection, ExecRequest(argv=("echo", "meanwhile"))
                )
                assert result.stdout == b"meanwhile\n"
            await connection.close()

    run(check)


def test_an_unknown_operation_is_refused() -> None:
    async def check() -> None:
        async with agent() as local:
            connection = await local.connect()
            stream = await connection.open({"op": "format_disk"})
            assert await stream.message() == {
                "error": {"code": "bad_request", "message": "unknown operation 'format_disk'"}
            }
            assert (await stream.next()).type == FrameType.CLOSE
            await connection.close()

    run(check)


def test_bad_exec_requests_are_refused() -> None:
    async def check() -> None:
        async with agent() as local:
            connection = await local.connect()
            for request, message in (
                ({"argv": []}, "argv must be a non-empty list of strings"),
                ({"argv": ["true"], "env": {"A=B": "c"}}, "env must map names without '='"),
                ({"argv": ["true"], "timeout_ms": -1}, "timeout_ms must be a non-negative"),
            ):
                stream = await connection.open({"op": "exec", **request})
                reply = await stream.message()
                assert reply["error"]["code"] == "bad_request"
                assert reply["error"]["message"].startswith(message)
            with pytest.raises(InvalidRequest, match="working directory not found: /nowhere"):
                await operations.run_command(
                    connection, ExecRequest(argv=("true",), working_dir="/nowhere")
                )
            await connection.close()

    run(check)


def test_a_timeout_without_cgroups_still_kills_the_session() -> None:
    async def check() -> None:
        async with agent() as local:
            connection = await local.connect()
            marker = f"sleep 7{os.getpid() % 100:02d}1"
            result = await operations.run_command(
                connection,
                ExecRequest(argv=("sh", "-c", f"({marker} &); sleep 60"), timeout_seconds=1.0),
            )
            assert (result.timed_out, result.exit_code) == (True, 137)
            await asyncio.sleep(0.2)
            found = await asyncio.create_subprocess_exec(
                "pgrep", "-fx", marker, stdout=asyncio.subprocess.PIPE
            )
            assert await found.communicate() == (b"", None)
            await connection.close()

    run(check)


def test_a_request_larger_than_a_frame_goes_in_pieces() -> None:
    # Above a frame's payload, below Linux's 128 KiB limit for one argument.
    argument = "x" * (protocol.MAX_PAYLOAD + 50_000)

    async def check() -> None:
        async with agent() as local:
            connection = await local.connect()
            result = await operations.run_command(
                connection, ExecRequest(argv=("sh", "-c", 'printf %s "$0" | wc -c', argument))
            )
            assert result.stdout == f"{len(argument)}\n".encode()
            await connection.close()

    run(check)


def test_an_agent_that_stops_answering_is_found_out() -> None:
    async def check() -> None:
        async with agent() as local:
            reader, writer = await asyncio.open_connection(sock=local.host_end.dup())
            quick = Timeouts(reply_seconds=2.0, heartbeat_seconds=0.5, ping_seconds=0.5)
            connection = await AgentConnection.start(reader, writer, 10.0, quick)
            running = asyncio.ensure_future(
                operations.run_command(connection, ExecRequest(argv=("sleep", "30")))
            )
            await asyncio.sleep(0.5)
            assert local.process is not None
            local.process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(AgentUnavailable, match="stopped answering"):
                    await asyncio.wait_for(running, 10)
            finally:
                local.process.send_signal(signal.SIGCONT)
            await connection.close()

    run(check)


def test_a_write_that_outlasts_the_reply_timeout_succeeds(tmp_path: Path) -> None:
    async def check() -> None:
        async with agent() as local:
            reader, writer = await asyncio.open_connection(sock=local.host_end.dup())
            quick = Timeouts(reply_seconds=1.0, heartbeat_seconds=0.5, ping_seconds=0.5)
            connection = await AgentConnection.start(reader, writer, 10.0, quick)

            async def slowly() -> AsyncIterator[bytes]:
                for _ in range(5):
                    await asyncio.sleep(0.5)
                    yield b"x" * 1000

            target = tmp_path / "slow.bin"
            written = await operations.write_file(
                connection, str(target), slowly(), mode=None, create_dirs=False
            )
            await connection.close()
        assert (written, target.read_bytes()) == (5000, b"x" * 5000)

    run(check)


async def _read_all(stream: AgentStream) -> None:
    while (await stream.next(1.0)).type != FrameType.CLOSE:
        pass


async def _flooding_agent(guest: socket.socket) -> None:
    """A peer that answers the handshake, then sends output far beyond its credit."""
    loop = asyncio.get_running_loop()
    decoder = protocol.FrameDecoder()
    while True:
        frames = decoder.feed(await loop.sock_recv(guest, 65536))
        hello = next((frame for frame in frames if frame.type == FrameType.HELLO), None)
        opened = next((frame for frame in frames if frame.type == FrameType.OPEN), None)
        if hello is not None:
            answer = {"version": 1, "session": hello.json()["session"]}
            await loop.sock_sendall(guest, protocol.encode_json(FrameType.HELLO, 0, answer))
        if opened is not None:
            started = {"started": {"pid": 1}}
            await loop.sock_sendall(
                guest, protocol.encode_json(FrameType.MESSAGE, opened.stream, started)
            )
            chunk = protocol.encode(FrameType.DATA, opened.stream, bytes(65536), 1)
            try:
                for _ in range(64):  # 4 MiB, four times the window
                    await loop.sock_sendall(guest, chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the host hung up on it, as it should
            return


def test_an_agent_that_sends_beyond_its_credit_breaks_its_connection() -> None:
    async def check() -> None:
        host, guest = socket.socketpair()
        guest.setblocking(False)
        try:
            peer = asyncio.ensure_future(_flooding_agent(guest))
            reader, writer = await asyncio.open_connection(sock=host)
            connection = await AgentConnection.start(reader, writer, 10.0)
            # Nobody reads the output meanwhile: the host must not buffer it.
            stream = await connection.open({"op": "exec", "argv": ["yes"]})
            await peer
            await asyncio.sleep(0.2)
            assert str(connection.broken) == (
                "the guest agent sent more data than it had credit for"
            )
            with pytest.raises(AgentUnavailable, match="more data than it had credit for"):
                await _read_all(stream)
            await connection.close()
        finally:
            guest.close()

    run(check)
