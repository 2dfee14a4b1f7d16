"""Choosing between KVM and TCG, and what each needs on the QEMU command line."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from vers_orchestrator.drivers.base import DriverError
from vers_orchestrator.settings import VM_ACCELERATORS

KVM_DEVICE = Path("/dev/kvm")
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12
# Pagetable-based VM: a /dev/kvm that passes every ioctl but emulates guest ring 0 unless the
# guest kernel was built for it, which no Debian kernel is (they die in its emulator).
PVM_MODULE = Path("/sys/module/kvm_pvm")


@dataclass(frozen=True, slots=True)
class Accelerator:
    name: str
    qemu_args: tuple[str, ...]
    kernel_args: tuple[str, ...]
    # Why this one, for the start-up log.
    reason: str


def kvm_problem() -> str | None:
    """Why KVM cannot run our guests here, or None when it can."""
    if not KVM_DEVICE.exists():
        return f"{KVM_DEVICE} does not exist"
    if PVM_MODULE.exists():
        return "/dev/kvm is PVM, which cannot run unmodified guest kernels"
    flags = _cpu_flags()
    if "vmx" not in flags and "svm" not in flags:
        return "the CPU exposes neither vmx nor svm"
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {KVM_DEVICE}: {exc.strerror}"
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != KVM_API_VERSION:
            return "unexpected KVM API version"
        os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
    except OSError as exc:
        return f"KVM_CREATE_VM failed: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def choose_accelerator(setting: str) -> Accelerator:
    """`setting` is "auto" (KVM when it works, else TCG), "kvm" or "tcg"."""
    if setting not in VM_ACCELERATORS:
        raise DriverError(f"accelerator must be one of {', '.join(VM_ACCELERATORS)}")
    if setting == "tcg":
        return tcg("the accelerator setting is tcg")
    problem = kvm_problem()
    if problem is None:
        reason = f"{KVM_DEVICE} works" if setting == "auto" else "the accelerator setting is kvm"
        return Accelerator(
            name="kvm", qemu_args=("-accel", "kvm", "-cpu", "host"), kernel_args=(), reason=reason
        )
    if setting == "kvm":
        raise DriverError(f"KVM was asked for but cannot be used: {problem}")
    return tcg(problem)


def tcg(reason: str) -> Accelerator:
    return Accelerator(
        name="tcg",
        # A 64 MiB translation cache instead of the default quarter of guest RAM or more
        # saves about 40 MiB of resident memory per VM at no measurable speed cost.
        qemu_args=("-accel", "tcg,tb-size=64", "-cpu", "max"),
        # microvm has no PIT channel 2 to calibrate the TSC against; without this the guest's
        # jiffies never advance under TCG and the boot hangs. Under TCG the guest's TSC is
        # the host's, but its timer interrupts come late whenever the host is busy, so the
        # clocksource watchdog would judge the TSC unstable and fall back to jiffies, whose
        # clock then loses time (76 s in 9 minutes was seen).
        kernel_args=(f"tsc_early_khz={_host_tsc_khz()}", "tsc=reliable"),
        reason=reason,
    )


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _host_tsc_khz() -> int:
    # TCG reads the host's TSC for the guest's RDTSC, so the host's rate is the guest's.
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return round(float(line.partition(":")[2]) * 1000)
    raise DriverError("cannot read the CPU frequency from /proc/cpuinfo")
