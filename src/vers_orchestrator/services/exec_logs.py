"""What commands printed: per-exec chunks for streaming and re-attaching, per-VM logs.

Kept in the server's memory, bounded, and lost on restart (`docs/decisions.md`). A chunk's
cursor counts from 1 within its exec; a log entry's offset counts from 0 within its VM and
stays valid when older entries are dropped.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from vers_orchestrator.store.database import utc_now

# Output kept per VM for `GET /logs`, and finished execs kept for re-attaching.
LOG_BYTES_PER_VM = 4 * 1024 * 1024
FINISHED_EXECS_KEPT = 256


@dataclass(frozen=True, slots=True)
class Chunk:
    cursor: int
    stream: str  # "stdout" or "stderr"
    data: bytes
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class LogEntry:
    exec_id: str
    stream: str
    data: bytes
    timestamp: datetime


@dataclass(slots=True)
class ExecRun:
    """One command's output as it arrives, then its exit code."""

    exec_id: str
    org_id: str
    vm_id: str
    chunks: list[Chunk] = field(default_factory=list)
    exit_code: int | None = None
    # Set (and replaced) whenever a chunk or the exit arrives, to wake the readers.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.exit_code is not None

    def add(self, stream: str, data: bytes) -> None:
        if data:
            self.chunks.append(Chunk(len(self.chunks) + 1, stream, data, utc_now()))
            self._wake()

    def finish(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(slots=True)
class _VmLog:
    dropped: int = 0
    size: int = 0
    entries: list[LogEntry] = field(default_factory=list)


class ExecLogs:
    def __init__(self) -> None:
        self._runs: OrderedDict[str, ExecRun] = OrderedDict()
        self._logs: dict[str, _VmLog] = {}

    def start(self, exec_id: str, org_id: str, vm_id: str) -> ExecRun:
        run = ExecRun(exec_id, org_id, vm_id)
        self._runs[exec_id] = run
        self._runs.move_to_end(exec_id)
        finished = [key for key, kept in self._runs.items() if kept.finished]
        for key in finished[: max(0, len(finished) - FINISHED_EXECS_KEPT)]:
            del self._runs[key]
        return run

    def run(self, exec_id: str) -> ExecRun | None:
        return self._runs.get(exec_id)

    def record(self, vm_id: str, exec_id: str, stdout: bytes, stderr: bytes) -> None:
        log = self._logs.setdefault(vm_id, _VmLog())
        now = utc_now()
        for stream, data in (("stdout", stdout), ("stderr", stderr)):
            if data:
                log.entries.append(LogEntry(exec_id, stream, data, now))
                log.size += len(data)
        while log.size > LOG_BYTES_PER_VM and len(log.entries) > 1:
            log.size -= len(log.entries.pop(0).data)
            log.dropped += 1

    def read(
        self, vm_id: str, offset: int, max_entries: int, stream: str | None
    ) -> tuple[list[LogEntry], int, bool]:
        """Entries from `offset` on (of `stream` only, if given); the next offset; eof."""
        log = self._logs.get(vm_id, _VmLog())
        end = log.dropped + len(log.entries)
        position = max(offset, log.dropped)
        found: list[LogEntry] = []
        while position < end and len(found) < max_entries:
            entry = log.entries[position - log.dropped]
            position += 1
            if stream is None or entry.stream == stream:
                found.append(entry)
        return found, position, position >= end

    def forget_vm(self, vm_id: str) -> None:
        self._logs.pop(vm_id, None)
