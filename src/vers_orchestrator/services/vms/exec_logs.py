"""What commands printed, kept on disk: per-exec chunks (to stream and re-attach) and the
per-VM log (`GET /logs`), both surviving a restart of the server.

::

    <data_dir>/exec-logs/<vm_id>/<first entry's number, 12 digits>-<segment, 6 digits>.ndjson

One record per line, chunks and exits in the very form `exec/stream` sends them::

    {"type":"start","exec_id":…,"org_id":…,"timestamp":…}
    {"type":"chunk","exec_id":…,"cursor":n,"stream":"stdout"|"stderr","data_b64":…,"timestamp":…}
    {"type":"exit","exec_id":…,"exit_code":n}

Every chunk is an entry of the VM's log, numbered from 0. A chunk's cursor counts from 1
within its exec. Retention is by size per VM (`Settings.exec_log_bytes_per_vm`): the
oldest segment goes once the VM's records pass it, and numbers stay valid (older entries
are simply gone). The log goes with its VM. An exec that was running when the server
stopped is finished at the next start with a note on stderr and exit code 255: its later
output was not seen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.store.database import utc_now

SEGMENTS_PER_LOG = 4
# Exit code of an exec whose end nobody saw (the VM died, the server restarted).
LOST_EXIT_CODE = 255
RESTART_NOTE = (
    b"vers-orchestrator: the server restarted while this command ran;"
    b" its later output was not kept\n"
)
# Runs remembered per VM once their chunks are gone.
RUNS_KEPT = 1024
STDOUT, STDERR = 1, 2


@dataclass(slots=True)
class ExecRun:
    """One command's output as it arrives, then its exit code."""

    exec_id: str
    org_id: str
    vm_id: str
    # Entry number of the chunk with cursor i + 1.
    entries: array[int] = field(default_factory=lambda: array("q"))
    exit_code: int | None = None
    # Set (and replaced) whenever a chunk or the exit arrives, to wake the readers.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Whether its start is on disk: written with its first chunk or its exit, so that a
    # command that never ran leaves nothing behind.
    recorded: bool = False

    @property
    def finished(self) -> bool:
        return self.exit_code is not None

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(frozen=True, slots=True)
class LogEntry:
    exec_id: str
    stream: str
    data_b64: str
    timestamp: str


@dataclass(slots=True)
class _Segment:
    first: int  # number of its first entry
    path: Path
    size: int


