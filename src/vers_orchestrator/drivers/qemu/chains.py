"""Long disk chains, merged in the background.

Every commit of a VM restored from a commit adds a layer to the chain under it, so a VM
ten generations down reads through ten qcow2 layers. Measured here (`bench/README.md`): a
file written in the root reads as fast in the 10th generation as in the 1st, so merging
is not needed often; past `QemuDriverConfig.max_chain_layers` (16: the research note's
suggestion) a commit's layers above the image are copied into one new layer backed by
the image, and the commit's record then names that shorter chain. Only new restores use
it: running VMs keep the chain they opened, so none is stopped, and the old layers go
when no record lists them (`VmHost.collect_files`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from vers_orchestrator.drivers.base import CommitNotFound, DriverError
from vers_orchestrator.drivers.qemu.host import VmHost
from vers_orchestrator.drivers.qemu.layout import MERGING_SUFFIX, CommitRecord, write_json
from vers_orchestrator.drivers.qemu.machine import run

log = logging.getLogger(__name__)


class ChainMerger:
    def __init__(self, host: VmHost) -> None:
        self._host = host
        self._tasks: set[asyncio.Task[None]] = set()

    def after_commit(self, commit: CommitRecord) -> None:
        """Start merging `commit`'s chain in the background if it is too long."""
        if len(commit.disk_chain) <= self._host.config.max_chain_layers:
            return
        task = asyncio.get_running_loop().create_task(self._merge(commit.commit_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Until the merges started so far have ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.wait()

    async def _merge(self, commit_id: str) -> None:
        host = self._host
        try:
            commit = host.load_commit(commit_id)
        except CommitNotFound:
            return
        base, top = commit.disk_chain[0], commit.disk_chain[-1]
        merged = host.layout.new_layer()
        staged = merged.with_name(merged.name + MERGING_SUFFIX)
        try:
            # Everything above the image, in one layer that reads the image beneath it
            # (a raw file system, as a new VM's first layer reads it: QemuDriver.create_vm).
            await run(
                "qemu-img", "convert", "-q", "-O", "qcow2",
                "-B", base, "-F", "raw", top, str(staged),
            )  # fmt: skip
            async with host.files_lock:
                try:
                    current = host.load_commit(commit_id)
                except CommitNotFound:
                    return  # deleted meanwhile
                staged.rename(merged)
                shorter = replace(current, disk_chain=(base, str(merged)))
                write_json(host.layout.commit_record(commit_id), shorter.to_json())
            log.info(
                "merged the %d disk layers of commit %s into one",
                len(commit.disk_chain) - 1, commit_id,
            )  # fmt: skip
        except DriverError as exc:
            log.warning("merging the disk chain of commit %s failed: %s", commit_id, exc)
        finally:
            staged.unlink(missing_ok=True)
        # The old layers are left to the next collection (a deletion's): a restore may be
        # between reading the old chain and recording its VM.
