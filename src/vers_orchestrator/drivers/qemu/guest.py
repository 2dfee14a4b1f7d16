"""Inside the guest: one vers-agent connection per VM, and what goes over it.

Connections are kept per VM and per driver object (QEMU's socket takes one client at a
time, so connecting is single-flight per VM). A broken connection is replaced on the next
use. Besides exec and files, the driver keeps guests' wall clocks right: the clock of a
guest stops while its vCPUs are stopped (a pause, the instant of a commit) and a restored
guest wakes with the commit's time, so the host sets it after each of those, and nudges
every connected guest's clock once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable

from vers_orchestrator.drivers.agent_client import operations
from vers_orchestrator.drivers.agent_client.connection import AgentConnection
from vers_orchestrator.drivers.base import (
    DriverError,
    ExecRequest,
    ExecResult,
    FileReader,
    GuestAgentError,
    InvalidRequest,
    OutputSink,
    VmNotRunning,
    VmState,
)
from vers_orchestrator.drivers.qemu.host import VmHost
from vers_orchestrator.drivers.qemu.layout import QEMU_GA, agent_socket

log = logging.getLogger(__name__)

# A restored guest's agent answers within milliseconds; a loaded CI machine may need more.
AGENT_TIMEOUT_SECONDS = 60.0
CLOCK_SYNC_SECONDS = 60.0
# Setting a clock is not worth holding up a resume or a commit for long.
CLOCK_TIMEOUT_SECONDS = 5.0


class Guests:
    def __init__(self, host: VmHost) -> None:
        self._host = host
        self._connections: dict[str, AgentConnection] = {}
        self._connecting: dict[str, asyncio.Lock] = {}
        self._clock_keeper: asyncio.Task[None] | None = None

    # -- connections ------------------------------------------------------------------

    async def connect(self, vm_id: str, timeout_seconds: float) -> AgentConnection:
        """A new connection to the VM's agent, replacing any earlier one."""
        await self.disconnect(vm_id)
        try:
            connection = await AgentConnection.connect(
                agent_socket(self._host.layout.runtime(vm_id)), timeout_seconds
            )
        except GuestAgentError as exc:
            if self._host.pid(vm_id) is None:
                raise DriverError(
                    f"VM {vm_id} died while starting; console:\n{self._host.console_tail(vm_id)}"
                ) from exc
            raise
        self._connections[vm_id] = connection
        if self._clock_keeper is None:
            self._clock_keeper = asyncio.create_task(self._keep_clocks())
        return connection

    async def connection(self, vm_id: str) -> AgentConnection:
        """The VM's connection, made when there is none or the last one broke."""
        existing = self._connections.get(vm_id)
        if existing is not None and existing.broken is None:
            return existing
        async with self._connecting.setdefault(vm_id, asyncio.Lock()):
            existing = self._connections.get(vm_id)
            if existing is not None and existing.broken is None:
                return existing
            return await self.connect(vm_id, AGENT_TIMEOUT_SECONDS)

    async def disconnect(self, vm_id: str) -> None:
        connection = self._connections.pop(vm_id, None)
        if connection is not None:
            await connection.close()

    async def forget(self, vm_id: str) -> None:
        """The VM is gone: drop its connection and what was kept for it."""
        await self.disconnect(vm_id)
        self._connecting.pop(vm_id, None)

    async def close(self) -> None:
        if self._clock_keeper is not None:
            self._clock_keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_keeper
            self._clock_keeper = None
        for vm_id in list(self._connections):
            await self.disconnect(vm_id)

    @contextlib.asynccontextmanager
    async def quiesced(self, vm_id: str) -> AsyncIterator[None]:
        """Around a snapshot: no request of ours is half-way into the guest (see
        AgentConnection.quiesced)."""
        connection = self._connections.get(vm_id)
        if connection is None or connection.broken is not None:
            yield
            return
        async with connection.quiesced():
            yield

    async def _ready(self, vm_id: str) -> AgentConnection:
        record = self._host.load_vm(vm_id)
        if record.guest_agent == QEMU_GA:
            raise InvalidRequest(
                f"VM {vm_id} was made by an older version with qemu-guest-agent; guest "
                "operations need vers-agent: make a new VM"
            )
        await self._host.require_running(vm_id)
        return await self.connection(vm_id)

    async def _dead_or(self, vm_id: str, error: GuestAgentError) -> Exception:
        """The error to raise when the agent fails: a VM that died says so."""
        if self._host.pid(vm_id) is None:
            return VmNotRunning(vm_id, VmState.DEAD)
        return error

    # -- operations ---------------------------------------------------------------------

    async def exec(
        self,
        vm_id: str,
        request: ExecRequest,
        sink: OutputSink | None = None,
        started: Callable[[], None] | None = None,
    ) -> ExecResult:
        connection = await self._ready(vm_id)
        try:
            return await operations.run_command(connection, request, sink, started)
        except GuestAgentError as exc:
            raise await self._dead_or(vm_id, exc) from None

    async def read_file(self, vm_id: str, path: str, max_bytes: int | None) -> bytes:
        connection = await self._ready(vm_id)
        try:
            return await operations.read_file(connection, path, max_bytes)
        except GuestAgentError as exc:
            raise await self._dead_or(vm_id, exc) from None

    @contextlib.asynccontextmanager
    async def open_file(self, vm_id: str, path: str) -> AsyncIterator[FileReader]:
        connection = await self._ready(vm_id)
        async with operations.open_file(connection, path) as download:
            yield download

    async def write_file(
        self,
        vm_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes],
        mode: int | None,
        create_dirs: bool,
    ) -> int:
        connection = await self._ready(vm_id)
        try:
            return await operations.write_file(
                connection, path, data, mode=mode, create_dirs=create_dirs
            )
        except GuestAgentError as exc:
            raise await self._dead_or(vm_id, exc) from None

    # -- identity and time ------------------------------------------------------------

    async def became(self, vm_id: str, connection: AgentConnection, *, restored: bool) -> None:
        """A guest that just booted or was restored becomes `vm_id`: its clock is set to the
        host's and its hostname to the id; a restored one also gets fresh RNG state and new
        SSH host keys (every branch of a commit starts with the commit's)."""
        reply = await operations.refresh(
            connection,
            time_ns=time.time_ns(),
            seed=secrets.token_bytes(64) if restored else None,
            hostname=vm_id,
            host_keys=restored,
        )
        log.debug("VM %s: clock was %s ns off", vm_id, reply.get("clock_offset_ns"))

    async def set_clock(self, vm_id: str) -> None:
        """After the vCPUs were stopped: the guest's clock stood still meanwhile."""
        try:
            if self._host.load_vm(vm_id).guest_agent == QEMU_GA:
                return
            connection = await self.connection(vm_id)
            await operations.refresh(
                connection, time_ns=time.time_ns(), timeout_seconds=CLOCK_TIMEOUT_SECONDS
            )
        except DriverError as exc:
            log.warning("cannot set the clock of VM %s: %s", vm_id, exc)

    async def _keep_clocks(self) -> None:
        """Once a minute, bring every connected guest's clock to the host's: the guest's own
        clock drifts (TCG runs it from a calibration of the host's TSC)."""
        while True:
            await asyncio.sleep(CLOCK_SYNC_SECONDS)
            for vm_id, connection in list(self._connections.items()):
                if connection.broken is not None:
                    continue
                try:
                    await self._host.require_running(vm_id)
                    await operations.refresh(
                        connection, sync_ns=time.time_ns(), timeout_seconds=CLOCK_TIMEOUT_SECONDS
                    )
                except DriverError as exc:
                    log.debug("clock of VM %s not synchronised: %s", vm_id, exc)
                except Exception:
                    # Out of file descriptors, say: the next round tries again; the task
                    # must not end (it did, silently, under a flood of edge connections).
                    log.exception("clock of VM %s not synchronised", vm_id)
