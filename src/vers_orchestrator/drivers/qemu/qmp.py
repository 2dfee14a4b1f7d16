"""A small QMP client over a unix socket.

QEMU's monitor socket serves one client at a time, so the driver connects per operation and
serialises operations on a VM; a connection is never kept between calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from types import TracebackType
from typing import Any

from vers_orchestrator.drivers.base import DriverError

# Query replies are small, but an error from a failed migration can quote long paths.
STREAM_LIMIT = 1024 * 1024


class QmpError(DriverError):
    """QEMU answered a command with an error, or the monitor connection failed."""

    def __init__(self, message: str, error_class: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class


class QmpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0

    @classmethod
    async def connect(cls, socket_path: Path, timeout_seconds: float = 10.0) -> QmpClient:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(socket_path), limit=STREAM_LIMIT), timeout_seconds
            )
        except (OSError, TimeoutError) as exc:
            raise QmpError(f"cannot connect to QMP at {socket_path}: {exc}") from exc
        client = cls(reader, writer)
        try:
            greeting = await client._read_message(timeout_seconds)
            if "QMP" not in greeting:
                raise QmpError(f"unexpected QMP greeting: {greeting}")
            await client.execute("qmp_capabilities", timeout_seconds=timeout_seconds)
        except BaseException:
            await client.close()
            raise
        return client

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout_seconds: float = 30.0
    ) -> Any:
        self._next_id += 1
        request_id = self._next_id
        message: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments:
            message["arguments"] = arguments
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            await self._writer.drain()
        except OSError as exc:
            raise QmpError(f"QMP {command}: {exc}") from exc
        while True:
            reply = await self._read_message(timeout_seconds)
            if reply.get("id") != request_id:
                # Events (STOP, RESUME, MIGRATION …) arrive unasked; nothing here needs them.
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(
                    f"QMP {command}: {error.get('desc', error)}", str(error.get("class", ""))
                )
            return reply.get("return")

    async def _read_message(self, timeout_seconds: float) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(self._reader.readline(), timeout_seconds)
        except (OSError, TimeoutError, ValueError) as exc:
            raise QmpError(f"QMP connection failed: {exc!r}") from exc
        if not line:
            raise QmpError("QMP connection closed by QEMU")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"unexpected QMP message: {line[:200]!r}")
        return message

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> QmpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
