"""Commits (frozen disk layers plus memory) and VMs restored from them.

How a commit works. A VM booted here keeps its RAM in a tmpfs file mapped shared; a VM
restored from a commit maps the commit's RAM file privately (copy-on-write), so idle
branches share their clean pages through the page cache. Every commit has the same form
(device state without RAM, and a sparse RAM file), so every restore is the same:

* Live (where it can be trusted, below): the VM's memory is migrated, while it runs, into
  a helper QEMU started beforehand whose RAM is a shared tmpfs file (pre-copy); QEMU then
  stops the VM for the pages written meanwhile and its devices, and the disk layer is
  switched inside that stop (`pause-before-switchover`), so disk and memory are of one
  instant. Stopped 5-25 ms whatever the guest has touched (TCG, 256 MiB); the call takes
  0.5-1 s, the whole copy. The copy reads every page, so a booted VM's RAM file is filled
  to the guest's full size by its first commit.
* Stopped, a VM booted here: stop, freeze the disk layer (blockdev-snapshot-sync), save
  the device state without RAM (x-ignore-shared), copy the RAM file sparsely, continue:
  about 40 ms for a fresh 256 MiB guest, growing with the memory it has touched (0.23 s
  after some use).
* Stopped, a restored VM: stop, migrate into the helper, continue (about 0.45 s).
The helper then saves its device state the same way (x-ignore-shared).

The live copy relies on QEMU's log of pages the guest wrote: under TCG on QEMU 7.2 it
misses writes (4 commits in 48 restored to a kernel that crashed; none in 60 on QEMU 10.0),
so under TCG it is used only with a QEMU that has the `mapped-ram` migration capability
(9.0 and later; 7.2 lacks it, 10.0 has it, the versions between were not measured), and
always under KVM.

Not used, measured here: QEMU's `background-snapshot`. It needs RAM the kernel can
write-protect (anonymous or tmpfs, not a file on disk); QEMU 7.2 reads every page in
while the VM is stopped (0.46 s for a fresh 256 MiB guest) and a snapshot that fails or is
cancelled leaves the VM impossible to stop; QEMU 10.0 continues the VM afterwards only if
it was running when the migration started, so a VM stopped first to switch its disk
stays stopped: the "hang" of ../shared/design/vm-driver-research.md.

While a VM is stopped for a commit, no request of ours is half-way into its guest agent
(`Guests.quiesced`); afterwards its clock is set again. A restored VM gets the host's
clock, fresh RNG state, its own hostname and SSH host keys, and its own SSH port.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from vers_orchestrator.drivers.base import (
    BranchResult,
    CommitAlreadyExists,
    CommitInfo,
    CommitNotFound,
    InvalidRequest,
    VmAlreadyExists,
    VmInfo,
    VmState,
)
from vers_orchestrator.drivers.qemu import migration
from vers_orchestrator.drivers.qemu.chains import ChainMerger
from vers_orchestrator.drivers.qemu.guest import AGENT_TIMEOUT_SECONDS, Guests
from vers_orchestrator.drivers.qemu.host import VmHost, check_id, is_running
from vers_orchestrator.drivers.qemu.layout import (
    QEMU_GA,
    CommitRecord,
    VmRecord,
    qmp_socket,
    read_json,
    write_json,
)
from vers_orchestrator.drivers.qemu.machine import (
    free_port,
    launch,
    qemu_argv,
    read_pid,
    run,
    stop_process,
)
from vers_orchestrator.drivers.qemu.qmp import QmpClient

log = logging.getLogger(__name__)


def commit_info(record: CommitRecord) -> CommitInfo:
    return CommitInfo(
        commit_id=record.commit_id,
        spec=record.spec,
        source_vm_id=record.source_vm_id,
        parent_commit_id=record.parent_commit_id,
    )


class Snapshots:
    def __init__(self, host: VmHost, guests: Guests) -> None:
        self._host = host
        self._guests = guests
        self._tcg_dirty_log_trusted: bool | None = None
        self.chains = ChainMerger(host)

    async def commit(self, vm_id: str, commit_id: str, *, keep_paused: bool) -> CommitInfo:
        host = self._host
        check_id(commit_id, "commit")
        async with host.lock(vm_id):
            record = host.load_vm(vm_id)
            final = host.layout.commit_dir(commit_id)
            partial = host.layout.partial_commit_dir(commit_id)
            if final.exists() or partial.exists():
                raise CommitAlreadyExists(commit_id)
            await host.require_alive(vm_id)
            partial.mkdir(parents=True)
            try:
                live = await self._live(vm_id)
                if record.ram_shared and not live:
                    frozen, pause, running = await self._commit_shared_ram(
                        record, partial, keep_paused
                    )
                else:
                    frozen, pause, running = await self._commit_through_helper(
                        record, partial, keep_paused, live=live
                    )
                commit = CommitRecord(
                    commit_id=commit_id,
                    spec=record.spec,
                    disk_chain=frozen,
                    source_vm_id=vm_id,
                    parent_commit_id=record.parent_commit_id,
                    accelerator=record.accelerator,
                    qemu_version=await host.qemu_version(),
                    kernel=record.kernel,
                    initrd=record.initrd,
                    pause_seconds=pause,
                    created_at=time.time(),
                    guest_agent=record.guest_agent,
                    outbound_nic=record.outbound_nic,
                )
                key = host.layout.ssh_key(vm_id)
                if key.exists():
                    shutil.copy2(key, partial / "ssh_key")
                write_json(partial / "commit.json", commit.to_json())
                partial.rename(final)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, partial, True)
                raise
            # Under the VM's lock: a pause that came meanwhile would make the guest agent
            # unable to answer (the hostile pass saw a commit wait 5 s for it).
            if running:
                await self._guests.set_clock(vm_id)
        log.info("committed VM %s as %s (paused %.3f s)", vm_id, commit_id, pause)
        self.chains.after_commit(commit)
        return commit_info(commit)

    @staticmethod
    async def _stop(qmp: QmpClient) -> tuple[bool, float]:
        """Stop the VM; returns whether it ran before, and when it stopped."""
        was_running = await is_running(qmp)
        stopped_at = time.monotonic()
        await qmp.execute("stop")
        return was_running, stopped_at

    async def _commit_shared_ram(
        self, record: VmRecord, partial: Path, keep_paused: bool
    ) -> tuple[tuple[str, ...], float, bool]:
        host = self._host
        async with self._guests.quiesced(record.vm_id), await host.qmp(record.vm_id) as qmp:
            was_running, stopped_at = await self._stop(qmp)
            run_after = was_running and not keep_paused
            try:
                frozen = await self._freeze_disk(qmp, record)
                await migration.migrate(
                    qmp, f"exec:cat > {shlex.quote(str(partial / 'device.state'))}", True
                )
                await run("cp", "--sparse=always", record.ram_path, str(partial / "ram"))
            finally:
                await migration.settle(qmp, run=run_after)
                host.remember(record.vm_id, VmState.RUNNING if run_after else VmState.PAUSED)
            return frozen, time.monotonic() - stopped_at, run_after

    async def _commit_through_helper(
        self, record: VmRecord, partial: Path, keep_paused: bool, *, live: bool
    ) -> tuple[tuple[str, ...], float, bool]:
        host = self._host
        helper = host.layout.make_runtime(
            host.layout.runtime_dir / f".helper-{record.vm_id[:8]}-{time.monotonic_ns()}"
        )
        uri = f"unix:{helper / 'migration.sock'}"
        sockets: tuple[socket.socket, ...] = ()
        try:
            # The helper has the same machine and devices with RAM in a shared tmpfs file,
            # and a blank disk of the same size: it receives the VM's memory but never runs.
            # It is started before the VM stops, so the VM waits only for the transfer.
            await run(
                "qemu-img", "create", "-q", "-f", "qcow2",
                str(helper / "disk.qcow2"), f"{record.spec.disk_mib}M",
            )  # fmt: skip
            stand_in = replace(
                record,
                disk_chain=(str(helper / "disk.qcow2"),),
                ram_path=str(helper / "ram"),
                ram_shared=True,
            )
            # Its outbound card must be of the VM's kind too (QEMU 10 saves the state of each
            # user network, so a user network in place of passt's socket would not load):
            # a socket that nothing serves.
            if record.outbound_nic and host.config.network == "nat":
                unused, outbound = socket.socketpair()
                sockets = (unused, outbound)
                fds: tuple[int, ...] = (outbound.fileno(),)
            else:
                fds = ()
            argv = qemu_argv(
                stand_in,
                helper,
                qemu_binary=host.config.qemu_binary,
                accelerator=host.accelerator,
                kernel_args=host.kernel_args,
                pidfile=helper / "qemu.pid",
                incoming=True,
                outbound_fd=fds[0] if fds else None,
            )
            await launch(argv, helper / "launch.err", f"the commit of {record.vm_id}", fds)
            async with await QmpClient.connect(qmp_socket(helper)) as helper_qmp:
                await migration.set_capabilities(helper_qmp, ignore_shared=False)
                await helper_qmp.execute("migrate-incoming", {"uri": uri})
                async with (
                    self._guests.quiesced(record.vm_id),
                    await host.qmp(record.vm_id) as qmp,
                ):
                    run_after = await is_running(qmp) and not keep_paused
                    try:
                        if live:
                            stopped_at, frozen = await migration.migrate_live(
                                qmp, uri, lambda: self._freeze_disk(qmp, record)
                            )
                        else:
                            _, stopped_at = await self._stop(qmp)
                            frozen = await self._freeze_disk(qmp, record)
                            await migration.migrate(qmp, uri, False)
                    finally:
                        await migration.settle(qmp, run=run_after)
                        host.remember(
                            record.vm_id, VmState.RUNNING if run_after else VmState.PAUSED
                        )
                    pause = time.monotonic() - stopped_at
                await migration.wait_for_migration(helper_qmp)
                await migration.migrate(
                    helper_qmp, f"exec:cat > {shlex.quote(str(partial / 'device.state'))}", True
                )
            await run("cp", "--sparse=always", str(helper / "ram"), str(partial / "ram"))
        finally:
            await stop_process(read_pid(helper / "qemu.pid", qmp_socket(helper)))
            for end in sockets:
                end.close()
            await asyncio.to_thread(shutil.rmtree, helper, True)
        return frozen, pause, run_after

    async def _live(self, vm_id: str) -> bool:
        """Whether this VM's memory may be copied while it runs (the module's docstring).
        Under TCG the VM's QEMU is asked once for its migration capabilities."""
        if not self._host.config.live_commits:
            return False
        if self._host.accelerator.name == "kvm":
            return True
        if self._tcg_dirty_log_trusted is None:
            async with await self._host.qmp(vm_id) as qmp:
                capabilities = await qmp.execute("query-migrate-capabilities")
            names = {entry["capability"] for entry in capabilities}
            self._tcg_dirty_log_trusted = "mapped-ram" in names
        return self._tcg_dirty_log_trusted

    async def _freeze_disk(self, qmp: QmpClient, record: VmRecord) -> tuple[str, ...]:
        """Put a new layer on top of the VM's disk; returns the chain that is now frozen."""
        layer = self._host.layout.new_layer()
        updated = replace(record, disk_chain=(*record.disk_chain, str(layer)))
        # Recorded before QEMU creates the file, so layer collection never sees it orphaned.
        self._host.save_vm(updated)
        try:
            await qmp.execute(
                "blockdev-snapshot-sync",
                {"device": "root", "snapshot-file": str(layer), "format": "qcow2"},
            )
        except BaseException:
            self._host.save_vm(record)
            raise
        return record.disk_chain

    async def restore(self, commit_id: str, new_vm_ids: Sequence[str]) -> tuple[VmInfo, ...]:
        host = self._host
        commit = host.load_commit(commit_id)
        if commit.accelerator != host.accelerator.name:
            raise InvalidRequest(
                f"commit {commit_id} was made under {commit.accelerator}, "
                f"this host runs {host.accelerator.name}; snapshots do not move between them"
            )
        if commit.guest_agent == QEMU_GA:
            raise InvalidRequest(
                f"commit {commit_id} was made by an older version with qemu-guest-agent, "
                "whose snapshots this version cannot restore"
            )
        if not new_vm_ids:
            raise InvalidRequest("restore needs at least one new VM id")
        if len(set(new_vm_ids)) != len(new_vm_ids):
            raise InvalidRequest("new VM ids must be distinct")
        for vm_id in new_vm_ids:
            check_id(vm_id, "VM")
            if host.layout.vm_dir(vm_id).exists():
                raise VmAlreadyExists(vm_id)
        outcomes = await asyncio.gather(
            *(self._restore_one(commit, vm_id) for vm_id in new_vm_ids), return_exceptions=True
        )
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            # All or nothing: the caller recorded all ids and retries all of them.
            for vm_id, outcome in zip(new_vm_ids, outcomes, strict=True):
                if not isinstance(outcome, BaseException):
                    await self._guests.forget(vm_id)
                    await host.destroy(vm_id)
                    host.forget(vm_id)
            await host.collect_files()
            raise failures[0]
        return tuple(outcome for outcome in outcomes if isinstance(outcome, VmInfo))

    async def _restore_one(self, commit: CommitRecord, vm_id: str) -> VmInfo:
        host = self._host
        async with host.lock(vm_id):
            if host.layout.vm_dir(vm_id).exists():
                raise VmAlreadyExists(vm_id)
            commit_dir = host.layout.commit_dir(commit.commit_id)
            record = VmRecord(
                vm_id=vm_id,
                spec=commit.spec,
                disk_chain=(*commit.disk_chain, str(host.layout.new_layer())),
                ram_path=str(commit_dir / "ram"),
                ram_shared=False,
                ssh_port=free_port(),
                parent_commit_id=commit.commit_id,
                accelerator=commit.accelerator,
                kernel=commit.kernel,
                initrd=commit.initrd,
                created_at=time.time(),
                guest_agent=commit.guest_agent,
                outbound_nic=commit.outbound_nic,
            )
            host.layout.vm_dir(vm_id).mkdir(parents=True)
            host.layout.make_runtime(host.layout.runtime(vm_id))
            host.save_vm(record)
            try:
                if (commit_dir / "ssh_key").exists():
                    shutil.copy2(commit_dir / "ssh_key", host.layout.ssh_key(vm_id))
                await run(
                    "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                    "-b", commit.disk_chain[-1], record.disk_chain[-1],
                )  # fmt: skip
                await host.launch_vm(record, incoming=True)
                async with await host.qmp(vm_id) as qmp:
                    await migration.set_capabilities(qmp, ignore_shared=True)
                    state_file = shlex.quote(str(commit_dir / "device.state"))
                    await qmp.execute("migrate-incoming", {"uri": f"exec:cat {state_file}"})
                    await migration.wait_for_migration(qmp)
                    await qmp.execute("cont")
                host.remember(vm_id, VmState.RUNNING)
                connection = await self._guests.connect(vm_id, AGENT_TIMEOUT_SECONDS)
                await self._guests.became(vm_id, connection, restored=True)
            except BaseException:
                await self._guests.disconnect(vm_id)
                await host.destroy(vm_id)
                raise
        return host.info(record, VmState.RUNNING)

    async def branch(
        self, vm_id: str, commit_id: str, new_vm_ids: Sequence[str], *, keep_paused: bool
    ) -> BranchResult:
        commit = await self.commit(vm_id, commit_id, keep_paused=keep_paused)
        vms = await self.restore(commit_id, new_vm_ids)
        return BranchResult(commit=commit, vms=vms)

    async def delete_commit(self, commit_id: str) -> None:
        directory = self._host.layout.commit_dir(commit_id)
        if not (directory / "commit.json").exists():
            raise CommitNotFound(commit_id)
        # Restored VMs keep the RAM file mapped, so they survive its removal.
        await asyncio.to_thread(shutil.rmtree, directory)
        await self._host.collect_files()

    def commits(self) -> list[CommitInfo]:
        return [
            commit_info(CommitRecord.from_json(read_json(path)))
            for path in sorted(self._host.layout.commits.glob("*/commit.json"))
        ]
