"""VMs: make, run commands in, snapshot, branch and delete them, through the driver.

Rules (`decisions.md`, `docs/decisions.md` § VMs):
- A VM belongs to the organization of the key that made it; every key of that
  organization may use it, another organization gets 404.
- The database records the intent (a `creating` or `deleting` row) before the driver acts
  and the outcome after; no transaction is open during a driver call. Driver work runs in a
  task of its own, so a client that hangs up cannot leave a half-recorded VM behind.
- Limits are checked, and the intent rows written, under one lock per process: per key
  (`max_vcpus`, `max_memory_mib`, 403) and per server (`max_vms`, memory, 429).
- At start-up `reconcile` settles every row against the driver's inventory: a VM whose
  hypervisor died is `dead`; half-made VMs and commits nobody recorded are removed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from vers_orchestrator.auth import Principal
from vers_orchestrator.drivers import base as driver_api
from vers_orchestrator.drivers.base import VmDriver
from vers_orchestrator.errors import (
    BadRequest,
    CommitNotFound,
    Conflict,
    ExecNotFound,
    ForkSourceNotFound,
    GuestFileNotFound,
    GuestRefused,
    InvalidRef,
    InvalidVmId,
    KeyLimitExceeded,
    ProvidedCommitNotFound,
    RepoTagAlreadyExists,
    ServerAtCapacity,
    TagNotFound,
    Unprocessable,
    VersError,
    VmNotFound,
    VmNotRunning,
    VmOnAnotherServer,
    VmOperationFailed,
    VmOrCommitNotFound,
)
from vers_orchestrator.ids import new_id
from vers_orchestrator.services import commits
from vers_orchestrator.services.commits import visible_to
from vers_orchestrator.services.exec_logs import ExecLogs, ExecRun, LogEntry
from vers_orchestrator.services.keys import ORG_NAME_MAX
from vers_orchestrator.services.validation import (
    ORG_TAG_NAME_MAX,
    REPO_TAG_NAME_MAX,
    REPOSITORY_NAME_MAX,
    is_valid_name,
    validate_repository_name,
    validate_tag_name,
    validate_text,
)
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import repositories as repository_store
from vers_orchestrator.store import tags as tag_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.commits import Commit
from vers_orchestrator.store.database import Database, Tx, UniqueViolation, utc_now
from vers_orchestrator.store.repositories import Repository
from vers_orchestrator.store.tags import Tag
from vers_orchestrator.store.vms import State, Vm

log = logging.getLogger("vers_orchestrator.vms")
T = TypeVar("T")

# QEMU user networking: every guest has this address on its own private network.
GUEST_IP = "10.0.2.15"
DEFAULT_VCPUS = 1
DEFAULT_MEM_MIB = 512
DEFAULT_DISK_MIB = 1024
MAX_VCPUS = 64
MIN_MEM_MIB = 128
MAX_COUNT = 255
# The exit code `timeout(1)` reports for a command it had to kill.
EXEC_TIMEOUT_EXIT_CODE = 124
# A streamed command that could not run to its end (the VM died, the agent failed).
EXEC_FAILED_EXIT_CODE = 255
DEFAULT_LOG_ENTRIES = 100
MAX_LABELS = 64
IMAGE_NAMES = (None, "default")
CLOSE_TIMEOUT_SECONDS = 60.0
KERNEL_NAMES = (None, "default.bin")

_ALIVE = (State.RUNNING, State.PAUSED)


@dataclass(frozen=True, slots=True)
class RootConfig:
    vcpus: int | None = None
    mem_mib: int | None = None
    disk_mib: int | None = None
    image_name: str | None = None
    kernel_name: str | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ExecOutcome:
    exec_id: str
    exit_code: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True, slots=True)
class Metadata:
    vm: Vm
    grandparent_vm_id: str | None


@dataclass(frozen=True, slots=True)
class SshKey:
    port: int
    private_key: str


@dataclass(frozen=True, slots=True)
class ForkResult:
    vm_id: str
    commit_id: str
    repo_name: str
    tag_name: str


def canonical_vm_id(vm_id: str) -> str:
    try:
        return str(uuid.UUID(vm_id))
    except ValueError:
        raise InvalidVmId() from None


def _canonical_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _check_count(count: int | None) -> int:
    value = 1 if count is None else count
    if not 0 <= value <= MAX_COUNT:
        raise BadRequest(f"Failed to deserialize query string: count must be 0-{MAX_COUNT}")
    return value


def _check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise BadRequest(f"at most {MAX_LABELS} labels")
    for name, value in labels.items():
        if not name:
            raise BadRequest("label names must not be empty")
        validate_text("label name", name, 256)
        validate_text("label value", value)


class Vms:
    """The VM service of one server process: the database, the driver and what is in flight."""

    def __init__(self, db: Database, driver: VmDriver, settings: Settings) -> None:
        self._db = db
        self._driver = driver
        self._settings = settings
        self._max_memory_mib = settings.effective_max_vm_memory_mib
        self._node = settings.vm_node
        self._admission = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._booting: dict[str, asyncio.Task[None]] = {}
        self._exec_logs = ExecLogs()

    # ----------------------------------------------------------- process lifetime

    async def reconcile(self) -> None:
        """Settle the database against what the driver finds on the host after a restart."""
        inventory = await self._driver.inventory()
        on_host = {vm.vm_id: vm for vm in inventory.vms}
        rows = await self._db.read(lambda tx: vm_store.list_live_on_node(tx, self._node))
        for vm in rows:
            found = on_host.pop(vm.vm_id, None)
            if vm.state in (State.CREATING, State.DELETING):
                # Interrupted half-way: nobody was told the VM exists (or it was going).
                if found is not None:
                    await self._delete_on_host(vm.vm_id)
                end = State.FAILED if vm.state is State.CREATING else State.DELETED
                await self._set_state(vm.vm_id, end)
            elif found is None or found.state is driver_api.VmState.DEAD:
                await self._set_state(vm.vm_id, State.DEAD)
            else:
                await self._set_state(vm.vm_id, State(found.state.value))
        for vm_id in on_host:
            log.warning("removing VM %s: the database does not know it", vm_id)
            await self._delete_on_host(vm_id)
        for snapshot in inventory.commits:
            commit = await self._db.read(partial(commit_store.get, commit_id=snapshot.commit_id))
            if commit is None or commit.deleted_at is not None:
                log.warning("removing the data of commit %s: not a live commit", snapshot.commit_id)
                with contextlib.suppress(driver_api.CommitNotFound):
                    await self._driver.delete_commit(snapshot.commit_id)

    async def close(self) -> None:
        """Wait for driver work in flight: its outcome must reach the database."""
        if self._tasks:
            # Bounded: a hung hypervisor call must not keep the server from stopping; the
            # next start-up's reconciliation settles whatever it left.
            _, pending = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_SECONDS)
            for task in pending:
                task.cancel()

    def _detached(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Run `work` to its end even if the request awaiting it is cancelled."""
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self._keep(task)
        return asyncio.shield(task)

    def _keep(self, task: asyncio.Task[T]) -> None:
        """Hold a reference until the task ends, and read its error so none goes unseen."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    # ------------------------------------------------------------------- lookups

    async def _find(self, principal: Principal, vm_id: str, *, wait_boot: bool = True) -> Vm:
        """The caller's organization's live VM; by default once its boot (if any) ended."""
        canonical = canonical_vm_id(vm_id)
        booting = self._booting.get(canonical) if wait_boot else None
        if booting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(booting)
        vm = await self._db.read(
            lambda tx: vm_store.get_live_in_org(tx, principal.org_id, canonical)
        )
        if vm is None:
            raise VmNotFound()
        return vm

    def _local(self, vm: Vm) -> Vm:
        """The VM, if this server runs it: only its own driver can act on it."""
        if vm.node != self._node:
            raise VmOnAnotherServer()
        return vm

    async def _alive(self, principal: Principal, vm_id: str) -> Vm:
        vm = self._local(await self._find(principal, vm_id))
        if vm.state not in _ALIVE:
            raise VmNotRunning(wire_state(vm.state))
        return vm

    async def _refresh(self, vm: Vm) -> Vm:
        """The VM with its state as the driver sees it now (a killed hypervisor is dead)."""
        if vm.state not in _ALIVE or vm.node != self._node:
            return vm
        try:
            info = await self._driver.status(vm.vm_id)
            state = State(info.state.value)
        except driver_api.VmNotFound:
            state = State.DEAD
        except driver_api.DriverError:
            log.exception("status of VM %s failed", vm.vm_id)
            return vm
        if state is not vm.state:
            await self._set_state(vm.vm_id, state)
            vm = replace(vm, state=state)
        return vm

    async def _set_state(self, vm_id: str, state: State) -> None:
        now = utc_now()
        await self._db.write(lambda tx: vm_store.set_state(tx, vm_id, state, now))

    @contextlib.asynccontextmanager
    async def _driver_call(self, vm_id: str, action: str) -> AsyncIterator[None]:
        """Turn the driver's errors into the API's; unexpected ones are logged, not shown."""
        try:
            yield
        except driver_api.ExecTimeout:
            raise  # an outcome of exec, not a failure: the caller reports it
        except driver_api.VmNotRunning as exc:
            if exc.state is driver_api.VmState.DEAD:
                await self._set_state(vm_id, State.DEAD)
            raise VmNotRunning(str(exc.state)) from None
        except driver_api.VmNotFound:
            await self._set_state(vm_id, State.DEAD)
            raise VmNotRunning("dead") from None
        except driver_api.CommitNotFound:
            raise ProvidedCommitNotFound() from None
        except driver_api.GuestFileNotFound as exc:
            raise GuestFileNotFound(exc.path) from None
        except driver_api.GuestAgentError as exc:
            raise GuestRefused(str(exc)) from None
        except driver_api.InvalidRequest as exc:
            raise BadRequest(str(exc)) from None
        except driver_api.DriverError as exc:
            log.error("%s of VM %s failed: %s", action, vm_id, exc)
            raise VmOperationFailed(f"failed to {action}") from None

    # --------------------------------------------------------------- admission

    async def _admit(self, principal: Principal, new: Sequence[Vm], *, record: bool) -> None:
        """Check the limits for `new`; when `record`, write their intent rows, atomically."""
        settings = self._settings
        vcpus = sum(vm.vcpus for vm in new)
        mem_mib = sum(vm.mem_mib for vm in new)

        async def unit(tx: Tx) -> None:
            own = await vm_store.usage_of_owner(tx, principal.api_key_id)
            if principal.max_vcpus is not None and own.vcpus + vcpus > principal.max_vcpus:
                raise KeyLimitExceeded("vCPU", principal.max_vcpus, own.vcpus, vcpus)
            limit = principal.max_memory_mib
            if limit is not None and own.mem_mib + mem_mib > limit:
                raise KeyLimitExceeded("memory (MiB)", limit, own.mem_mib, mem_mib)
            server = await vm_store.usage_of_node(tx, self._node)
            if server.vms + len(new) > settings.max_vms:
                raise ServerAtCapacity("VMs", settings.max_vms, server.vms, len(new))
            if server.mem_mib + mem_mib > self._max_memory_mib:
                raise ServerAtCapacity(
                    "MiB of VM memory", self._max_memory_mib, server.mem_mib, mem_mib
                )
            if record:
                for vm in new:
                    await vm_store.insert(tx, vm)

        async with self._admission:
            if record:
                await self._db.write(unit)
            else:
                await self._db.read(unit)

    def _intent(
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
            node=self._node,
        )

    # --------------------------------------------------------------- lifecycle

    async def new_root(self, principal: Principal, config: RootConfig, wait_boot: bool) -> Vm:
        """Boot a VM from the default image; with `wait_boot` false, answer while it boots."""
        vcpus = DEFAULT_VCPUS if config.vcpus is None else config.vcpus
        mem_mib = DEFAULT_MEM_MIB if config.mem_mib is None else config.mem_mib
        disk_mib = DEFAULT_DISK_MIB if config.disk_mib is None else config.disk_mib
        if not 1 <= vcpus <= MAX_VCPUS:
            raise BadRequest(f"vcpu_count must be between 1 and {MAX_VCPUS}")
        if mem_mib < MIN_MEM_MIB:
            raise BadRequest(f"mem_size_mib must be at least {MIN_MEM_MIB}")
        if config.image_name not in IMAGE_NAMES:
            raise BadRequest(f"unknown image_name {config.image_name!r}: only 'default' exists")
        if config.kernel_name not in KERNEL_NAMES:
            raise BadRequest(
                f"unknown kernel_name {config.kernel_name!r}: only 'default.bin' exists"
            )
        labels = dict(config.labels or {})
        _check_labels(labels)
        vm = self._intent(principal, None, vcpus, mem_mib, disk_mib, labels)
        await self._admit(principal, [vm], record=True)
        spec = driver_api.VmSpec(mem_mib=mem_mib, vcpus=vcpus, disk_mib=disk_mib)
        boot = asyncio.ensure_future(self._boot(vm.vm_id, spec))
        self._booting[vm.vm_id] = boot
        self._keep(boot)
        boot.add_done_callback(lambda _: self._booting.pop(vm.vm_id, None))
        if not wait_boot:
            return vm
        await asyncio.shield(boot)
        return replace(vm, state=State.RUNNING)

    async def _boot(self, vm_id: str, spec: driver_api.VmSpec) -> None:
        try:
            async with self._driver_call(vm_id, "boot the VM"):
                await self._driver.create_vm(vm_id, spec)
        except BaseException:
            await self._set_state(vm_id, State.FAILED)
            raise
        await self._set_state(vm_id, State.RUNNING)

    async def list_vms(self, principal: Principal) -> list[Vm]:
        rows = await self._db.read(lambda tx: vm_store.list_live_in_org(tx, principal.org_id))
        return list(await asyncio.gather(*(self._refresh(vm) for vm in rows)))

    async def get(self, principal: Principal, vm_id: str) -> Vm:
        """The VM as it is now: a booting VM answers `booting` at once."""
        return await self._refresh(await self._find(principal, vm_id, wait_boot=False))

    async def metadata(self, principal: Principal, vm_id: str) -> Metadata:
        vm = await self.get(principal, vm_id)
        grandparent = None
        if vm.parent_commit_id is not None:
            parent_id = vm.parent_commit_id
            commit = await self._db.read(lambda tx: commit_store.get(tx, parent_id))
            grandparent = None if commit is None else commit.parent_vm_id
        return Metadata(vm, grandparent)

    async def set_running(self, principal: Principal, vm_id: str, running: bool) -> None:
        """Pause (`Sleeping`/`Paused`) or continue (`Running`) the VM's vCPUs."""
        vm = await self._refresh(await self._alive(principal, vm_id))
        if vm.state not in _ALIVE:
            raise VmNotRunning(wire_state(vm.state))
        async with self._driver_call(vm.vm_id, "change the VM's state"):
            if running:
                await self._driver.resume(vm.vm_id)
            else:
                await self._driver.pause(vm.vm_id)
        await self._set_state(vm.vm_id, State.RUNNING if running else State.PAUSED)

    async def delete(self, principal: Principal, vm_id: str) -> str:
        vm = self._local(await self._find(principal, vm_id))
        await self._set_state(vm.vm_id, State.DELETING)
        await self._detached(self._delete_and_record(vm.vm_id))
        return vm.vm_id

    async def _delete_and_record(self, vm_id: str) -> None:
        try:
            await self._delete_on_host(vm_id)
        except driver_api.DriverError as exc:
            log.error("deleting VM %s failed: %s", vm_id, exc)
            # Still recorded as deleting: the next start-up finishes the job.
            raise VmOperationFailed("failed to delete the VM") from None
        await self._set_state(vm_id, State.DELETED)
        self._exec_logs.forget_vm(vm_id)

    async def _delete_on_host(self, vm_id: str) -> None:
        with contextlib.suppress(driver_api.VmNotFound):
            await self._driver.delete_vm(vm_id)

    async def resize_disk(self, principal: Principal, vm_id: str, disk_mib: int) -> None:
        vm = await self._alive(principal, vm_id)
        if disk_mib <= vm.disk_mib:
            raise BadRequest(
                f"fs_size_mib must be larger than the current size ({vm.disk_mib} MiB)"
            )
        async with self._driver_call(vm.vm_id, "resize the disk"):
            await self._detached(self._driver.grow_disk(vm.vm_id, disk_mib))
        await self._db.write(lambda tx: vm_store.set_disk(tx, vm.vm_id, disk_mib))

    # ---------------------------------------------------------------- in the guest

    async def _prepare_exec(
        self,
        principal: Principal,
        vm_id: str,
        command: Sequence[str],
        env: dict[str, str] | None,
        working_dir: str | None,
        stdin: bytes,
        timeout_seconds: int | None,
        exec_id: str | None,
    ) -> tuple[Vm, driver_api.ExecRequest, str]:
        if not command:
            raise BadRequest("command must not be empty")
        for part in (*command, *(env or {}).keys(), *(env or {}).values(), working_dir or ""):
            validate_text("command", part, 1 << 20)
        run_id = new_id()
        if exec_id is not None:
            canonical = _canonical_or_none(exec_id)
            if canonical is None:
                raise BadRequest("exec_id must be a UUID")
            run_id = canonical
        vm = await self._alive(principal, vm_id)
        request = driver_api.ExecRequest(
            argv=tuple(command),
            env=dict(env or {}),
            working_dir=working_dir,
            stdin=stdin,
            timeout_seconds=float(timeout_seconds) if timeout_seconds else None,
        )
        return vm, request, run_id

    async def _run_exec(self, vm: Vm, request: driver_api.ExecRequest, run_id: str) -> ExecOutcome:
        try:
            async with self._driver_call(vm.vm_id, "run the command"):
                result = await self._driver.exec(vm.vm_id, request)
            outcome = ExecOutcome(run_id, result.exit_code, result.stdout, result.stderr)
        except driver_api.ExecTimeout as exc:
            outcome = ExecOutcome(run_id, EXEC_TIMEOUT_EXIT_CODE, exc.stdout, exc.stderr)
        self._exec_logs.record(vm.vm_id, run_id, outcome.stdout, outcome.stderr)
        return outcome

    async def exec(
        self,
        principal: Principal,
        vm_id: str,
        command: Sequence[str],
        env: dict[str, str] | None,
        working_dir: str | None,
        stdin: bytes,
        timeout_seconds: int | None,
        exec_id: str | None,
    ) -> ExecOutcome:
        """Run a command; one that outlives `timeout_seconds` (0: none) is killed (exit 124)."""
        vm, request, run_id = await self._prepare_exec(
            principal, vm_id, command, env, working_dir, stdin, timeout_seconds, exec_id
        )
        return await self._run_exec(vm, request, run_id)

    async def exec_stream(
        self,
        principal: Principal,
        vm_id: str,
        command: Sequence[str],
        env: dict[str, str] | None,
        working_dir: str | None,
        stdin: bytes,
        timeout_seconds: int | None,
        exec_id: str | None,
    ) -> ExecRun:
        """Start a command whose output a client reads, and may re-attach to, as it comes."""
        vm, request, run_id = await self._prepare_exec(
            principal, vm_id, command, env, working_dir, stdin, timeout_seconds, exec_id
        )
        existing = self._exec_logs.run(run_id)
        if existing is not None:
            raise Conflict("exec_id is already in use")
        run = self._exec_logs.start(run_id, principal.org_id, vm.vm_id)

        async def work() -> None:
            try:
                outcome = await self._run_exec(vm, request, run_id)
            except VersError as exc:
                run.add("stderr", f"{exc.message}\n".encode())
                run.finish(EXEC_FAILED_EXIT_CODE)
                return
            except BaseException:
                run.add("stderr", b"internal server error\n")
                run.finish(EXEC_FAILED_EXIT_CODE)
                raise
            run.add("stdout", outcome.stdout)
            run.add("stderr", outcome.stderr)
            run.finish(outcome.exit_code)

        self._keep(asyncio.ensure_future(work()))
        return run

    def attach(self, principal: Principal, vm_id: str, exec_id: str) -> ExecRun:
        """A streamed exec of this VM, running or recently finished."""
        canonical = canonical_vm_id(vm_id)
        run_id = _canonical_or_none(exec_id)
        run = None if run_id is None else self._exec_logs.run(run_id)
        if run is None or run.org_id != principal.org_id or run.vm_id != canonical:
            raise ExecNotFound()
        return run

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
            raise BadRequest("Failed to deserialize query string: stream must be stdout or stderr")
        limit = DEFAULT_LOG_ENTRIES if max_entries is None else min(max(max_entries, 1), 1000)
        vm = await self._find(principal, vm_id, wait_boot=False)
        return self._exec_logs.read(vm.vm_id, max(offset or 0, 0), limit, stream)

    async def read_file(self, principal: Principal, vm_id: str, path: str | None) -> bytes:
        if not path:
            raise BadRequest("Failed to deserialize query string: path is required")
        validate_text("path", path)
        vm = await self._alive(principal, vm_id)
        async with self._driver_call(vm.vm_id, "read the file"):
            return await self._driver.read_file(vm.vm_id, path)

    async def write_file(
        self,
        principal: Principal,
        vm_id: str,
        path: str,
        content_b64: str,
        mode: int | None,
        create_dirs: bool,
    ) -> None:
        if not path:
            raise BadRequest("path must not be empty")
        validate_text("path", path)
        try:
            data = base64.b64decode(content_b64, validate=True)
        except binascii.Error:
            raise BadRequest("content_b64 is not valid base64") from None
        if mode is not None and not 0 <= mode <= 0o7777:
            raise BadRequest("mode must be between 0 and 0o7777")
        vm = await self._alive(principal, vm_id)
        async with self._driver_call(vm.vm_id, "write the file"):
            await self._driver.write_file(vm.vm_id, path, data, mode=mode, create_dirs=create_dirs)

    async def ssh_key(self, principal: Principal, vm_id: str) -> SshKey:
        vm = await self._alive(principal, vm_id)
        async with self._driver_call(vm.vm_id, "make the SSH key"):
            endpoint = await self._detached(self._driver.ssh_endpoint(vm.vm_id))
        if vm.ssh_port != endpoint.port:
            await self._db.write(lambda tx: vm_store.set_ssh_port(tx, vm.vm_id, endpoint.port))
        return SshKey(endpoint.port, endpoint.private_key)

    # -------------------------------------------------------------------- labels

    async def set_labels(
        self, principal: Principal, vm_id: str, labels: dict[str, str], *, replace_all: bool
    ) -> None:
        _check_labels(labels)
        canonical = canonical_vm_id(vm_id)

        async def unit(tx: Tx) -> None:
            vm = await vm_store.get_live_in_org(tx, principal.org_id, canonical)
            if vm is None:
                raise VmNotFound()
            merged = dict(labels) if replace_all else {**vm.labels, **labels}
            _check_labels(merged)
            await vm_store.set_labels(tx, canonical, merged)

        await self._db.write(unit)

    async def delete_label(self, principal: Principal, vm_id: str, name: str) -> None:
        canonical = canonical_vm_id(vm_id)

        async def unit(tx: Tx) -> None:
            vm = await vm_store.get_live_in_org(tx, principal.org_id, canonical)
            if vm is None:
                raise VmNotFound()
            remaining = {key: value for key, value in vm.labels.items() if key != name}
            await vm_store.set_labels(tx, canonical, remaining)

        await self._db.write(unit)

    # ----------------------------------------------------------------- snapshots

    async def commit(
        self,
        principal: Principal,
        vm_id: str,
        keep_paused: bool,
        name: str | None,
        description: str | None,
    ) -> Commit:
        """Snapshot the VM; the commit is private and owned by the caller's key."""
        validate_text("name", name)
        validate_text("description", description)
        vm = await self._alive(principal, vm_id)
        return await self._commit(principal, vm, keep_paused, name, description)

    async def _commit(
        self,
        principal: Principal,
        vm: Vm,
        keep_paused: bool,
        name: str | None,
        description: str | None,
    ) -> Commit:
        commit_id = new_id()
        async with self._driver_call(vm.vm_id, "commit the VM"):
            await self._detached(self._driver.commit(vm.vm_id, commit_id, keep_paused=keep_paused))
        try:
            commit = await commits.record(
                self._db,
                principal.api_key_id,
                vm.vm_id,
                vm.parent_commit_id,
                name=name,
                description=description,
                commit_id=commit_id,
            )
        except BaseException:
            with contextlib.suppress(driver_api.DriverError):
                await self._driver.delete_commit(commit_id)
            raise
        if keep_paused:
            await self._set_state(vm.vm_id, State.PAUSED)
        return commit

    async def delete_commit(self, principal: Principal, commit_id: str) -> None:
        """The commit service's delete, then the snapshot's data on the host."""
        await commits.delete(self._db, principal, commit_id)
        with contextlib.suppress(driver_api.CommitNotFound):
            await self._driver.delete_commit(commits.canonical_id(commit_id))

    async def _restore(self, principal: Principal, commit: Commit, count: int) -> list[Vm]:
        """`count` new running VMs of the caller, each continuing where `commit` was."""
        if count == 0:
            return []
        source_vm_id = commit.parent_vm_id
        source = None
        if source_vm_id is not None:
            source = await self._db.read(lambda tx: vm_store.get(tx, source_vm_id))
        if source is None:
            raise ProvidedCommitNotFound()  # no snapshot data can exist for it
        new = [
            self._intent(principal, commit.commit_id, source.vcpus, source.mem_mib, source.disk_mib)
            for _ in range(count)
        ]
        await self._admit(principal, new, record=True)
        ids = [vm.vm_id for vm in new]
        try:
            async with self._driver_call(ids[0], "start the VM"):
                infos = await self._detached(self._driver.restore(commit.commit_id, ids))
        except BaseException:
            for vm_id in ids:
                await self._set_state(vm_id, State.FAILED)
            raise
        for info in infos:
            await self._set_state(info.vm_id, State.RUNNING)
        return [replace(vm, state=State.RUNNING) for vm in new]

    async def from_commit(
        self,
        principal: Principal,
        commit_id: str | None,
        tag_name: str | None,
        ref: str | None,
    ) -> Vm:
        given = [value for value in (commit_id, tag_name, ref) if value is not None]
        if len(given) != 1:
            raise Unprocessable(
                "Failed to deserialize the JSON body into the target type:"
                " expected exactly one of commit_id, tag_name, ref"
            )
        if commit_id is not None:
            canonical = _canonical_or_none(commit_id)
            if canonical is None:
                raise Unprocessable(
                    "Failed to deserialize the JSON body into the target type:"
                    " commit_id: invalid UUID"
                )
            commit = await self._db.read(lambda tx: commit_store.get(tx, canonical))
            if commit is None or not visible_to(commit, principal):
                raise CommitNotFound()
        elif tag_name is not None:
            commit = await self._commit_of_tag(
                await self._db.read(lambda tx: self._org_tag(tx, principal, tag_name)),
                CommitNotFound,
            )
        else:
            assert ref is not None
            commit = await self._commit_of_tag(
                await self._db.read(lambda tx: self._ref_tag(tx, principal, ref)),
                CommitNotFound,
            )
        [vm] = await self._restore(principal, commit, 1)
        return vm

    async def _commit_of_tag(
        self, tag: Tag, missing: type[CommitNotFound | ProvidedCommitNotFound]
    ) -> Commit:
        commit = await self._db.read(lambda tx: commit_store.get(tx, tag.commit_id))
        if commit is None or commit.deleted_at is not None:
            raise missing()
        return commit

    @staticmethod
    async def _org_tag(tx: Tx, principal: Principal, tag_name: str) -> Tag:
        tag = None
        if is_valid_name(tag_name, ORG_TAG_NAME_MAX):
            tag = await tag_store.get_in_org(tx, principal.org_id, tag_name)
        if tag is None:
            raise TagNotFound()
        return tag

    @staticmethod
    async def _repo_tag(tx: Tx, repository: Repository | None, tag_name: str) -> Tag:
        tag = None
        if repository is not None and is_valid_name(tag_name, REPO_TAG_NAME_MAX):
            tag = await tag_store.get_in_repository(tx, repository.repo_id, tag_name)
        if tag is None:
            raise TagNotFound()
        return tag

    async def _ref_tag(self, tx: Tx, principal: Principal, ref: str) -> Tag:
        """`repo:tag` in the caller's organization, or `org/repo:tag` of a public repository."""
        path, _, tag_name = ref.partition(":")
        org_name, slash, repo_name = path.rpartition("/")
        if not tag_name or not repo_name or (slash and not org_name):
            raise InvalidRef()
        if slash:
            public = None
            if is_valid_name(org_name, ORG_NAME_MAX) and is_valid_name(
                repo_name, REPOSITORY_NAME_MAX
            ):
                public = await repository_store.get_public(tx, org_name, repo_name)
            if public is None:
                raise TagNotFound()
            tag = None
            if is_valid_name(tag_name, REPO_TAG_NAME_MAX):
                tag = await tag_store.get_in_repository(tx, public.repo_id, tag_name)
            if tag is None:
                raise TagNotFound()
            return tag
        repository = None
        if is_valid_name(repo_name, REPOSITORY_NAME_MAX):
            repository = await repository_store.get_by_name(tx, principal.org_id, repo_name)
        return await self._repo_tag(tx, repository, tag_name)

    async def branch_by_vm(
        self, principal: Principal, vm_id: str, count: int | None, keep_paused: bool
    ) -> list[Vm]:
        """Commit the VM, then start `count` VMs from that commit."""
        how_many = _check_count(count)
        vm = await self._alive(principal, vm_id)
        probe = [self._intent(principal, None, vm.vcpus, vm.mem_mib, vm.disk_mib)] * how_many
        await self._admit(principal, probe, record=False)
        commit = await self._commit(principal, vm, keep_paused, None, None)
        return await self._restore(principal, commit, how_many)

    async def branch_by_commit(
        self, principal: Principal, commit_id: str, count: int | None
    ) -> list[Vm]:
        how_many = _check_count(count)
        canonical = _canonical_or_none(commit_id)
        commit = None
        if canonical is not None:
            commit = await self._db.read(lambda tx: commit_store.get(tx, canonical))
        if commit is None or not visible_to(commit, principal):
            raise ProvidedCommitNotFound()
        return await self._restore(principal, commit, how_many)

    async def branch_by_tag(
        self, principal: Principal, tag_name: str, count: int | None
    ) -> list[Vm]:
        how_many = _check_count(count)
        tag = await self._db.read(lambda tx: self._org_tag(tx, principal, tag_name))
        commit = await self._commit_of_tag(tag, ProvidedCommitNotFound)
        return await self._restore(principal, commit, how_many)

    async def branch_by_ref(
        self, principal: Principal, repo_name: str, tag_name: str, count: int | None
    ) -> list[Vm]:
        how_many = _check_count(count)

        async def unit(tx: Tx) -> Tag:
            repository = None
            if is_valid_name(repo_name, REPOSITORY_NAME_MAX):
                repository = await repository_store.get_by_name(tx, principal.org_id, repo_name)
            return await self._repo_tag(tx, repository, tag_name)

        tag = await self._db.read(unit)
        commit = await self._commit_of_tag(tag, ProvidedCommitNotFound)
        return await self._restore(principal, commit, how_many)

    async def branch(
        self, principal: Principal, vm_or_commit_id: str, count: int | None, keep_paused: bool
    ) -> list[Vm]:
        """A VM of the caller's organization is branched; otherwise a visible commit is."""
        how_many = _check_count(count)
        canonical = _canonical_or_none(vm_or_commit_id)
        if canonical is None:
            raise BadRequest("Invalid URL: vm_or_commit_id must be a UUID")
        vm = await self._db.read(
            lambda tx: vm_store.get_live_in_org(tx, principal.org_id, canonical)
        )
        if vm is not None:
            return await self.branch_by_vm(principal, canonical, how_many, keep_paused)
        commit = await self._db.read(lambda tx: commit_store.get(tx, canonical))
        if commit is None or not visible_to(commit, principal):
            raise VmOrCommitNotFound()
        return await self._restore(principal, commit, how_many)

    # ---------------------------------------------------------------------- fork

    async def fork(
        self,
        principal: Principal,
        source_org: str,
        source_repo: str,
        source_tag: str,
        repo_name: str | None,
        tag_name: str | None,
    ) -> ForkResult:
        """Copy a public tag into the caller's organization; a failure leaves nothing behind.

        Steps: start one VM from the source commit, commit it (a private commit of the
        caller), then create or reuse the target repository and tag the commit, in one
        transaction. Any failure deletes the VM and the commit again.
        """
        target_repo = source_repo if repo_name is None else repo_name
        target_tag = source_tag if tag_name is None else tag_name
        validate_repository_name(target_repo)
        validate_tag_name(target_tag, REPO_TAG_NAME_MAX)

        async def resolve(tx: Tx) -> Commit:
            public = None
            if (
                is_valid_name(source_org, ORG_NAME_MAX)
                and is_valid_name(source_repo, REPOSITORY_NAME_MAX)
                and is_valid_name(source_tag, REPO_TAG_NAME_MAX)
            ):
                public = await repository_store.get_public(tx, source_org, source_repo)
            tag = None
            if public is not None:
                tag = await tag_store.get_in_repository(tx, public.repo_id, source_tag)
            commit = None if tag is None else await commit_store.get(tx, tag.commit_id)
            if commit is None or commit.deleted_at is not None:
                raise ForkSourceNotFound()
            # Checked now to spare a VM; checked again when the tag is written.
            existing = await repository_store.get_by_name(tx, principal.org_id, target_repo)
            if existing is not None and await tag_store.get_in_repository(
                tx, existing.repo_id, target_tag
            ):
                raise RepoTagAlreadyExists()
            return commit

        source = await self._db.read(resolve)
        [vm] = await self._restore(principal, source, 1)
        commit: Commit | None = None
        try:
            commit = await self._commit(
                principal,
                vm,
                False,
                f"fork: {source_org}/{source_repo}:{source_tag}",
                None,
            )
            forked = commit

            async def publish(tx: Tx) -> None:
                repository = await repository_store.get_by_name(tx, principal.org_id, target_repo)
                if repository is None:
                    repository = Repository(
                        repo_id=new_id(),
                        org_id=principal.org_id,
                        name=target_repo,
                        description=f"Forked from {source_org}/{source_repo}",
                        is_public=False,
                        owner_id=principal.api_key_id,
                        created_at=utc_now(),
                    )
                    await repository_store.insert(tx, repository)
                now = utc_now()
                await tag_store.insert(
                    tx,
                    Tag(
                        tag_id=new_id(),
                        org_id=principal.org_id,
                        repo_id=repository.repo_id,
                        tag_name=target_tag,
                        commit_id=forked.commit_id,
                        owner_id=principal.api_key_id,
                        description=f"Forked from {source_org}/{source_repo}:{source_tag}",
                        created_at=now,
                        updated_at=now,
                    ),
                )

            try:
                await self._db.write(publish)
            except UniqueViolation:
                raise RepoTagAlreadyExists() from None
        except BaseException:
            await self._detached(self._undo_fork(vm.vm_id, commit))
            raise
        return ForkResult(vm.vm_id, commit.commit_id, target_repo, target_tag)

    async def _undo_fork(self, vm_id: str, commit: Commit | None) -> None:
        # The VM row goes first: the commit row cannot be removed while a row names it.
        with contextlib.suppress(driver_api.DriverError):
            await self._delete_on_host(vm_id)
        await self._db.write(lambda tx: vm_store.delete_row(tx, vm_id))
        if commit is not None:
            with contextlib.suppress(driver_api.DriverError):
                await self._driver.delete_commit(commit.commit_id)
            await self._db.write(lambda tx: commit_store.delete_row(tx, commit.commit_id))


def wire_state(state: State) -> str:
    """The upstream `VmState` of a row: booting, running, paused, dead."""
    if state is State.CREATING:
        return "booting"
    if state in (State.RUNNING, State.PAUSED):
        return state.value
    return "dead"
