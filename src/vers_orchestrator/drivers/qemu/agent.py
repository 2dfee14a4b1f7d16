"""A client for qemu-guest-agent over the VM's virtio-serial port (a unix socket on the host).

qemu.qmp cannot drive the agent: it sends no greeting and has no capability negotiation. The
stream also carries no framing that survives a reconnect or a restore, where the guest side
was frozen mid-conversation, so every connection starts with `guest-sync-delimited`: the
agent flushes its parser on 0xFF and prefixes its answer with 0xFF, and we skip everything
before that answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

from vers_orchestrator.drivers.base import GuestAgentError

# exec output (two streams of up to 16 MiB, base64) and 16 MiB file chunks fit in one line.
STREAM_LIMIT = 96 * 1024 * 1024
FIRST_SYNC_RETRY_SECONDS = 0.05
MAX_SYNC_RETRY_SECONDS = 1.0


class GuestAgent:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        # Set when a request went unanswered or the socket failed: the stream may now hold
        # a late answer, so the owner must reconnect (and resync) instead of reusing it.
        self.broken = False

    @classmethod
    async def connect(cls, socket_path: Path, ready_timeout: float) -> GuestAgent:
        """Connect and wait until the agent answers; it may still be booting."""
        try:
            reader, writer = await asyncio.open_unix_connection(
                str(socket_path), limit=STREAM_LIMIT
            )
        except OSError as exc:
            raise GuestAgentError(f"cannot connect to the guest agent: {exc}") from exc
        agent = cls(reader, writer)
        try:
            await agent._resync(ready_timeout)
        except BaseException:
            await agent.close()
            raise
        return agent

    async def _resync(self, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        # Right after a restore the first sync is sometimes lost; retry soon, then back off.
        retry_after = FIRST_SYNC_RETRY_SECONDS
        while time.monotonic() < deadline:
            sync_id = secrets.randbelow(2**31)
            request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
            self._writer.write(b"\xff" + json.dumps(request).encode() + b"\n")
            try:
                await self._writer.drain()
            except OSError as exc:
                raise GuestAgentError(f"guest agent connection failed: {exc}") from exc
            attempt_end = min(deadline, time.monotonic() + retry_after)
            retry_after = min(retry_after * 2, MAX_SYNC_RETRY_SECONDS)
            # Until the agent runs, QEMU holds our bytes; it may then answer several syncs.
            while (remaining := attempt_end - time.monotonic()) > 0:
                try:
                    answer = await asyncio.wait_for(self._read_delimited(), remaining)
                except TimeoutError:
                    break
                if answer.get("return") == sync_id:
                    return
        raise GuestAgentError(f"the guest agent did not answer within {timeout_seconds:g} s")

    async def _read_delimited(self) -> dict[str, Any]:
        while True:
            try:
                await self._reader.readuntil(b"\xff")
            except asyncio.LimitOverrunError as exc:
                await self._reader.readexactly(exc.consumed)
                continue
            except asyncio.IncompleteReadError as exc:
                raise GuestAgentError("guest agent connection closed") from exc
            line = await self._reader.readline()
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                return message

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout_seconds: float = 30.0
    ) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        async with self._lock:
            if self.broken:
                raise GuestAgentError("guest agent connection is broken")
            try:
                self._writer.write(json.dumps(message).encode() + b"\n")
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), timeout_seconds)
            except (OSError, TimeoutError, ValueError) as exc:
                self.broken = True
                raise GuestAgentError(f"guest agent {command}: no answer ({exc!r})") from exc
            if not line:
                self.broken = True
                raise GuestAgentError("guest agent connection closed")
        reply = json.loads(line)
        if "error" in reply:
            error = reply["error"]
            raise GuestAgentError(f"guest agent {command}: {error.get('desc', error)}")
        return reply.get("return")

    async def close(self) -> None:
        self.broken = True
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