def record_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class VmLog:
    def __init__(self, directory: Path, byte_limit: int) -> None:
        self._directory = directory
        self._segment_limit = max(byte_limit // SEGMENTS_PER_LOG, 64 * 1024)
        self._byte_limit = byte_limit
        self._segments: list[_Segment] = []
        # Byte offset of each kept entry within its segment (entry number - dropped), and
        # its stream, so that a filtered read skips the others without reading them.
        self._offsets: array[int] = array("q")
        self._streams: array[int] = array("b")
        self.dropped = 0
        self.count = 0
        self.runs: OrderedDict[str, ExecRun] = OrderedDict()
        self._append_fd: int | None = None
        self._sequence = 0
        self._vm_id = directory.name
        self._load()

    # -- writing -------------------------------------------------------------------

    def start(self, exec_id: str, org_id: str) -> ExecRun:
        """A new run, kept in memory until it has output or an exit (see `discard`)."""
        run = ExecRun(exec_id, org_id, self._vm_id)
        self.runs[exec_id] = run
        self._forget_old_runs()
        return run

    def discard(self, run: ExecRun) -> None:
        """Forget a run whose command never ran (its exec_id may be used again)."""
        if not run.recorded and self.runs.get(run.exec_id) is run:
            del self.runs[run.exec_id]

    def _record_start(self, run: ExecRun) -> None:
        if not run.recorded:
            run.recorded = True
            start = {
                "type": "start",
                "exec_id": run.exec_id,
                "org_id": run.org_id,
                "timestamp": rfc3339(utc_now()),
            }
            self._append(record_line(start))

    def add(self, run: ExecRun, stream: str, data: bytes) -> None:
        if not data:
            return
        self._record_start(run)
        record = {
            "type": "chunk",
            "exec_id": run.exec_id,
            "cursor": len(run.entries) + 1,
            "stream": stream,
            "data_b64": base64.b64encode(data).decode("ascii"),
            "timestamp": rfc3339(utc_now()),
        }
        number = self.count
        self._offsets.append(self._append(record_line(record)))
        self._streams.append(_stream_code(stream))
        self.count += 1
        run.entries.append(number)
        run.wake()

    def finish(self, run: ExecRun, exit_code: int) -> None:
        self._record_start(run)
        run.exit_code = exit_code
        self._append(record_line(self.exit_record(run)))
        run.wake()

    @staticmethod
    def exit_record(run: ExecRun) -> dict[str, Any]:
        return {"type": "exit", "exec_id": run.exec_id, "exit_code": run.exit_code}

    def _append(self, line: bytes) -> int:
        """Write a record; returns its offset within the current segment."""
        if not self._segments or self._segments[-1].size >= self._segment_limit:
            self._new_segment()
        segment = self._segments[-1]
        assert self._append_fd is not None
        offset = segment.size
        os.write(self._append_fd, line)
        segment.size += len(line)
        return offset

    def _new_segment(self) -> None:
        if self._append_fd is not None:
            os.close(self._append_fd)
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sequence += 1
        path = self._directory / f"{self.count:012d}-{self._sequence:06d}.ndjson"
        # Command output may hold secrets: for the server's user only.
        self._append_fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        self._segments.append(_Segment(self.count, path, path.stat().st_size))
        while len(self._segments) > 1 and self._size() > self._byte_limit:
            oldest = self._segments.pop(0)
            oldest.path.unlink(missing_ok=True)
            gone = self._segments[0].first - self.dropped
            del self._offsets[:gone]
            del self._streams[:gone]
            self.dropped = self._segments[0].first

    def _size(self) -> int:
        return sum(segment.size for segment in self._segments)

    def _forget_old_runs(self) -> None:
        """Keep RUNS_KEPT runs, dropping the oldest finished ones (running ones stay)."""
        excess = len(self.runs) - RUNS_KEPT
        if excess > 0:
            for exec_id in [key for key, run in self.runs.items() if run.finished][:excess]:
                del self.runs[exec_id]

    def close(self) -> None:
        if self._append_fd is not None:
            os.close(self._append_fd)
            self._append_fd = None

    # -- reading -------------------------------------------------------------------

    def _read_line(self, number: int) -> bytes | None:
        if not self.dropped <= number < self.count:
            return None
        firsts = [segment.first for segment in self._segments]
        # Segments without chunks share their first number with the next: take the last.
        segment = self._segments[bisect_right(firsts, number) - 1]
        try:
            with segment.path.open("rb") as source:
                source.seek(self._offsets[number - self.dropped])
                return source.readline()
        except FileNotFoundError:
            return None

    def record(self, number: int) -> dict[str, Any] | None:
        """Entry `number`, or None when it is gone."""
        line = self._read_line(number)
        if line is None:
            return None
        value: dict[str, Any] = json.loads(line)
        return value

    def chunk_line(self, run: ExecRun, index: int) -> bytes | None:
        """The stream line of `run`'s chunk number `index + 1`, or None when it is gone."""
        return self._read_line(run.entries[index])

    def entries(
        self, offset: int, max_entries: int, stream: str | None
    ) -> tuple[list[LogEntry], int, bool]:
        """Entries from number `offset` on (of `stream` only, if given); the next offset;
        whether that is the end of what is kept."""
        wanted = None if stream is None else _stream_code(stream)
        position = max(offset, self.dropped)
        found: list[LogEntry] = []
        while position < self.count and len(found) < max_entries:
            kept = position - self.dropped
            position += 1
            if wanted is not None and self._streams[kept] != wanted:
                continue
            record = self.record(position - 1)
            if record is not None:
                found.append(
                    LogEntry(
                        record["exec_id"], record["stream"], record["data_b64"], record["timestamp"]
                    )
                )
        return found, position, position >= self.count

    # -- after a restart -------------------------------------------------------------

    def _load(self) -> None:
        paths = sorted(self._directory.glob("*.ndjson"))
        for path in paths:
            first = int(path.stem.partition("-")[0])
            self._sequence = max(self._sequence, int(path.stem.partition("-")[2] or 0))
            if not self._segments:
                self.dropped = self.count = first
            self._segments.append(_Segment(first, path, path.stat().st_size))
            for offset, record in _records(path):
                self._replay(record, offset)
        if self._segments:
            self._append_fd = os.open(
                self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
            )
        for run in self.runs.values():
            if not run.finished:
                self.add(run, "stderr", RESTART_NOTE)
                self.finish(run, LOST_EXIT_CODE)

    def _replay(self, record: dict[str, Any], offset: int) -> None:
        kind = record.get("type")
        run = self.runs.get(record.get("exec_id", ""))
        if kind == "start":
            self.runs[record["exec_id"]] = ExecRun(
                record["exec_id"], record["org_id"], self._vm_id, recorded=True
            )
        elif kind == "chunk":
            self._offsets.append(offset)
            self._streams.append(_stream_code(record.get("stream")))
            if run is not None:
                run.entries.append(self.count)
            self.count += 1
        elif kind == "exit" and run is not None:
            run.exit_code = int(record["exit_code"])


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    offset = 0
    with path.open("rb") as source:
        for line in source:
            if line.endswith(b"\n"):  # a line cut short by a crash is skipped
                with contextlib.suppress(ValueError):
                    yield offset, json.loads(line)
            offset += len(line)


class ExecLogs:
    """The exec logs of every VM of this server."""

    def __init__(self, directory: Path, bytes_per_vm: int) -> None:
        self._directory = directory
        self._bytes_per_vm = bytes_per_vm
        self._logs: dict[str, VmLog] = {}

    def of(self, vm_id: str) -> VmLog:
        log = self._logs.get(vm_id)
        if log is None:
            log = self._logs[vm_id] = VmLog(self._directory / vm_id, self._bytes_per_vm)
        return log

    def run(self, vm_id: str, exec_id: str) -> ExecRun | None:
        return self.of(vm_id).runs.get(exec_id)

    def forget_vm(self, vm_id: str) -> None:
        """Remove the VM's log, on disk too."""
        log = self._logs.pop(vm_id, None)
        if log is not None:
            log.close()
        shutil.rmtree(self._directory / vm_id, ignore_errors=True)

    def keep_only(self, vm_ids: set[str]) -> None:
        """Remove the logs of VMs that are gone (deleted while the server was down)."""
        if not self._directory.is_dir():
            return
        for path in self._directory.iterdir():
            if path.is_dir() and path.name not in vm_ids:
                self.forget_vm(path.name)

    def close(self) -> None:
        for log in self._logs.values():
            log.close()


def _stream_code(stream: object) -> int:
    """An entry's stream as kept in VmLog._streams (anything not stderr counts as stdout)."""
    return STDERR if stream == "stderr" else STDOUT
