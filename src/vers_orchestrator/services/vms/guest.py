"""Inside a VM: commands (answered whole, or streamed), what they printed, files, SSH.

Exec rules (docs/decisions.md § Exec and files): a call is over when the command itself
exits; a timeout kills it and everything it started and answers exit code 124 with the
output so far; a plain exec keeps at most `OUTPUT_LIMIT` bytes of each stream and says
when it cut (`stdout_truncated` …); a streamed exec has no limit. Every exec's output is
kept in the VM's exec log on disk (`exec_logs`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

from vers_orchestrator.auth import Principal
from vers_orchestrator.drivers import base as driver_api
from vers_orchestrator.errors import (
    BadRequest,
    Conflict,
    ExecNotFound,
    InvalidQuery,
    PayloadTooLarge,
    VersError,
)
from vers_orchestrator.ids import new_id
from vers_orchestrator.services.validation import validate_text
from vers_orchestrator.services.vms.context import (
    VmContext,
    canonical_or_none,
    canonical_vm_id,
)
from vers_orchestrator.services.vms.exec_logs import (
    LOST_EXIT_CODE,
    ExecRun,
    LogEntry,
    VmLog,
    record_line,
)
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.vms import Vm

# The exit code `timeout(1)` reports for a command it had to kill.
EXEC_TIMEOUT_EXIT_CODE = 124
DEFAULT_LOG_ENTRIES = 100
MAX_LOG_ENTRIES = 1000
OUTPUT_LIMIT = driver_api.DEFAULT_OUTPUT_LIMIT


@dataclass(frozen=True, slots=True)
class Command:
    """What to run, as the exec routes take it."""

    argv: Sequence[str]
    env: dict[str, str] | None = None
    working_dir: str | None = None
    stdin: bytes = b""
    # Seconds; None or 0: no timeout.
    timeout_seconds: int | None = None
    # The caller's id for the exec (a UUID), else one is made.
    exec_id: str | None = None


@dataclass(frozen=True, slots=True)
class ExecOutcome:
    exec_id: str
    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool


@dataclass(frozen=True, slots=True)
class SshKey:
    port: int
    private_key: str


@dataclass(frozen=True, slots=True)
class Download:
    """A guest file on its way out: its size, then its bytes (closing stops the read)."""

    size: int
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class ExecStream:
    """A streamed exec, and where its lines come from."""

    run: ExecRun
    log: VmLog


class Guest:
    def __init__(self, context: VmContext) -> None:
        self._context = context

    # -- exec -------------------------------------------------------------------------

    async def _prepare(
        self, principal: Principal, vm_id: str, command: Command
    ) -> tuple[Vm, driver_api.ExecRequest, ExecStream]:
        env = command.env or {}
        if not command.argv:
            raise BadRequest("command must not be empty")
        limit = self._context.settings.max_file_bytes
        if len(command.stdin) > limit:
            raise PayloadTooLarge(f"stdin is {len(command.stdin)} bytes; at most {limit}")
        for field, parts in (
            ("command", command.argv),
            ("env", (*env.keys(), *env.values())),
            ("working_dir", (command.working_dir or "",)),
        ):
            for part in parts:
                validate_text(field, part, 1 << 20)
        for name in env:
            if not name or "=" in name:
                raise BadRequest(f"invalid environment variable name: {name!r}")
        run_id = new_id()
        if command.exec_id is not None:
            canonical = canonical_or_none(command.exec_id)
            if canonical is None:
                raise BadRequest("exec_id must be a UUID")
            run_id = canonical
        vm = await self._context.alive(principal, vm_id)
        log = self._context.exec_logs.of(vm.vm_id)
        if run_id in log.runs:
            raise Conflict("exec_id is already in use")
        request = driver_api.ExecRequest(
            argv=tuple(command.argv),
            env=dict(env),
            working_dir=command.working_dir or None,
            stdin=command.stdin,
            timeout_seconds=float(command.timeout_seconds) if command.timeout_seconds else None,
            output_limit=OUTPUT_LIMIT,
            name=run_id,
        )
        return vm, request, ExecStream(log.start(run_id, principal.org_id), log)

    async def exec(self, principal: Principal, vm_id: str, command: Command) -> ExecOutcome:
        """Run a command; one that outlives its timeout is killed (exit 124)."""
        vm, request, stream = await self._prepare(principal, vm_id, command)
        run, log = stream.run, stream.log
        started = asyncio.Event()
        try:
            async with self._context.driver_call(vm.vm_id, "run the command"):
                result = await self._context.driver.exec(vm.vm_id, request, None, started.set)
        except BaseException as exc:
            _record_failure(log, run, exc, started.is_set())
            raise
        exit_code = EXEC_TIMEOUT_EXIT_CODE if result.timed_out else result.exit_code
        log.add(run, "stdout", result.stdout)
        log.add(run, "stderr", result.stderr)
        log.finish(run, exit_code)
        return ExecOutcome(
            run.exec_id,
            exit_code,
            result.stdout,
            result.stderr,
            result.stdout_truncated,
            result.stderr_truncated,
            result.timed_out,
        )

    async def exec_stream(self, principal: Principal, vm_id: str, command: Command) -> ExecStream:
        """Start a command whose output a client reads, and may re-attach to, as it comes.

        Answers once the command runs: what fails before (a paused VM, a missing working
        directory) is the caller's error, as for a plain exec. The command then runs to its
        end whether or not anyone reads; its chunks go to the VM's exec log as they arrive.
        """
        vm, request, stream = await self._prepare(principal, vm_id, command)
        run, log = stream.run, stream.log
        context = self._context
        started = asyncio.Event()

        async def output(name: str, data: bytes) -> None:
            log.add(run, name, data)

        async def work() -> None:
            try:
                async with context.driver_call(vm.vm_id, "run the command"):
                    result = await context.driver.exec(vm.vm_id, request, output, started.set)
            except asyncio.CancelledError:
                raise  # the server stops; the next start marks the run interrupted
            except BaseException as exc:
                _record_failure(log, run, exc, started.is_set())
                raise
            log.finish(run, EXEC_TIMEOUT_EXIT_CODE if result.timed_out else result.exit_code)

        work_task = asyncio.ensure_future(work())
        context.keep(work_task, wait_at_close=False)
        waiting = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({work_task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if not started.is_set():
            await work_task  # it failed before the command ran: raise its error here
        return stream

    async def attach(self, principal: Principal, vm_id: str, exec_id: str) -> ExecStream:
        """An exec of this VM, running or finished, as long as its log is kept."""
        canonical = canonical_vm_id(vm_id)
        run_id = canonical_or_none(exec_id)
        context = self._context
        vm = await context.db.read(
            lambda tx: vm_store.get_live_in_org(tx, principal.org_id, canonical)
        )
        if vm is None or run_id is None:
            raise ExecNotFound()
        log = context.exec_logs.of(vm.vm_id)
        run = log.runs.get(run_id)
        if run is None or run.org_id != principal.org_id:
            raise ExecNotFound()
        return ExecStream(run, log)

    @staticmethod
    async def stream_lines(stream: ExecStream, after: int) -> AsyncIterator[bytes]:
        """NDJSON: the chunks with a cursor above `after`, as they come, then the exit line.
        Chunks no longer kept are skipped."""
        run, log = stream.run, stream.log
        position = after
        while True:
            changed = run.changed
            while position < len(run.entries):
                line = log.chunk_line(run, position)
                position += 1
                if line is not None:
                    yield line
            if run.exit_code is not None:
                yield record_line(log.exit_record(run))
                return
            await changed.wait()

    async def logs(
        self,
        principal: Principal,
        vm_id: str,
        offset: int | None,
        max_entries: int | None,
        stream: str | None,
    ) -> tuple[list[LogEntry], int, bool]:
        """What the VM's commands printed, oldest first, from entry `offset` on."""
        if stream is not None and stream not in ("stdout", "stderr"):
            raise InvalidQuery("stream must be stdout or stderr")
        limit = DEFAULT_LOG_ENTRIES if max_entries is None else max_entries
        limit = min(max(limit, 0), MAX_LOG_ENTRIES)
        vm = await self._context.find(principal, vm_id, wait_boot=False)
        log = self._context.exec_logs.of(vm.vm_id)
        return log.entries(max(offset or 0, 0), limit, stream)

    # -- files ------------------------------------------------------------------------

    async def read_file(self, principal: Principal, vm_id: str, path: str | None) -> bytes:
        """A regular file of up to `max_file_bytes` bytes (larger: 413)."""
        checked = _path(path)
        vm = await self._context.alive(principal, vm_id)
        async with self._context.driver_call(vm.vm_id, "read the file"):
            return await self._context.driver.read_file(
                vm.vm_id, checked, max_bytes=self._context.settings.max_file_bytes
            )

    async def download(self, principal: Principal, vm_id: str, path: str | None) -> Download:
        """A regular file of any size, streamed; errors come before the first byte."""
        checked = _path(path)
        vm = await self._context.alive(principal, vm_id)
        chunks = self._chunks(vm.vm_id, checked)
        async with self._context.driver_call(vm.vm_id, "read the file"):
            size = cast(int, await anext(chunks))
        return Download(size, cast(AsyncIterator[bytes], chunks))

    async def _chunks(self, vm_id: str, path: str) -> AsyncIterator[int | bytes]:
        """Its size first, then its bytes. When the generator is closed early (the client
        left), leaving the driver's context tells the agent to stop."""
        async with self._context.driver.open_file(vm_id, path) as reader:
            yield reader.size
            async for chunk in reader.chunks():
                yield chunk

    async def write_file(
        self,
        principal: Principal,
        vm_id: str,
        path: str,
        content_b64: str,
        mode: int | None,
        create_dirs: bool,
    ) -> None:
        checked = _path(path, missing="path must not be empty")
        try:
            data = base64.b64decode(content_b64, validate=True)
        except binascii.Error:
            raise BadRequest("content_b64 is not valid base64") from None
        limit = self._context.settings.max_file_bytes
        if len(data) > limit:
            raise PayloadTooLarge(
                f"the file is {len(data)} bytes; content_b64 carries at most {limit}: "
                "send larger files as Content-Type: application/octet-stream"
            )
        await self.upload(principal, vm_id, checked, data, mode, create_dirs)

    async def upload(
        self,
        principal: Principal,
        vm_id: str,
        path: str | None,
        data: bytes | AsyncIterable[bytes],
        mode: int | None,
        create_dirs: bool,
        declared_bytes: int | None = None,
    ) -> int:
        """Replace a regular file with `data` (any size the disk holds); it is never
        half-written. `declared_bytes`, the body's announced size, larger than the VM's
        whole disk raises `PayloadTooLarge` (413) before a byte is read."""
        checked = _path(path, missing="path must not be empty")
        if mode is not None and not 0 <= mode <= 0o7777:
            raise BadRequest("mode must be between 0 and 0o7777")
        vm = await self._context.alive(principal, vm_id)
        if declared_bytes is not None and declared_bytes > vm.disk_mib * 1024 * 1024:
            raise PayloadTooLarge(
                f"the file ({declared_bytes} bytes) is larger than the VM's disk"
                f" ({vm.disk_mib} MiB)"
            )
        async with self._context.driver_call(vm.vm_id, "write the file"):
            return await self._context.driver.write_file(
                vm.vm_id, checked, data, mode=mode, create_dirs=create_dirs
            )

    async def ssh_key(self, principal: Principal, vm_id: str) -> SshKey:
        context = self._context
        vm = await context.alive(principal, vm_id)
        async with context.driver_call(vm.vm_id, "make the SSH key"):
            endpoint = await context.detached(context.driver.ssh_endpoint(vm.vm_id))
        if vm.ssh_port != endpoint.port:
            await context.db.write(lambda tx: vm_store.set_ssh_port(tx, vm.vm_id, endpoint.port))
        return SshKey(endpoint.port, endpoint.private_key)


def _path(
    path: str | None, missing: str = "Failed to deserialize query string: path is required"
) -> str:
    if not path:
        raise BadRequest(missing)
    validate_text("path", path)
    return path


def _record_failure(log: VmLog, run: ExecRun, error: BaseException, started: bool) -> None:
    """A command that never ran leaves no trace (its exec_id stays free); one that did
    gets a note on stderr and exit code 255, its end unseen."""
    if not started:
        log.discard(run)
        return
    message = error.message if isinstance(error, VersError) else "internal server error"
    log.add(run, "stderr", f"{message}\n".encode())
    log.finish(run, LOST_EXIT_CODE)
