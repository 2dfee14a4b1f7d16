"""What the contract suite needs to know about each driver besides its interface.

A harness makes driver objects over one scratch state (a new object is what a server
restart looks like), can kill a VM's hypervisor process behind the driver's back, and lists
whatever a VM left behind on the host. Add a driver here and the whole suite runs on it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests.support import live_processes
from vers_orchestrator.drivers.base import VmDriver
from vers_orchestrator.drivers.qemu.driver import QemuDriver, QemuDriverConfig
from vers_orchestrator.drivers.qemu.images import ensure_default_image

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
# Git-ignored and kept between runs, so only the first run on a machine pays for debootstrap.
IMAGES_DIR = REPO / "build" / "images"
ACCELERATOR_VARIABLE = "VERS_ORCHESTRATOR_VM_ACCELERATOR"
# Another QEMU for the driver suites, e.g. Debian 12's 7.2 from bench/debian-qemu-7.2.sh.
QEMU_VARIABLE = "VERS_ORCHESTRATOR_TEST_QEMU"


class Harness(Protocol):
    name: str

    def driver(self) -> VmDriver: ...

    def kill_hypervisor(self, vm_id: str) -> None: ...

    def leftovers(self, vm_id: str) -> list[str]:
        """Processes and files of the VM that still exist on the host."""
        ...

    def remains(self) -> list[str]:
        """Everything of this harness's driver still on the host (empty after a full cleanup)."""
        ...

    def destroy(self) -> None:
        """Last resort after the test: kill and remove whatever the driver left."""
        ...


class QemuHarness:
    name = "qemu"

    def __init__(self, scratch: Path, **settings: Any) -> None:
        """`settings`: fields of QemuDriverConfig other than the paths and the QEMU
        (`network="none"`, `max_chain_layers=3` …)."""
        ensure_default_image(IMAGES_DIR, lambda line: print(line, file=sys.stderr, flush=True))
        self.settings = settings
        self.state_dir = scratch / "state"
        # Unix socket paths are limited to 107 bytes, pytest's tmp paths are long.
        self.runtime_dir = Path(f"/dev/shm/vers-orch-test-{secrets.token_hex(4)}")

    def driver(self) -> QemuDriver:
        return QemuDriver(
            QemuDriverConfig(
                state_dir=self.state_dir,
                runtime_dir=self.runtime_dir,
                images_dir=IMAGES_DIR,
                accelerator=os.environ.get(ACCELERATOR_VARIABLE, "auto"),
                qemu_binary=os.environ.get(QEMU_VARIABLE, "qemu-system-x86_64"),
                **self.settings,
            )
        )

    def kill_hypervisor(self, vm_id: str) -> None:
        pid = int((self.state_dir / "vms" / vm_id / "qemu.pid").read_text())
        os.kill(pid, signal.SIGKILL)

    def leftovers(self, vm_id: str) -> list[str]:
        paths = [self.state_dir / "vms" / vm_id, self.runtime_dir / vm_id]
        found = [str(path) for path in paths if path.exists()]
        return found + [f"process {pid}" for pid in live_processes(str(self.runtime_dir / vm_id))]

    def remains(self) -> list[str]:
        found = [
            str(path)
            for directory in ("vms", "commits", "layers")
            for path in (self.state_dir / directory).iterdir()
        ]
        found += [str(path) for path in self.runtime_dir.iterdir()]
        return found + [f"process {pid}" for pid in live_processes(str(self.runtime_dir))]

    def destroy(self) -> None:
        for pid in live_processes(str(self.runtime_dir)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


HARNESSES: dict[str, Callable[[Path], Harness]] = {"qemu": QemuHarness}


def run(harness: Harness, work: Callable[[VmDriver], Awaitable[T]]) -> T:
    """Run `work` with a fresh driver object in a fresh event loop, closing it afterwards."""

    async def session() -> T:
        driver = harness.driver()
        try:
            return await work(driver)
        finally:
            await driver.close()

    return asyncio.run(session())
