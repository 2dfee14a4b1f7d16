"""The hypervisor boundary. Services depend on `base.VmDriver`, never on a concrete driver."""

from __future__ import annotations

from vers_orchestrator.drivers.base import VmDriver
from vers_orchestrator.drivers.qemu.driver import QemuDriver, QemuDriverConfig
from vers_orchestrator.settings import Settings


def create_driver(settings: Settings) -> VmDriver:
    """The driver for these settings. QEMU is the only one; it picks KVM or TCG itself."""
    return QemuDriver(
        QemuDriverConfig(
            state_dir=settings.effective_vm_state_dir,
            runtime_dir=settings.vm_runtime_dir,
            images_dir=settings.effective_images_dir,
            accelerator=settings.vm_accelerator,
            guest_aslr=settings.vm_guest_aslr,
            network=settings.vm_network,
        )
    )
