"""What the QEMU driver's parts share: where things are, one lock per VM, what runs.

`VmHost` is the one small state object behind `QemuDriver`, `Snapshots` and `Guests`:
configuration, the on-disk layout, the accelerator, per-VM locks, and whether each VM's
vCPUs run. Whether they run is remembered from the driver's own pause and continue, so
guest operations do not ask QEMU first; a new driver object asks QEMU once per VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from vers_orchestrator.drivers.base import (
    CommitNotFound,
    DriverError,
    InvalidRequest,
    VmInfo,
    VmNotFound,
    VmNotRunning,
    VmSpec,
    VmState,
)
from vers_orchestrator.drivers.qemu.accelerator import Accelerator, choose_accelerator
from vers_orchestrator.drivers.qemu.layout import (
    MERGING_SUFFIX,
    CommitRecord,
    Layout,
    VmRecord,
    qmp_socket,
    read_json,
    write_json,
)
from vers_orchestrator.drivers.qemu.machine import launch, qemu_argv, read_pid, run, stop_process
from vers_orchestrator.drivers.qemu.network import (
    NETWORK_MODES,
    check_passt_installed,
    start_passt,
    stop_passt,
)
from vers_orchestrator.drivers.qemu.qmp import QmpClient, QmpError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_MEM_MIB = 128
MAX_VCPUS = 64
# A unix socket path must fit in sun_path (108 bytes with its NUL).
MAX_SOCKET_PATH = 107
# The programs the driver runs, with the Debian package of each (`make install` installs
# them).
QEMU_PACKAGES = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils"}


@dataclass(frozen=True, slots=True)
class QemuDriverConfig:
    state_dir: Path
    runtime_dir: Path
    images_dir: Path
    # "auto" probes KVM and falls back to TCG; "kvm" or "tcg" forces one.
    accelerator: str = "auto"
    qemu_binary: str = "qemu-system-x86_64"
    # Under TCG on two busy cores a boot took 3-8 s; leave room for a loaded CI machine.
    boot_timeout_seconds: float = 180.0
    # Address space randomization in guests: "auto" is off under TCG (see NO_ASLR), on
    # under KVM; "on" or "off" forces it.
    guest_aslr: str = "auto"
    # "nat": guests reach the outside through passt, never the host's loopback; "none":
    # guests send nothing out (`network.py`). Forwards into guests work either way.
    network: str = "nat"
    # Commit VMs by copying their memory while they run (stopped milliseconds instead of
    # for the whole copy), where the copy can be trusted: under KVM, or under TCG with a
    # QEMU that has mapped-ram (`snapshots.py`).
    live_commits: bool = True
    # A commit whose disk chain is longer gets its layers above the image merged into
    # one, in the background (`chains.py`).
    max_chain_layers: int = 16


# Under TCG a translated block of guest code is found again by its virtual address, so with
# every process mapping ld.so and libc at random addresses each new process translates them
# anew: exec of `true` took 20 ms with randomization and 8 ms without (bench/README.md).
# Under KVM randomization costs nothing and stays on.
NO_ASLR = ("norandmaps",)


class VmHost:
    def __init__(self, config: QemuDriverConfig) -> None:
        self.config = config
        check_qemu_installed(config.qemu_binary)
        self.layout = Layout(config.state_dir, config.runtime_dir)
        longest = self.layout.runtime_dir / ("x" * 64) / "vers.sock"
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise DriverError(
                f"runtime directory {self.layout.runtime_dir} is too long for unix sockets"
            )
        if config.network not in NETWORK_MODES:
            raise DriverError(f"network must be one of {', '.join(NETWORK_MODES)}")
        if config.network == "nat":
            check_passt_installed()
        self.layout.create_directories()
        self.accelerator: Accelerator = choose_accelerator(config.accelerator)
        aslr = config.guest_aslr
        if aslr not in ("auto", "on", "off"):
            raise DriverError("guest_aslr must be auto, on or off")
        without_aslr = aslr == "off" or (aslr == "auto" and self.accelerator.name == "tcg")
        self.kernel_args = (*self.accelerator.kernel_args, *(NO_ASLR if without_aslr else ()))
        self._locks: dict[str, asyncio.Lock] = {}
        # Forwards are added under a lock of their own: they must not wait for a commit.
        self._network_locks: dict[str, asyncio.Lock] = {}
        # Each VM's forwards as this driver last read or made them (`QemuDriver.guest_port`).
        self.forwards: dict[str, dict[int, int]] = {}
        self._states: dict[str, VmState] = {}
        self.files_lock = asyncio.Lock()
        self._qemu_version: str | None = None

    # -- records ----------------------------------------------------------------------

    def lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def network_lock(self, vm_id: str) -> asyncio.Lock:
        return self._network_locks.setdefault(vm_id, asyncio.Lock())

    def forget(self, vm_id: str) -> None:
        self._locks.pop(vm_id, None)
        self._network_locks.pop(vm_id, None)
        self.forwards.pop(vm_id, None)
        self._states.pop(vm_id, None)

    def load_vm(self, vm_id: str) -> VmRecord:
        try:
            return VmRecord.from_json(read_json(self.layout.vm_record(vm_id)))
        except FileNotFoundError:
            raise VmNotFound(vm_id) from None

    def save_vm(self, record: VmRecord) -> None:
        write_json(self.layout.vm_record(record.vm_id), record.to_json())

    def load_commit(self, commit_id: str) -> CommitRecord:
        try:
            return CommitRecord.from_json(read_json(self.layout.commit_record(commit_id)))
        except FileNotFoundError:
            raise CommitNotFound(commit_id) from None

    @staticmethod
    def info(record: VmRecord, state: VmState) -> VmInfo:
        return VmInfo(
            vm_id=record.vm_id,
            state=state,
            spec=record.spec,
            parent_commit_id=record.parent_commit_id,
        )

    # -- processes ----------------------------------------------------------------------

    def pid(self, vm_id: str) -> int | None:
        return read_pid(self.layout.pidfile(vm_id), qmp_socket(self.layout.runtime(vm_id)))

    async def qmp(self, vm_id: str) -> QmpClient:
        return await QmpClient.connect(qmp_socket(self.layout.runtime(vm_id)))

    async def state(self, vm_id: str) -> VmState:
        """What QEMU says now (and remember it)."""
        if self.pid(vm_id) is None:
            self._states.pop(vm_id, None)
            return VmState.DEAD
        try:
            async with await self.qmp(vm_id) as qmp:
                running = await is_running(qmp)
        except QmpError:
            if self.pid(vm_id) is None:
                return VmState.DEAD
            raise
        state = VmState.RUNNING if running else VmState.PAUSED
        self._states[vm_id] = state
        return state

    def remember(self, vm_id: str, state: VmState) -> None:
        self._states[vm_id] = state

    async def require_alive(self, vm_id: str) -> None:
        if self.pid(vm_id) is None:
            raise VmNotRunning(vm_id, VmState.DEAD)

    async def require_running(self, vm_id: str) -> None:
        """VmNotRunning unless the VM's process lives and its vCPUs run."""
        if self.pid(vm_id) is None:
            self._states.pop(vm_id, None)
            raise VmNotRunning(vm_id, VmState.DEAD)
        state = self._states.get(vm_id)
        if state is None:
            state = await self.state(vm_id)
        if state is not VmState.RUNNING:
            raise VmNotRunning(vm_id, state)

    async def launch_vm(self, record: VmRecord, *, incoming: bool) -> None:
        vm_id = record.vm_id
        runtime = self.layout.runtime(vm_id)
        outbound = None
        if record.outbound_nic and self.config.network == "nat":
            outbound = await start_passt(runtime, self.passt_log(vm_id))
        argv = qemu_argv(
            record,
            runtime,
            qemu_binary=self.config.qemu_binary,
            accelerator=self.accelerator,
            kernel_args=self.kernel_args,
            pidfile=self.layout.pidfile(vm_id),
            incoming=incoming,
            serial_log=self.layout.serial_log(vm_id),
            qemu_log=self.layout.qemu_log(vm_id),
            ssh_port=record.ssh_port,
            outbound_fd=None if outbound is None else outbound.fileno(),
        )
        try:
            fds = () if outbound is None else (outbound.fileno(),)
            await launch(argv, self.layout.vm_dir(vm_id) / "launch.err", vm_id, fds)
        finally:
            # QEMU holds its own copy now (or never will): passt ends with QEMU's.
            if outbound is not None:
                outbound.close()

    def passt_log(self, vm_id: str) -> Path:
        return self.layout.vm_dir(vm_id) / "passt.log"

    async def destroy(self, vm_id: str) -> None:
        """Stop the VM's QEMU and remove its files; the caller drops its guest connection."""
        runtime = self.layout.runtime(vm_id)
        await stop_process(read_pid(self.layout.pidfile(vm_id), qmp_socket(runtime)))
        await stop_passt(runtime, self.passt_log(vm_id))
        self.forwards.pop(vm_id, None)
        await asyncio.to_thread(shutil.rmtree, runtime, True)
        await asyncio.to_thread(shutil.rmtree, self.layout.vm_dir(vm_id), True)
        self._states.pop(vm_id, None)

    async def collect_files(self) -> None:
        """Remove disk layers and boot initramfs files that no record lists any more."""
        async with self.files_lock:
            referenced: set[str] = set()
            for path in self.layout.records():
                with contextlib.suppress(FileNotFoundError):
                    record = read_json(path)
                    referenced.update(record["disk_chain"])
                    referenced.add(record["initrd"])
            for layer in self.layout.layers.glob("*.qcow2"):
                if str(layer) not in referenced:
                    layer.unlink(missing_ok=True)
            for initrd in self.layout.boot.glob("initrd-*.cpio"):
                if str(initrd) not in referenced:
                    initrd.unlink(missing_ok=True)

    async def remove_leftovers(self) -> list[str]:
        """Remove what operations cut short by a crash left behind; returns what went, for
        the log. Only safe while no operation runs (at start-up, before serving):
        - `commits/.<id>.partial/`: commits that were being written;
        - `layers/*.merging`: merged layers that were being written (`chains.py`);
        - `vms/<id>/` without a `vm.json`: VMs that were being made, their QEMU stopped;
        - in the runtime directory, among the folders this state directory made (others
          may share it): commit helpers (`.helper-*`, their QEMU stopped) and the folders
          of VMs that have no record or whose QEMU is gone (a dead VM's RAM file would
          hold tmpfs memory for nothing);
        - a disk layer a VM's record names but a crash kept QEMU from making;
        - a VM left stopped by a commit's migration (QEMU's `postmigrate`: its disks are
          handed over and the next commit could not migrate it) is made an ordinary paused
          VM again; the caller decides whether it runs;
        then the disk layers and boot files only those listed.
        """
        removed: list[str] = []
        layout = self.layout
        for merging in layout.layers.glob(f"*{MERGING_SUFFIX}"):
            merging.unlink(missing_ok=True)
            removed.append(f"unfinished merged layer {merging.name}")
        for partial in layout.commits.glob(".*.partial"):
            await asyncio.to_thread(shutil.rmtree, partial, True)
            removed.append(f"unfinished commit {partial.name}")
        for vm_dir in layout.vms.iterdir():
            if vm_dir.is_dir() and not (vm_dir / "vm.json").exists():
                runtime = layout.runtime(vm_dir.name)
                await stop_process(read_pid(vm_dir / "qemu.pid", qmp_socket(runtime)))
                await asyncio.to_thread(shutil.rmtree, vm_dir, True)
                removed.append(f"unfinished VM {vm_dir.name}")
        for runtime in layout.runtime_dir.iterdir():
            name = runtime.name
            if not layout.owns_runtime(runtime):
                continue  # another installation's (the runtime directory may be shared)
            if name.startswith(".helper-"):
                await stop_process(read_pid(runtime / "qemu.pid", qmp_socket(runtime)))
            elif layout.vm_record(name).exists() and self.pid(name) is not None:
                continue
            else:
                await stop_passt(runtime, self.passt_log(name))
            await asyncio.to_thread(shutil.rmtree, runtime, True)
            removed.append(f"runtime folder {name}")
        for record_path in layout.vms.glob("*/vm.json"):
            vm_id = record_path.parent.name
            if self._drop_unmade_layers(vm_id):
                removed.append(f"a disk layer of VM {vm_id} that was never made")
            if self.pid(vm_id) is not None and await self._take_back_from_migration(vm_id):
                removed.append(f"the migration state of VM {vm_id}")
        await self.collect_files()
        return removed

    def _drop_unmade_layers(self, vm_id: str) -> bool:
        """A commit records the VM's next layer before QEMU makes it (`_freeze_disk`); a
        crash in between leaves the record naming a file that does not exist, and the
        next commit would freeze a chain nothing can open. QEMU still writes to the layer
        below it, which becomes the top again."""
        try:
            record = self.load_vm(vm_id)
        except VmNotFound:
            return False
        chain = record.disk_chain
        while len(chain) > 1 and not Path(chain[-1]).exists():
            chain = chain[:-1]
        if chain == record.disk_chain:
            return False
        self.save_vm(replace(record, disk_chain=chain))
        return True

    async def _take_back_from_migration(self, vm_id: str) -> bool:
        async with await self.qmp(vm_id) as qmp:
            status = await qmp.execute("query-status")
            if status["status"] not in ("postmigrate", "finish-migrate"):
                return False
            await qmp.execute("migrate_cancel")  # a no-op once the migration has ended
            deadline = asyncio.get_running_loop().time() + 30
            while (await qmp.execute("query-status"))["status"] == "finish-migrate":
                if asyncio.get_running_loop().time() > deadline:
                    raise DriverError(f"VM {vm_id} stays in finish-migrate")
                await asyncio.sleep(0.05)
            # As a commit ends (`migration.settle`): `cont` takes the disks back.
            await qmp.execute("cont")
            await qmp.execute("stop")
        self._states[vm_id] = VmState.PAUSED
        return True

    def console_tail(self, vm_id: str) -> str:
        try:
            return self.layout.serial_log(vm_id).read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return "(no console output)"

    async def qemu_version(self) -> str:
        if self._qemu_version is None:
            output = await run(self.config.qemu_binary, "--version")
            self._qemu_version = output.splitlines()[0].strip()
        return self._qemu_version


async def is_running(qmp: QmpClient) -> bool:
    status = await qmp.execute("query-status")
    return bool(status["running"])


def check_qemu_installed(qemu_binary: str) -> None:
    """Refuse to start without QEMU, rather than fail at the first VM."""
    missing = [program for program in (qemu_binary, "qemu-img") if shutil.which(program) is None]
    if missing:
        packages = [QEMU_PACKAGES.get(program, program) for program in missing]
        noun = "package" if len(packages) == 1 else "packages"
        raise DriverError(
            f"QEMU is not installed ({', '.join(missing)} not found on PATH):"
            f" install the Debian {noun} {' '.join(packages)} (`make install` does)"
        )


def check_id(value: str, kind: str) -> None:
    if not ID_PATTERN.match(value):
        raise InvalidRequest(
            f"{kind} id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit: {value!r}"
        )


def check_spec(spec: VmSpec) -> None:
    if spec.mem_mib < MIN_MEM_MIB:
        raise InvalidRequest(f"mem_mib must be at least {MIN_MEM_MIB}")
    if not 1 <= spec.vcpus <= MAX_VCPUS:
        raise InvalidRequest(f"vcpus must be between 1 and {MAX_VCPUS}")
