"""The hypervisor boundary: what the services may ask of a VM driver, and what they get back.

Every method is async and never blocks the event loop. Ids are chosen by the caller (the
API stores them first, then asks the driver), so a retry after a crash can find the half-made
VM or commit by its id. A driver keeps its own state on disk and finds its VMs again after
a restart: `inventory` is what the services reconcile against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class VmState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    # The hypervisor process is gone (crashed, killed, host rebooted); only delete_vm helps.
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class VmSpec:
    mem_mib: int
    vcpus: int
    disk_mib: int


@dataclass(frozen=True, slots=True)
class VmInfo:
    vm_id: str
    state: VmState
    spec: VmSpec
    # The commit this VM was restored or branched from; None for a root VM.
    parent_commit_id: str | None


@dataclass(frozen=True, slots=True)
class CommitInfo:
    commit_id: str
    spec: VmSpec
    source_vm_id: str
    # The commit the source VM was itself restored from, if any.
    parent_commit_id: str | None


@dataclass(frozen=True, slots=True)
class BranchResult:
    commit: CommitInfo
    vms: tuple[VmInfo, ...]


@dataclass(frozen=True, slots=True)
class ExecRequest:
    argv: tuple[str, ...]
    # Added to a default environment (PATH, HOME, LANG); a key given here wins.
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    stdin: bytes = b""
    # None waits for as long as the command runs.
    timeout_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ExecResult:
    # 128 + N when the command was killed by signal N, as a shell reports it.
    exit_code: int
    stdout: bytes
    stderr: bytes
    # The guest agent keeps at most a fixed amount of each stream (16 MiB for qemu-ga).
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass(frozen=True, slots=True)
class SshEndpoint:
    host: str
    port: int
    user: str
    private_key: str


@dataclass(frozen=True, slots=True)
class Inventory:
    vms: tuple[VmInfo, ...]
    commits: tuple[CommitInfo, ...]


class DriverError(Exception):
    """The hypervisor could not do what was asked; the message says why."""


class VmNotFound(DriverError):
    def __init__(self, vm_id: str) -> None:
        super().__init__(f"VM {vm_id} not found")
        self.vm_id = vm_id


class VmAlreadyExists(DriverError):
    def __init__(self, vm_id: str) -> None:
        super().__init__(f"VM {vm_id} already exists")
        self.vm_id = vm_id


class VmNotRunning(DriverError):
    def __init__(self, vm_id: str, state: VmState) -> None:
        super().__init__(f"VM {vm_id} is {state}")
        self.vm_id = vm_id
        self.state = state


class CommitNotFound(DriverError):
    def __init__(self, commit_id: str) -> None:
        super().__init__(f"commit {commit_id} not found")
        self.commit_id = commit_id


class CommitAlreadyExists(DriverError):
    def __init__(self, commit_id: str) -> None:
        super().__init__(f"commit {commit_id} already exists")
        self.commit_id = commit_id


class InvalidRequest(DriverError):
    """The arguments can never work (bad id, disk smaller than the image, shrinking a disk)."""


class ExecTimeout(DriverError):
    """The command outlived its timeout and was killed with its process group."""

    def __init__(self, timeout_seconds: float, stdout: bytes, stderr: bytes) -> None:
        super().__init__(f"command timed out after {timeout_seconds:g} s")
        self.timeout_seconds = timeout_seconds
        self.stdout = stdout
        self.stderr = stderr


class GuestAgentError(DriverError):
    """The agent inside the guest refused a request or stopped answering."""


class GuestFileNotFound(GuestAgentError):
    def __init__(self, path: str) -> None:
        super().__init__(f"no such file in the VM: {path}")
        self.path = path


class VmDriver(Protocol):
    async def create_vm(self, vm_id: str, spec: VmSpec) -> VmInfo:
        """Boot a root VM from the default image; returns once commands can run in it."""
        ...

    async def pause(self, vm_id: str) -> None: ...

    async def resume(self, vm_id: str) -> None: ...

    async def commit(self, vm_id: str, commit_id: str, *, keep_paused: bool = False) -> CommitInfo:
        """Freeze disk, memory and CPU of the VM under `commit_id`.

        The VM is paused for the shortest time the driver manages; afterwards it is paused if
        `keep_paused`, otherwise back in the state it had before.
        """
        ...

    async def restore(self, commit_id: str, new_vm_ids: Sequence[str]) -> tuple[VmInfo, ...]:
        """Start one running VM per id, each continuing exactly where the commit was."""
        ...

    async def branch(
        self,
        vm_id: str,
        commit_id: str,
        new_vm_ids: Sequence[str],
        *,
        keep_paused: bool = False,
    ) -> BranchResult:
        """Commit the VM under `commit_id`, then restore the new VMs from that commit."""
        ...

    async def exec(self, vm_id: str, request: ExecRequest) -> ExecResult: ...

    async def read_file(self, vm_id: str, path: str) -> bytes: ...

    async def write_file(
        self,
        vm_id: str,
        path: str,
        data: bytes,
        *,
        mode: int | None = None,
        create_dirs: bool = False,
    ) -> None:
        """Replace the file's content; `mode` None keeps an existing file's mode (new: 0644)."""
        ...

    async def grow_disk(self, vm_id: str, disk_mib: int) -> VmInfo:
        """Grow the disk and the root file system on it; it never shrinks."""
        ...

    async def ssh_endpoint(self, vm_id: str) -> SshEndpoint: ...

    async def status(self, vm_id: str) -> VmInfo: ...

    async def delete_vm(self, vm_id: str) -> None:
        """Stop the VM and remove every file and process of it."""
        ...

    async def delete_commit(self, commit_id: str) -> None:
        """Remove the commit's data; VMs already restored from it keep running."""
        ...

    async def inventory(self) -> Inventory: ...

    async def close(self) -> None:
        """Drop connections to guests; VMs keep running for the next driver object."""
        ...
