"""The hypervisor boundary: what the services may ask of a VM driver, and what they get back.

Every method is async and never blocks the event loop. Ids are chosen by the caller (the
API stores them first, then asks the driver), so a retry after a crash can find the half-made
VM or commit by its id. A driver keeps its own state on disk and finds its VMs again after
a restart: `inventory` is what the services reconcile against.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

MIB = 1024 * 1024
# What a command's output keeps of each stream when nobody streams it; the rest is counted.
DEFAULT_OUTPUT_LIMIT = 16 * MIB


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
    # None: root's home. A directory that does not exist is InvalidRequest.
    working_dir: str | None = None
    stdin: bytes = b""
    # None waits for as long as the command runs; after it the command and every process it
    # started are killed.
    timeout_seconds: float | None = None
    # Bytes kept of each of stdout and stderr when the output is not streamed to a sink.
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    # Shows up in the guest (the command's cgroup name); an exec id, say.
    name: str = ""


@dataclass(frozen=True, slots=True)
class ExecResult:
    # 128 + N when the command was killed by signal N, as a shell reports it; 127 when the
    # program does not exist, 126 when it cannot be run (the reason is in stderr).
    exit_code: int
    stdout: bytes
    stderr: bytes
    # More was written than `output_limit`; `*_bytes` says how much in all.
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    # The command outlived its timeout and was killed with everything it started.
    timed_out: bool = False
    stdout_bytes: int = 0
    stderr_bytes: int = 0


# Receives a command's output as it comes: ("stdout" | "stderr", bytes). Awaited: a slow
# sink holds the command back, none of its output is dropped.
OutputSink = Callable[[str, bytes], Awaitable[None]]


class FileReader(Protocol):
    """A guest file opened for reading: its size, then its bytes in order."""

    size: int

    def chunks(self) -> AsyncIterator[bytes]: ...


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


class GuestAgentError(DriverError):
    """The agent inside the guest refused a request or stopped answering."""


class AgentUnavailable(GuestAgentError):
    """The agent in the guest stopped answering, restarted, or broke the protocol: what it
    was doing is unknown. A new connection is tried on the next call."""


class GuestFileNotFound(GuestAgentError):
    def __init__(self, path: str) -> None:
        super().__init__(f"no such file in the VM: {path}")
        self.path = path


class NotRegularFile(GuestAgentError):
    """The path is a directory, device, FIFO or socket; the file calls take regular files."""

    def __init__(self, path: str) -> None:
        super().__init__(f"not a regular file: {path}")
        self.path = path


class FileTooLarge(GuestAgentError):
    """The file is larger than the caller said it can take."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(f"{path} is {size} bytes, more than {limit}")
        self.path = path
        self.size = size
        self.limit = limit


class ImageInUse(DriverError):
    def __init__(self) -> None:
        super().__init__("image is in use by VMs")


class ImageMissing(DriverError):
    def __init__(self, key: str) -> None:
        super().__init__(f"the image's files are missing: {key}")
        self.key = key


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A user's image as the driver keeps it: `key` names its content and build, `size_mib`
    is its filesystem's whole size (what a VM's disk must hold at least)."""

    key: str
    size_mib: int


class VmDriver(Protocol):
    async def create_vm(self, vm_id: str, spec: VmSpec, *, image: str | None = None) -> VmInfo:
        """Boot a root VM from the default image, or from the stored image of key `image`
        (ImageMissing if it is gone); returns once commands can run in it."""
        ...

    async def image_key(self, source_digest: str, size_mib: int) -> str:
        """The key under which the content `source_digest` ("sha256:…") built with
        `size_mib` MiB of extra space is stored; the same for the same content and build.
        Waits for the default image, which every image is laid over."""
        ...

    async def find_image(self, key: str) -> StoredImage | None: ...

    async def store_image(
        self,
        key: str,
        tree: Path,
        *,
        env: dict[str, str],
        workdir: str | None,
        size_mib: int,
        progress: Callable[[str], None],
    ) -> StoredImage:
        """Make a bootable image of the root filesystem tree `tree` (laid over the default
        image's files, `env` added to /etc/environment, `workdir` the default of exec) with
        `size_mib` MiB free, under `key`. Takes seconds to minutes, in a thread of its own.
        Raises DriverError with the reason (too large, disk full)."""
        ...

    async def delete_image(self, key: str) -> None:
        """Remove a stored image's files; ImageInUse while a VM or commit is made from it."""
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

    async def exec(
        self,
        vm_id: str,
        request: ExecRequest,
        sink: OutputSink | None = None,
        started: Callable[[], None] | None = None,
    ) -> ExecResult:
        """Run a command; returns when the command itself exits (processes it left running
        go on). With `sink`, output goes there as it comes and the result carries none.
        `started` is called once the command runs (or has failed to start, with 126/127):
        an error raised before it means the command never ran."""
        ...

    async def read_file(self, vm_id: str, path: str, *, max_bytes: int | None = None) -> bytes:
        """A regular file's bytes; FileTooLarge beyond `max_bytes`."""
        ...

    def open_file(self, vm_id: str, path: str) -> AbstractAsyncContextManager[FileReader]:
        """A regular file to read as a stream; leaving the context early stops the read."""
        ...

    async def write_file(
        self,
        vm_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int | None = None,
        create_dirs: bool = False,
    ) -> int:
        """Replace a regular file's content, all at once (never half-written); returns the
        bytes written. `mode` None keeps an existing file's mode (new: 0644)."""
        ...

    async def grow_disk(self, vm_id: str, disk_mib: int) -> VmInfo:
        """Grow the disk and the root file system on it; it never shrinks.

        `GuestAgentError` means the disk has grown (it is `disk_mib` from now on) but the
        guest did not grow its file system; any other error, that the disk is unchanged."""
        ...

    async def ssh_endpoint(self, vm_id: str) -> SshEndpoint: ...

    async def guest_port(self, vm_id: str, port: int) -> tuple[str, int]:
        """(host, port) on this machine where a TCP connection reaches `port` (1-65535)
        inside the VM, running or paused; the address holds while the VM's hypervisor
        lives. Raises VmNotFound, VmNotRunning (dead), DriverError."""
        ...

    async def status(self, vm_id: str) -> VmInfo: ...

    async def delete_vm(self, vm_id: str) -> None:
        """Stop the VM and remove every file and process of it."""
        ...

    async def delete_commit(self, commit_id: str) -> None:
        """Remove the commit's data; VMs already restored from it keep running."""
        ...

    async def inventory(self) -> Inventory: ...

    def warm_up(self) -> None:
        """Start preparing what new VMs need (the default image) in the background, if it
        is missing; returns at once. VM creation waits for it."""
        ...

    async def remove_leftovers(self) -> list[str]:
        """Remove the files and processes of operations a crash cut short (unfinished
        commits and VMs, helpers, runtime folders of VMs that are gone); returns what went.
        Only while no operation runs: at start-up, before `inventory`."""
        ...

    async def close(self) -> None:
        """Drop connections to guests; VMs keep running for the next driver object."""
        ...
