"""What the VM service's parts share: the database, the driver, and what is in flight.

Rules (`decisions.md`, `docs/decisions.md` § VMs):
- A VM belongs to the organization of the key that made it; every key of that
  organization may use it, another organization gets 404.
- The database records the intent (a `creating` or `deleting` row) before the driver acts
  and the outcome after; no transaction is open during a driver call. Driver work runs in a
  task of its own, so a client that hangs up cannot leave a half-recorded VM behind.
- Limits are checked, and the intent rows written, under one lock per process: per key
  (`max_vcpus`, `max_memory_mib`, `max_disk_mib`, 403) and per server (`max_vms`, memory,
  disk, 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from vers_orchestrator.auth import Principal
from vers_orchestrator.drivers import base as driver_api
from vers_orchestrator.drivers.base import VmDriver
from vers_orchestrator.errors import (
    BadRequest,
    GuestFileNotFound,
    GuestRefused,
    GuestUnavailable,
    InvalidVmId,
    KeyLimitExceeded,
    NotRegularFile,
    PayloadTooLarge,
    ProvidedCommitNotFound,
    ServerAtCapacity,
    VmNotFound,
    VmNotRunning,
    VmOnAnotherServer,
    VmOperationFailed,
)
from vers_orchestrator.ids import new_id
from vers_orchestrator.services.vms.exec_logs import ExecLogs
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import env_vars as env_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.database import Database, Tx, utc_now
from vers_orchestrator.store.vms import State, Vm

log = logging.getLogger("vers_orchestrator.vms")
T = TypeVar("T")

ALIVE = (State.RUNNING, State.PAUSED)
# Where a new VM gets its maker's environment variables (`write_environment`).
ENVIRONMENT_FILE = "/etc/environment"


def canonical_vm_id(vm_id: str) -> str:
    try:
        return str(uuid.UUID(vm_id))
    except ValueError:
        raise InvalidVmId() from None


def canonical_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def wire_state(state: State) -> str:
    """The upstream `VmState` of a row: booting, running, paused, dead."""
    if state is State.CREATING:
        return "booting"
    if state in (State.RUNNING, State.PAUSED):
        return state.value
    return "dead"


class VmContext:
    """The one small state object behind `Lifecycle`, `Guest`, `Snapshots` and `Fork`."""

    def __init__(self, db: Database, driver: VmDriver, settings: Settings) -> None:
        self.db = db
        self.driver = driver
        self.settings = settings
        self.max_memory_mib = settings.effective_max_vm_memory_mib
        self.node = settings.vm_node
        self._admission = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Commands whose output is being streamed: not waited for at shutdown (a command
        # may run for days); the next start marks them interrupted in their logs.
        self._streams: set[asyncio.Task[Any]] = set()
        self.booting: dict[str, asyncio.Task[None]] = {}
        self._listeners: list[Callable[[str], None]] = []
        self.exec_logs = ExecLogs(settings.data_dir / "exec-logs", settings.exec_log_bytes_per_vm)

    # -- tasks ------------------------------------------------------------------------

    async def close(self, timeout_seconds: float) -> None:
        """Wait for driver work in flight: its outcome must reach the database."""
        if self._tasks:
            # Bounded: a hung hypervisor call must not keep the server from stopping; the
            # next start-up's reconciliation settles whatever it left.
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_seconds)
            for task in pending:
                task.cancel()
        for task in self._streams:
            task.cancel()
        if self._streams:
            await asyncio.wait(self._streams)
        self.exec_logs.close()

    def detached(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Run `work` to its end even if the request awaiting it is cancelled."""
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self.keep(task)
        return asyncio.shield(task)

    def keep(self, task: asyncio.Task[T], *, wait_at_close: bool = True) -> None:
        """Hold a reference until the task ends, and read its error so none goes unseen.
        Shutdown waits for it, or (`wait_at_close` false) cancels it."""
        tasks = self._tasks if wait_at_close else self._streams
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    # -- lookups ----------------------------------------------------------------------

    async def find(self, principal: Principal, vm_id: str, *, wait_boot: bool = True) -> Vm:
        """The caller's organization's live VM; by default once its boot (if any) ended."""
        canonical = canonical_vm_id(vm_id)
        booting = self.booting.get(canonical) if wait_boot else None
        if booting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(booting)
        vm = await self.db.read(
            lambda tx: vm_store.get_live_in_org(tx, principal.org_id, canonical)
        )
        if vm is None:
            raise VmNotFound()
        return vm

    def local(self, vm: Vm) -> Vm:
        """The VM, if this server runs it: only its own driver can act on it."""
        if vm.node != self.node:
            raise VmOnAnotherServer()
        return vm

    async def alive(self, principal: Principal, vm_id: str) -> Vm:
        vm = self.local(await self.find(principal, vm_id))
        if vm.state not in ALIVE:
            raise VmNotRunning(wire_state(vm.state))
        return vm

    async def refresh(self, vm: Vm) -> Vm:
        """The VM with its state as the driver sees it now (a killed hypervisor is dead)."""
        if vm.state not in ALIVE or vm.node != self.node:
            return vm
        try:
            info = await self.driver.status(vm.vm_id)
            state = State(info.state.value)
        except driver_api.VmNotFound:
            state = State.DEAD
        except driver_api.DriverError:
            log.exception("status of VM %s failed", vm.vm_id)
            return vm
        if state is not vm.state:
            await self.set_state(vm.vm_id, state)
            vm = replace(vm, state=state)
        return vm

    async def user_environment(self, principal: Principal) -> dict[str, str]:
        """The variables of the caller's user, which every VM the caller makes gets."""
        return await self.db.read(lambda tx: env_store.of_user(tx, principal.user_id))

    async def write_environment(self, vm_id: str, variables: dict[str, str]) -> None:
        """Merge `variables` into the guest's `/etc/environment`: each replaces the line of
        its key or is added; the rest of the file (the image's `PATH`, say) stays. Exec and
        SSH sessions read that file (`agent/execs.environment_file`, pam_env). A failure is
        logged, not raised: the VM runs either way, as on the hosted service."""
        if not variables:
            return
        try:
            try:
                current = await self.driver.read_file(vm_id, ENVIRONMENT_FILE, max_bytes=1 << 20)
            except driver_api.GuestFileNotFound:
                current = b""
            lines = current.decode("utf-8", "replace").split("\n")
            if lines and not lines[-1]:
                lines.pop()  # the file's last newline
            kept = [line for line in lines if line.partition("=")[0].strip() not in variables]
            added = [f"{key}={variables[key]}" for key in sorted(variables)]
            text = "".join(f"{line}\n" for line in (*kept, *added))
            await self.driver.write_file(
                vm_id, ENVIRONMENT_FILE, text.encode(), mode=0o644, create_dirs=True
            )
        except driver_api.DriverError as exc:
            log.error("the environment variables of VM %s were not written: %s", vm_id, exc)

    async def set_state(self, vm_id: str, state: State) -> None:
        now = utc_now()
        await self.db.write(lambda tx: vm_store.set_state(tx, vm_id, state, now))
        self.changed(vm_id)

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener(vm_id)` after a VM's state or labels are written here (the
        edge forgets its cached route)."""
        self._listeners.append(listener)

    def changed(self, vm_id: str) -> None:
        for listener in self._listeners:
            listener(vm_id)

    @contextlib.asynccontextmanager
    async def driver_call(self, vm_id: str, action: str) -> AsyncIterator[None]:
        """Turn the driver's errors into the API's; unexpected ones are logged, not shown."""
        try:
            yield
        except driver_api.VmNotRunning as exc:
            if exc.state is driver_api.VmState.DEAD:
                await self.set_state(vm_id, State.DEAD)
            raise VmNotRunning(str(exc.state)) from None
        except driver_api.VmNotFound:
            await self.set_state(vm_id, State.DEAD)
            raise VmNotRunning("dead") from None
        except driver_api.CommitNotFound:
            raise ProvidedCommitNotFound() from None
        except driver_api.GuestFileNotFound as exc:
            raise GuestFileNotFound(exc.path) from None
        except driver_api.NotRegularFile as exc:
            raise NotRegularFile(exc.path) from None
        except driver_api.FileTooLarge as exc:
            raise PayloadTooLarge(
                f"{exc.path} is {exc.size} bytes; the JSON form carries at most {exc.limit}:"
                " read it with Accept: application/octet-stream"
            ) from None
        except driver_api.AgentUnavailable as exc:
            log.warning("%s of VM %s: %s", action, vm_id, exc)
            raise GuestUnavailable(str(exc)) from None
        except driver_api.GuestAgentError as exc:
            raise GuestRefused(str(exc)) from None
        except driver_api.InvalidRequest as exc:
            raise BadRequest(str(exc)) from None
        except driver_api.DriverError as exc:
            log.error("%s of VM %s failed: %s", action, vm_id, exc)
            raise VmOperationFailed(f"failed to {action}") from None

    # -- admission ----------------------------------------------------------------------

    async def admit(self, principal: Principal, new: Sequence[Vm], *, record: bool) -> None:
        """Check the limits for `new`; when `record`, write their intent rows, atomically.

        Raises `KeyLimitExceeded` (403) past the key's `max_vcpus`, `max_memory_mib` or
        `max_disk_mib`, `ServerAtCapacity` (429) past this server's VMs, memory or disk,
        and `ProvidedCommitNotFound` (404) when recording VMs of a commit deleted meanwhile.
        """
        wanted = vm_store.Usage(
            len(new),
            sum(vm.vcpus for vm in new),
            sum(vm.mem_mib for vm in new),
            sum(vm.disk_mib for vm in new),
        )

        async def unit(tx: Tx) -> None:
            await self._check_limits(tx, principal, wanted)
            if record:
                # A commit deleted since the caller looked it up has no data to start from.
                parents = {vm.parent_commit_id for vm in new if vm.parent_commit_id is not None}
                for commit_id in parents:
                    if not await commit_store.hold_live(tx, commit_id):
                        raise ProvidedCommitNotFound()
                for vm in new:
                    await vm_store.insert(tx, vm)

        async with self._admission:
            if record:
                await self.db.write(unit)
            else:
                await self.db.read(unit)

    async def admit_disk_growth(self, principal: Principal, vm: Vm, disk_mib: int) -> None:
        """Check the disk limits for growing `vm`'s disk to `disk_mib` and record the new
        size, atomically; raises as `admit`."""
        wanted = vm_store.Usage(0, 0, 0, disk_mib - vm.disk_mib)

        async def unit(tx: Tx) -> None:
            await self._check_limits(tx, principal, wanted)
            await vm_store.set_disk(tx, vm.vm_id, disk_mib)

        async with self._admission:
            await self.db.write(unit)

    async def _check_limits(self, tx: Tx, principal: Principal, wanted: vm_store.Usage) -> None:
        own = await vm_store.usage_of_owner(tx, principal.api_key_id)
        for resource, limit, used, requested in (
            ("vCPU", principal.max_vcpus, own.vcpus, wanted.vcpus),
            ("memory (MiB)", principal.max_memory_mib, own.mem_mib, wanted.mem_mib),
            ("disk (MiB)", principal.max_disk_mib, own.disk_mib, wanted.disk_mib),
        ):
            if requested and limit is not None and used + requested > limit:
                raise KeyLimitExceeded(resource, limit, used, requested)
        server = await vm_store.usage_of_node(tx, self.node)
        for resource, limit, used, requested in (
            ("VMs", self.settings.max_vms, server.vms, wanted.vms),
            ("MiB of VM memory", self.max_memory_mib, server.mem_mib, wanted.mem_mib),
        ):
            if requested and used + requested > limit:
                raise ServerAtCapacity(resource, limit, used, requested)
        if wanted.disk_mib:
            # Measured only when asked: the default budget is the disk's free space now.
            disk_limit = self.settings.vm_disk_budget_mib()
            if server.disk_mib + wanted.disk_mib > disk_limit:
                raise ServerAtCapacity(
                    "MiB of VM disk", disk_limit, server.disk_mib, wanted.disk_mib
                )

    def intent(
        self,
        principal: Principal,
        parent_commit_id: str | None,
        vcpus: int,
        mem_mib: int,
        disk_mib: int,
        labels: dict[str, str] | None = None,
    ) -> Vm:
        return Vm(
            vm_id=new_id(),
            org_id=principal.org_id,
            owner_id=principal.api_key_id,
            parent_commit_id=parent_commit_id,
            state=State.CREATING,
            vcpus=vcpus,
            mem_mib=mem_mib,
            disk_mib=disk_mib,
            labels=labels or {},
            ssh_port=None,
            created_at=utc_now(),
            deleted_at=None,
            node=self.node,
        )

    async def delete_on_host(self, vm_id: str) -> None:
        with contextlib.suppress(driver_api.VmNotFound):
            await self.driver.delete_vm(vm_id)
        self.exec_logs.forget_vm(vm_id)
