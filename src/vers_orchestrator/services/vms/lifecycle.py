"""A VM's life: boot, look up, pause and continue, grow its disk, label, delete.

At start-up `reconcile` settles every row against the driver's inventory: a VM whose
hypervisor died is `dead`; half-made VMs and commits nobody recorded are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from functools import partial

from vers_orchestrator.auth import Principal
from vers_orchestrator.drivers import base as driver_api
from vers_orchestrator.errors import BadRequest, VmNotFound, VmNotRunning, VmOperationFailed
from vers_orchestrator.services.images import Images
from vers_orchestrator.services.validation import validate_text
from vers_orchestrator.services.vms.context import (
    ALIVE,
    VmContext,
    canonical_vm_id,
    log,
    wire_state,
)
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.database import Tx
from vers_orchestrator.store.vms import State, Vm

DEFAULT_VCPUS = 1
DEFAULT_MEM_MIB = 512
DEFAULT_DISK_MIB = 1024
MAX_VCPUS = 64
MIN_MEM_MIB = 128
MAX_LABELS = 64
KERNEL_NAMES = (None, "default.bin")


@dataclass(frozen=True, slots=True)
class RootConfig:
    vcpus: int | None = None
    mem_mib: int | None = None
    disk_mib: int | None = None
    image_name: str | None = None
    kernel_name: str | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Metadata:
    vm: Vm
    grandparent_vm_id: str | None


def check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise BadRequest(f"at most {MAX_LABELS} labels")
    for name, value in labels.items():
        if not name:
            raise BadRequest("label names must not be empty")
        validate_text("label name", name, 256)
        validate_text("label value", value)


class Lifecycle:
    def __init__(self, context: VmContext, images: Images | None = None) -> None:
        self._context = context
        # None where only the default image is offered (the CLI's own VM service).
        self._images = images

    async def reconcile(self) -> None:
        """Settle the database against what the driver finds on the host after a restart."""
        context = self._context
        for leftover in await context.driver.remove_leftovers():
            log.warning("removed a crash leftover: %s", leftover)
        inventory = await context.driver.inventory()
        on_host = {vm.vm_id: vm for vm in inventory.vms}
        rows = await context.db.read(lambda tx: vm_store.list_live_on_node(tx, context.node))
        for vm in rows:
            found = on_host.pop(vm.vm_id, None)
            if vm.state in (State.CREATING, State.DELETING):
                # Interrupted half-way: nobody was told the VM exists (or it was going).
                if found is not None:
                    await context.delete_on_host(vm.vm_id)
                end = State.FAILED if vm.state is State.CREATING else State.DELETED
                await context.set_state(vm.vm_id, end)
            elif found is None or found.state is driver_api.VmState.DEAD:
                await context.set_state(vm.vm_id, State.DEAD)
            elif vm.state in ALIVE and vm.state.value != found.state.value:
                # The row holds what the user last asked for (written before the driver
                # acts); the host differs when a crash cut an operation short, e.g. a
                # commit, which stops the guest while its memory is written.
                await self._settle_after_crash(vm.vm_id, vm.state, State(found.state.value))
            else:
                await context.set_state(vm.vm_id, State(found.state.value))
        for vm_id in on_host:
            log.warning("removing VM %s: the database does not know it", vm_id)
            await context.delete_on_host(vm_id)
        for snapshot in inventory.commits:
            commit = await context.db.read(partial(commit_store.get, commit_id=snapshot.commit_id))
            if commit is None or commit.deleted_at is not None:
                log.warning("removing the data of commit %s: not a live commit", snapshot.commit_id)
                with contextlib.suppress(driver_api.CommitNotFound):
                    await context.driver.delete_commit(snapshot.commit_id)
        live = await context.db.read(lambda tx: vm_store.list_live_on_node(tx, context.node))
        context.exec_logs.keep_only({vm.vm_id for vm in live})

    async def stop_all(self) -> list[str]:
        """Stop every VM this node runs, for `vms stop-all` while no server runs: each VM's
        QEMU and files go (its commits stay), then `reconcile` records the VMs `dead`, as
        the next start-up would find them; the user deletes them through the API. Returns
        the VMs that were running or paused."""
        context = self._context
        stopped: list[str] = []
        failed = 0
        for vm in (await context.driver.inventory()).vms:
            try:
                await context.driver.delete_vm(vm.vm_id)
            except driver_api.VmNotFound:
                continue
            except driver_api.DriverError as exc:
                log.error("VM %s could not be stopped: %s", vm.vm_id, exc)
                failed += 1
                continue
            if vm.state is not driver_api.VmState.DEAD:
                stopped.append(vm.vm_id)
        await self.reconcile()
        if failed:
            raise VmOperationFailed(f"{failed} VMs could not be stopped (see the log above)")
        return stopped

    async def _settle_after_crash(self, vm_id: str, wanted: State, found: State) -> None:
        context = self._context
        driver = context.driver
        try:
            await (driver.resume if wanted is State.RUNNING else driver.pause)(vm_id)
        except driver_api.DriverError as exc:
            log.error("VM %s could not be made %s again: %s", vm_id, wanted.value, exc)
            await context.set_state(vm_id, found)
            return
        log.warning("VM %s made %s again: a crash had cut an operation short", vm_id, wanted.value)

    async def new_root(self, principal: Principal, config: RootConfig, wait_boot: bool) -> Vm:
        """Boot a VM from the default image or the caller's organization's (or a public)
        image named `config.image_name`; with `wait_boot` false, answer while it boots.
        Without `fs_size_mib` the disk holds the image's filesystem at least."""
        context = self._context
        vcpus = DEFAULT_VCPUS if config.vcpus is None else config.vcpus
        mem_mib = DEFAULT_MEM_MIB if config.mem_mib is None else config.mem_mib
        if not 1 <= vcpus <= MAX_VCPUS:
            raise BadRequest(f"vcpu_count must be between 1 and {MAX_VCPUS}")
        if mem_mib < MIN_MEM_MIB:
            raise BadRequest(f"mem_size_mib must be at least {MIN_MEM_MIB}")
        image = None
        if config.image_name is not None and self._images is not None:
            image = await self._images.resolve(principal, config.image_name)
        elif config.image_name not in (None, "default"):
            raise BadRequest(f"unknown image_name {config.image_name!r}: only 'default' exists")
        disk_mib = DEFAULT_DISK_MIB if config.disk_mib is None else config.disk_mib
        if image is not None and disk_mib < image.size_mib:
            if config.disk_mib is not None:
                raise BadRequest(
                    f"fs_size_mib must be at least {image.size_mib} for image"
                    f" {config.image_name!r} (its file system)"
                )
            disk_mib = image.size_mib
        if config.kernel_name not in KERNEL_NAMES:
            raise BadRequest(
                f"unknown kernel_name {config.kernel_name!r}: only 'default.bin' exists"
            )
        labels = dict(config.labels or {})
        check_labels(labels)
        vm = context.intent(principal, None, vcpus, mem_mib, disk_mib, labels)
        await context.admit(principal, [vm], record=True)
        spec = driver_api.VmSpec(mem_mib=mem_mib, vcpus=vcpus, disk_mib=disk_mib)
        environment = await context.user_environment(principal)
        key = None if image is None else image.key
        boot = asyncio.ensure_future(self._boot(vm.vm_id, spec, environment, key))
        context.booting[vm.vm_id] = boot
        context.keep(boot)
        boot.add_done_callback(lambda _: context.booting.pop(vm.vm_id, None))
        if not wait_boot:
            return vm
        await asyncio.shield(boot)
        return replace(vm, state=State.RUNNING)

    async def _boot(
        self,
        vm_id: str,
        spec: driver_api.VmSpec,
        environment: dict[str, str],
        image: str | None,
    ) -> None:
        context = self._context
        try:
            async with context.driver_call(vm_id, "boot the VM"):
                await context.driver.create_vm(vm_id, spec, image=image)
        except BaseException:
            await context.set_state(vm_id, State.FAILED)
            raise
        # Before the VM counts as running: its first exec sees the variables.
        await context.write_environment(vm_id, environment)
        await context.set_state(vm_id, State.RUNNING)

    async def list_vms(self, principal: Principal) -> list[Vm]:
        context = self._context
        rows = await context.db.read(lambda tx: vm_store.list_live_in_org(tx, principal.org_id))
        return list(await asyncio.gather(*(context.refresh(vm) for vm in rows)))

    async def get(self, principal: Principal, vm_id: str) -> Vm:
        """The VM as it is now: a booting VM answers `booting` at once."""
        context = self._context
        return await context.refresh(await context.find(principal, vm_id, wait_boot=False))

    async def metadata(self, principal: Principal, vm_id: str) -> Metadata:
        vm = await self.get(principal, vm_id)
        grandparent = None
        if vm.parent_commit_id is not None:
            parent_id = vm.parent_commit_id
            commit = await self._context.db.read(lambda tx: commit_store.get(tx, parent_id))
            grandparent = None if commit is None else commit.parent_vm_id
        return Metadata(vm, grandparent)

    async def set_running(self, principal: Principal, vm_id: str, running: bool) -> None:
        """Pause (`Sleeping`/`Paused`) or continue (`Running`) the VM's vCPUs."""
        context = self._context
        await self._set_running(
            await context.refresh(await context.alive(principal, vm_id)), running
        )

    async def wake(self, vm: Vm) -> None:
        """Continue a paused VM of this server for a request that came through the edge
        (`services/edge.py`); raises VmNotRunning when it is not alive any more."""
        context = self._context
        await self._set_running(await context.refresh(context.local(vm)), True)

    async def _set_running(self, vm: Vm, running: bool) -> None:
        context = self._context
        if vm.state not in ALIVE:
            raise VmNotRunning(wire_state(vm.state))
        wanted = State.RUNNING if running else State.PAUSED
        # Recorded first: after a crash half-way, start-up puts the VM in this state.
        await context.set_state(vm.vm_id, wanted)
        try:
            async with context.driver_call(vm.vm_id, "change the VM's state"):
                if running:
                    await context.driver.resume(vm.vm_id)
                else:
                    await context.driver.pause(vm.vm_id)
        except BaseException:
            # Back to what the host says: the old state, or dead if the VM died.
            await context.set_state(vm.vm_id, vm.state)
            await context.refresh(vm)
            raise

    async def delete(self, principal: Principal, vm_id: str) -> str:
        context = self._context
        vm = context.local(await context.find(principal, vm_id))
        await context.set_state(vm.vm_id, State.DELETING)
        await context.detached(self._delete_and_record(vm.vm_id))
        return vm.vm_id

    async def _delete_and_record(self, vm_id: str) -> None:
        context = self._context
        try:
            await context.delete_on_host(vm_id)
        except driver_api.DriverError as exc:
            log.error("deleting VM %s failed: %s", vm_id, exc)
            # Still recorded as deleting: the next start-up finishes the job.
            raise VmOperationFailed("failed to delete the VM") from None
        await context.set_state(vm_id, State.DELETED)

    async def resize_disk(self, principal: Principal, vm_id: str, disk_mib: int) -> None:
        context = self._context
        vm = await context.alive(principal, vm_id)
        if disk_mib <= vm.disk_mib:
            raise BadRequest(
                f"fs_size_mib must be larger than the current size ({vm.disk_mib} MiB)"
            )
        async with context.driver_call(vm.vm_id, "resize the disk"):
            await context.detached(self._grow_disk(principal, vm, disk_mib))

    async def _grow_disk(self, principal: Principal, vm: Vm, disk_mib: int) -> None:
        # The new size is recorded with the limit check, before the disk grows, so two
        # resizes at once cannot both fit under a limit; a failed grow puts it back.
        context = self._context
        await context.admit_disk_growth(principal, vm, disk_mib)
        try:
            await context.driver.grow_disk(vm.vm_id, disk_mib)
        except driver_api.GuestAgentError:
            raise  # the disk did grow (only the guest's file system did not): size stays
        except BaseException:
            await context.db.write(lambda tx: vm_store.set_disk(tx, vm.vm_id, vm.disk_mib))
            raise

    async def set_labels(
        self, principal: Principal, vm_id: str, labels: dict[str, str], *, replace_all: bool
    ) -> None:
        check_labels(labels)
        canonical = canonical_vm_id(vm_id)

        async def unit(tx: Tx) -> None:
            vm = await vm_store.get_live_in_org(tx, principal.org_id, canonical)
            if vm is None:
                raise VmNotFound()
            merged = dict(labels) if replace_all else {**vm.labels, **labels}
            check_labels(merged)
            await vm_store.set_labels(tx, canonical, merged)

        await self._context.db.write(unit)
        self._context.changed(canonical)

    async def delete_label(self, principal: Principal, vm_id: str, name: str) -> None:
        canonical = canonical_vm_id(vm_id)

        async def unit(tx: Tx) -> None:
            vm = await vm_store.get_live_in_org(tx, principal.org_id, canonical)
            if vm is None:
                raise VmNotFound()
            remaining = {key: value for key, value in vm.labels.items() if key != name}
            await vm_store.set_labels(tx, canonical, remaining)

        await self._context.db.write(unit)
        self._context.changed(canonical)
