"""VMs: make, run commands in, snapshot, branch and delete them, through the driver.

One room per part of a VM's story, sharing one small state object (`context.VmContext`):
`lifecycle` (boot, state, disk, labels, delete, reconcile after a restart), `guest`
(exec, streams and their logs, files, SSH), `snapshots` (commit, restore, branch) and
`fork`. `Vms` holds them for the API; `vms.guest.exec(...)` and so on.
"""

from __future__ import annotations

from collections.abc import Callable

from vers_orchestrator.drivers.base import VmDriver
from vers_orchestrator.services.images import Images
from vers_orchestrator.services.vms.context import VmContext, wire_state
from vers_orchestrator.services.vms.fork import Fork, ForkResult
from vers_orchestrator.services.vms.guest import Guest
from vers_orchestrator.services.vms.lifecycle import Lifecycle, RootConfig
from vers_orchestrator.services.vms.snapshots import Snapshots
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.database import Database

__all__ = ["GUEST_IP", "ForkResult", "RootConfig", "Vms", "wire_state"]

# QEMU user networking: every guest has this address on its own private network.
GUEST_IP = "10.0.2.15"
CLOSE_TIMEOUT_SECONDS = 60.0


class Vms:
    """The VM service of one server process."""

    def __init__(
        self, db: Database, driver: VmDriver, settings: Settings, images: Images | None = None
    ) -> None:
        self._context = VmContext(db, driver, settings)
        self.lifecycle = Lifecycle(self._context, images)
        self.guest = Guest(self._context)
        self.snapshots = Snapshots(self._context)
        self.fork = Fork(self._context, self.snapshots)

    def on_change(self, listener: Callable[[str], None]) -> None:
        """`listener(vm_id)` runs after this server writes a VM's state or labels."""
        self._context.on_change(listener)

    async def reconcile(self) -> None:
        await self.lifecycle.reconcile()

    async def stop_all(self) -> list[str]:
        return await self.lifecycle.stop_all()

    async def close(self) -> None:
        await self._context.close(CLOSE_TIMEOUT_SECONDS)
