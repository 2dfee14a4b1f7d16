"""Where the QEMU driver keeps things, and the records it writes there.

::

    <state_dir>/                          persistent (data_dir/vm-state by default)
      vms/<vm_id>/
        vm.json          VmRecord: spec, disk chain, RAM file, SSH port, parent commit
        qemu.pid         written by QEMU itself (-pidfile); checked against /proc
        serial.log       the guest console (ttyS0), for boot failures
        qemu.log         QEMU's own error log (-D)
        ssh_key          root's OpenSSH private key, made on first ssh_endpoint or inherited
      commits/<commit_id>/
        commit.json      CommitRecord: spec, disk chain, kernel, accelerator, QEMU version
        device.state     migration stream of CPU and devices without RAM (x-ignore-shared)
        ram              guest RAM as a sparse raw file; restored VMs map it copy-on-write
        ssh_key          the source VM's key, handed to every VM restored from here
      commits/.<commit_id>.partial/       a commit being written; renamed when complete
      layers/<uuid>.qcow2  disk layers. A VM writes only to the last layer of its chain;
                           every other layer is frozen. A commit freezes the VM's current
                           layer (QMP blockdev-snapshot-sync puts a new one on top), so a
                           commit is a chain of frozen layers ending in the image's
                           rootfs.ext4. A layer is deleted when no vm.json or commit.json
                           lists it any more.
      boot/initrd-<image>-<agent>.cpio  the image's initramfs with vers-agent appended, one
                           per image and agent version; removed when no record lists it
    <runtime_dir>/<vm_id>/                tmpfs (/dev/shm/vers-orchestrator by default)
      qmp.sock, vers.sock  QEMU monitor and vers-agent sockets (short paths: 108-byte limit)
      ram                 guest RAM of a VM that booted here, mapped shared so that a
                          commit can copy it without streaming it through QEMU
    <runtime_dir>/.helper-<hex>/          a short-lived QEMU that turns a streamed commit
                                          into the ram + device.state form
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vers_orchestrator.drivers.base import DriverError, VmSpec

VERS_AGENT = "vers-agent"
# In each runtime folder: the state directory of the server that made it.
RUNTIME_OWNER = "state-dir"
# A layer being written by a merge (`chains.py`); not `*.qcow2`, so layer collection
# leaves it alone, and start-up removes it.
MERGING_SUFFIX = ".merging"
QEMU_GA = "qemu-ga"


@dataclass(frozen=True, slots=True)
class VmRecord:
    vm_id: str
    spec: VmSpec
    # Base image first, the layer the VM writes to last.
    disk_chain: tuple[str, ...]
    ram_path: str
    # True: RAM is a shared mapping of ram_path (booted here). False: a private,
    # copy-on-write mapping of a commit's RAM file (restored).
    ram_shared: bool
    ssh_port: int
    parent_commit_id: str | None
    accelerator: str
    kernel: str
    initrd: str
    created_at: float
    # What answers inside the guest: "vers-agent", or "qemu-ga" for VMs made before it
    # (records without the field), whose guest operations are refused.
    guest_agent: str = "vers-agent"
    # Whether the machine has the outbound network card (`machine.qemu_argv`); VMs made
    # before it (records without the field) have only the inbound one.
    outbound_nic: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VmRecord:
        return cls(
            **{
                "guest_agent": QEMU_GA,
                **data,
                "spec": VmSpec(**data["spec"]),
                "disk_chain": tuple(data["disk_chain"]),
            }
        )


@dataclass(frozen=True, slots=True)
class CommitRecord:
    commit_id: str
    spec: VmSpec
    # Every layer is frozen; restored VMs put their own layer on top of the last one.
    disk_chain: tuple[str, ...]
    source_vm_id: str
    parent_commit_id: str | None
    accelerator: str
    qemu_version: str
    kernel: str
    initrd: str
    # How long the source VM was stopped for this commit.
    pause_seconds: float
    created_at: float
    guest_agent: str = "vers-agent"
    outbound_nic: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitRecord:
        return cls(
            **{
                "guest_agent": QEMU_GA,
                **data,
                "spec": VmSpec(**data["spec"]),
                "disk_chain": tuple(data["disk_chain"]),
            }
        )


class Layout:
    def __init__(self, state_dir: Path, runtime_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.runtime_dir = runtime_dir.resolve()
        self.vms = self.state_dir / "vms"
        self.commits = self.state_dir / "commits"
        self.layers = self.state_dir / "layers"
        self.boot = self.state_dir / "boot"

    def create_directories(self) -> None:
        try:
            for directory in (self.vms, self.commits, self.layers, self.boot):
                directory.mkdir(parents=True, exist_ok=True)
            # The runtime directory usually sits in world-writable /dev/shm: it must be
            # ours and closed to others, or someone could plant sockets or RAM files there.
            self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DriverError(f"cannot make the directory {exc.filename}: {exc.strerror}") from None
        status = self.runtime_dir.lstat()
        if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.geteuid():
            raise DriverError(f"{self.runtime_dir} is not a directory owned by this user")
        if stat.S_IMODE(status.st_mode) & 0o077:
            self.runtime_dir.chmod(0o700)

    def records(self) -> list[Path]:
        """Every VM's and commit's record, commits being written included: together, the
        files (disk layers, images, boot files) something still needs."""
        return [
            *self.vms.glob("*/vm.json"),
            *self.commits.glob("*/commit.json"),
            *self.commits.glob(".*.partial/commit.json"),
        ]

    def vm_dir(self, vm_id: str) -> Path:
        return self.vms / vm_id

    def vm_record(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "vm.json"

    def pidfile(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "qemu.pid"

    def serial_log(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "serial.log"

    def qemu_log(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "qemu.log"

    def ssh_key(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "ssh_key"

    def runtime(self, vm_id: str) -> Path:
        return self.runtime_dir / vm_id

    def make_runtime(self, folder: Path) -> Path:
        """Make a runtime folder (a VM's, a commit helper's) marked as this state
        directory's: several installations may share the runtime directory, and each
        cleans up only its own folders (`VmHost.remove_leftovers`)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RUNTIME_OWNER).write_text(str(self.state_dir))
        return folder

    def owns_runtime(self, folder: Path) -> bool:
        try:
            return (folder / RUNTIME_OWNER).read_text() == str(self.state_dir)
        except OSError:
            return False

    def commit_dir(self, commit_id: str) -> Path:
        return self.commits / commit_id

    def partial_commit_dir(self, commit_id: str) -> Path:
        return self.commits / f".{commit_id}.partial"

    def commit_record(self, commit_id: str) -> Path:
        return self.commit_dir(commit_id) / "commit.json"

    def new_layer(self) -> Path:
        return self.layers / f"{uuid.uuid4().hex}.qcow2"


def qmp_socket(runtime: Path) -> Path:
    return runtime / "qmp.sock"


def agent_socket(runtime: Path) -> Path:
    return runtime / "vers.sock"


def write_json(path: Path, data: dict[str, Any]) -> None:
    # Readers (a restarted driver, layer collection) must never see half a record.
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(json.dumps(data, indent=2))
    os.replace(staged, path)


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data
