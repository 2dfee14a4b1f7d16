"""VMs as QEMU microvm processes; commits as frozen qcow2 layers plus a RAM file.

Every QEMU runs daemonized with a pidfile, so it outlives the driver object and the server;
a new driver object finds VMs again from the state directory (see `layout`). One driver
object per state directory at a time: QEMU's sockets take one client each.

How a commit works (QEMU 7.2 has neither mapped-ram nor file: migration):

* A VM booted here keeps its RAM in a tmpfs file mapped shared. A commit stops the VM,
  freezes its disk layer (blockdev-snapshot-sync), saves CPU and device state without RAM
  (x-ignore-shared), copies the RAM file sparsely, and continues: about 0.1-0.3 s stopped.
* A VM restored from a commit maps the commit's RAM file privately (copy-on-write), so idle
  branches share their clean pages through the page cache. Its memory is not in a file, so
  its commit streams the RAM over a unix socket into a helper QEMU whose RAM is a shared
  file in the new commit, and the helper then saves device state the same way as above.
  Every commit therefore has the same form, and every restore is the same.

After a restore the guest's clock is set to the host's and its kernel RNG is reseeded with
fresh host randomness, and the VM gets its own SSH port; everything else is the parent's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vers_orchestrator.drivers.base import (
    BranchResult,
    CommitAlreadyExists,
    CommitInfo,
    CommitNotFound,
    DriverError,
    ExecRequest,
    ExecResult,
    ExecTimeout,
    GuestAgentError,
    GuestFileNotFound,
    InvalidRequest,
    Inventory,
    SshEndpoint,
    VmAlreadyExists,
    VmInfo,
    VmNotFound,
    VmNotRunning,
    VmSpec,
    VmState,
)
from vers_orchestrator.drivers.qemu.accelerator import Accelerator, choose_accelerator
from vers_orchestrator.drivers.qemu.agent import GuestAgent
from vers_orchestrator.drivers.qemu.images import ImagePaths, ensure_default_image
from vers_orchestrator.drivers.qemu.layout import (
    CommitRecord,
    Layout,
    VmRecord,
    qga_socket,
    qmp_socket,
    read_json,
    write_json,
)
from vers_orchestrator.drivers.qemu.qmp import QmpClient, QmpError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_MEM_MIB = 128
MAX_VCPUS = 64
RAM_BLOCK_ID = "ram0"
# A unix socket path must fit in sun_path (108 bytes with its NUL).
MAX_SOCKET_PATH = 107
# 7.2 throttles migration to 128 MiB/s by default, which would stretch every commit's pause.
MIGRATION_BANDWIDTH = 100 * 1024 * MIB
MIGRATION_TIMEOUT_SECONDS = 300.0
RESTORE_AGENT_TIMEOUT_SECONDS = 60.0
PROCESS_EXIT_TIMEOUT_SECONDS = 10.0
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
# qemu-ga has no working-directory field. Each process started costs tens of milliseconds
# under TCG, so the shell is only put in front of the command when a directory is asked for.
CHDIR_WRAPPER = ("/bin/sh", "-c", 'cd -- "$0" && exec "$@"')
# On timeout: stop the command and everything it started, children before parents; the
# stop comes first so that nothing forks while the tree is walked.
KILL_TREE_SCRIPT = """kill_tree() {
    kill -STOP "$1" 2>/dev/null
    for child in $(ps -o pid= --ppid "$1"); do kill_tree "$child"; done
    kill -KILL "$1" 2>/dev/null
}
kill_tree "$0"
"""
# Run in the guest after a restore, as one process (perl-base is in every Debian system).
# Not guest-set-time: it also runs `hwclock -w`, which waits for the RTC's next second (about
# 1 s per restore). Writing to /dev/urandom alone only feeds the input pool; RNDRESEEDCRNG
# makes the kernel's CRNG, which every branch inherited in the same state, use it now.
REFRESH_IDENTITY_SCRIPT = """
my ($seconds, $nanoseconds, $seed) = @ARGV;
my $SYS_clock_settime = 227;
my $CLOCK_REALTIME = 0;
my $RNDRESEEDCRNG = 0x5207;
syscall($SYS_clock_settime, $CLOCK_REALTIME, pack("q q", $seconds, $nanoseconds)) == 0
    or die "clock_settime: $!\\n";
open(my $rng, ">", "/dev/urandom") or die "/dev/urandom: $!\\n";
syswrite($rng, pack("H*", $seed)) or die "/dev/urandom: $!\\n";
ioctl($rng, $RNDRESEEDCRNG, 0) or die "RNDRESEEDCRNG: $!\\n";
"""
# What qemu-ga says when the program cannot be started; a shell would exit 127.
SPAWN_FAILURE = "Failed to execute child process"
COMMAND_NOT_FOUND_EXIT_CODE = 127
EXEC_FINE_POLL_SECONDS = 0.3
EXEC_FINE_POLL_INTERVAL = 0.01
EXEC_MAX_POLL_INTERVAL = 0.1
FILE_READ_CHUNK = 16 * MIB
FILE_WRITE_CHUNK = 8 * MIB
FILE_CHUNK_TIMEOUT_SECONDS = 120.0
SSH_USER = "root"
SSH_KEY_SCRIPT = """set -e
umask 077
mkdir -p /root/.ssh
rm -f /run/vers-orchestrator-key /run/vers-orchestrator-key.pub
ssh-keygen -q -t ed25519 -N '' -C vers-orchestrator -f /run/vers-orchestrator-key
cat /run/vers-orchestrator-key.pub >> /root/.ssh/authorized_keys
cat /run/vers-orchestrator-key
rm -f /run/vers-orchestrator-key /run/vers-orchestrator-key.pub
"""


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


class QemuDriver:
    def __init__(self, config: QemuDriverConfig) -> None:
        self._config = config
        self._layout = Layout(config.state_dir, config.runtime_dir)
        longest = self._layout.runtime_dir / ("x" * 64) / "qmp.sock"
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise DriverError(
                f"runtime directory {self._layout.runtime_dir} is too long for unix sockets"
            )
        self._layout.create_directories()
        self.accelerator: Accelerator = choose_accelerator(config.accelerator)
        self._locks: dict[str, asyncio.Lock] = {}
        self._agents: dict[str, GuestAgent] = {}
        self._layers_lock = asyncio.Lock()
        self._qemu_version: str | None = None

    # ----------------------------------------------------------------- lifecycle

    async def create_vm(self, vm_id: str, spec: VmSpec) -> VmInfo:
        _check_id(vm_id, "VM")
        _check_spec(spec)
        async with self._lock(vm_id):
            if self._layout.vm_dir(vm_id).exists():
                raise VmAlreadyExists(vm_id)
            image = await asyncio.to_thread(
                ensure_default_image, self._config.images_dir, _log_progress
            )
            if spec.disk_mib < image.rootfs_mib:
                raise InvalidRequest(
                    f"disk_mib must be at least {image.rootfs_mib} (the image's file system)"
                )
            record = self._new_root_record(vm_id, spec, image)
            self._layout.vm_dir(vm_id).mkdir(parents=True)
            self._layout.runtime(vm_id).mkdir(parents=True, exist_ok=True)
            write_json(self._layout.vm_record(vm_id), record.to_json())
            try:
                await _run(
                    "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                    "-b", record.disk_chain[0], record.disk_chain[-1], f"{spec.disk_mib}M",
                )  # fmt: skip
                await self._launch(self._vm_argv(record, incoming=False), vm_id)
                await self._connect_agent(vm_id, self._config.boot_timeout_seconds)
            except BaseException:
                await self._destroy(vm_id)
                raise
        return self._info(record, VmState.RUNNING)

    async def pause(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            self._load_vm(vm_id)
            await self._require_alive(vm_id)
            async with await self._qmp(vm_id) as qmp:
                await qmp.execute("stop")

    async def resume(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            self._load_vm(vm_id)
            await self._require_alive(vm_id)
            async with await self._qmp(vm_id) as qmp:
                await qmp.execute("cont")

    async def status(self, vm_id: str) -> VmInfo:
        async with self._lock(vm_id):
            record = self._load_vm(vm_id)
            return self._info(record, await self._state(vm_id))

    async def delete_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            self._load_vm(vm_id)
            await self._destroy(vm_id)
        self._locks.pop(vm_id, None)
        await self._collect_layers()

    async def inventory(self) -> Inventory:
        vm_ids = sorted(path.parent.name for path in self._layout.vms.glob("*/vm.json"))
        vms = await asyncio.gather(*(self._status_if_exists(vm_id) for vm_id in vm_ids))
        commits = [
            _commit_info(CommitRecord.from_json(read_json(path)))
            for path in sorted(self._layout.commits.glob("*/commit.json"))
        ]
        return Inventory(vms=tuple(vm for vm in vms if vm is not None), commits=tuple(commits))

    async def close(self) -> None:
        agents = list(self._agents.values())
        self._agents.clear()
        for agent in agents:
            await agent.close()

    # ------------------------------------------------------------------ commits

    async def commit(self, vm_id: str, commit_id: str, *, keep_paused: bool = False) -> CommitInfo:
        _check_id(commit_id, "commit")
        async with self._lock(vm_id):
            record = self._load_vm(vm_id)
            final = self._layout.commit_dir(commit_id)
            partial = self._layout.partial_commit_dir(commit_id)
            if final.exists() or partial.exists():
                raise CommitAlreadyExists(commit_id)
            await self._require_alive(vm_id)
            partial.mkdir(parents=True)
            try:
                if record.ram_shared:
                    frozen, pause = await self._commit_shared_ram(record, partial, keep_paused)
                else:
                    frozen, pause = await self._commit_through_helper(record, partial, keep_paused)
                commit = CommitRecord(
                    commit_id=commit_id,
                    spec=record.spec,
                    disk_chain=frozen,
                    source_vm_id=vm_id,
                    parent_commit_id=record.parent_commit_id,
                    accelerator=record.accelerator,
                    qemu_version=await self._get_qemu_version(),
                    kernel=record.kernel,
                    initrd=record.initrd,
                    pause_seconds=pause,
                    created_at=time.time(),
                )
                key = self._layout.ssh_key(vm_id)
                if key.exists():
                    shutil.copy2(key, partial / "ssh_key")
                write_json(partial / "commit.json", commit.to_json())
                partial.rename(final)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, partial, True)
                raise
        log.info("committed VM %s as %s (paused %.3f s)", vm_id, commit_id, pause)
        return _commit_info(commit)

    async def restore(self, commit_id: str, new_vm_ids: Sequence[str]) -> tuple[VmInfo, ...]:
        commit = self._load_commit(commit_id)
        if commit.accelerator != self.accelerator.name:
            raise InvalidRequest(
                f"commit {commit_id} was made under {commit.accelerator}, "
                f"this host runs {self.accelerator.name}; snapshots do not move between them"
            )
        if not new_vm_ids:
            raise InvalidRequest("restore needs at least one new VM id")
        if len(set(new_vm_ids)) != len(new_vm_ids):
            raise InvalidRequest("new VM ids must be distinct")
        for vm_id in new_vm_ids:
            _check_id(vm_id, "VM")
            if self._layout.vm_dir(vm_id).exists():
                raise VmAlreadyExists(vm_id)
        outcomes = await asyncio.gather(
            *(self._restore_one(commit, vm_id) for vm_id in new_vm_ids), return_exceptions=True
        )
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            # All or nothing: the caller recorded all ids and retries all of them.
            for vm_id, outcome in zip(new_vm_ids, outcomes, strict=True):
                if not isinstance(outcome, BaseException):
                    await self.delete_vm(vm_id)
            raise failures[0]
        return tuple(outcome for outcome in outcomes if isinstance(outcome, VmInfo))

    async def branch(
        self,
        vm_id: str,
        commit_id: str,
        new_vm_ids: Sequence[str],
        *,
        keep_paused: bool = False,
    ) -> BranchResult:
        commit = await self.commit(vm_id, commit_id, keep_paused=keep_paused)
        vms = await self.restore(commit_id, new_vm_ids)
        return BranchResult(commit=commit, vms=vms)

    async def delete_commit(self, commit_id: str) -> None:
        directory = self._layout.commit_dir(commit_id)
        if not (directory / "commit.json").exists():
            raise CommitNotFound(commit_id)
        # Restored VMs keep the RAM file mapped, so they survive its removal.
        await asyncio.to_thread(shutil.rmtree, directory)
        await self._collect_layers()

    # ------------------------------------------------------------- guest access

    async def exec(self, vm_id: str, request: ExecRequest) -> ExecResult:
        agent = await self._running_agent(vm_id)
        return await _exec(agent, request)

    async def read_file(self, vm_id: str, path: str) -> bytes:
        agent = await self._running_agent(vm_id)
        handle = await _open_guest_file(agent, path, "r")
        chunks: list[bytes] = []
        try:
            while True:
                piece = await agent.execute(
                    "guest-file-read",
                    {"handle": handle, "count": FILE_READ_CHUNK},
                    timeout_seconds=FILE_CHUNK_TIMEOUT_SECONDS,
                )
                chunks.append(base64.b64decode(piece["buf-b64"]))
                if piece["eof"]:
                    return b"".join(chunks)
        finally:
            await _close_guest_file(agent, handle)

    async def write_file(
        self,
        vm_id: str,
        path: str,
        data: bytes,
        *,
        mode: int | None = None,
        create_dirs: bool = False,
    ) -> None:
        agent = await self._running_agent(vm_id)
        if create_dirs or mode is not None:
            steps = []
            if create_dirs:
                steps.append('mkdir -p -- "$(dirname -- "$1")"')
            if mode is not None:
                steps.append(f'touch -- "$1" && chmod {mode:o} -- "$1"')
            prepared = await _exec(
                agent, ExecRequest(argv=("sh", "-c", " && ".join(steps), "sh", path))
            )
            if prepared.exit_code != 0:
                raise GuestAgentError(
                    f"cannot prepare {path}: {prepared.stderr.decode(errors='replace').strip()}"
                )
        await _write_guest_file(agent, path, data)

    async def grow_disk(self, vm_id: str, disk_mib: int) -> VmInfo:
        async with self._lock(vm_id):
            record = self._load_vm(vm_id)
            if disk_mib <= record.spec.disk_mib:
                raise InvalidRequest(
                    f"disk_mib must be larger than the current {record.spec.disk_mib}"
                )
            # The file system is grown from inside, so the guest must be running.
            await self._require_running(vm_id)
            async with await self._qmp(vm_id) as qmp:
                await qmp.execute("block_resize", {"device": "root", "size": disk_mib * MIB})
            record = replace(record, spec=replace(record.spec, disk_mib=disk_mib))
            write_json(self._layout.vm_record(vm_id), record.to_json())
            agent = await self._agent(vm_id)
            resized = await _exec(agent, ExecRequest(argv=("resize2fs", "/dev/vda")))
            if resized.exit_code != 0:
                raise DriverError(f"resize2fs failed: {resized.stderr.decode(errors='replace')}")
            return self._info(record, VmState.RUNNING)

    async def ssh_endpoint(self, vm_id: str) -> SshEndpoint:
        async with self._lock(vm_id):
            record = self._load_vm(vm_id)
            key = self._layout.ssh_key(vm_id)
            if not key.exists():
                await self._require_running(vm_id)
                made = await _exec(
                    await self._agent(vm_id), ExecRequest(argv=("sh", "-c", SSH_KEY_SCRIPT))
                )
                if made.exit_code != 0 or not made.stdout.startswith(b"-----BEGIN"):
                    raise DriverError(
                        f"cannot make an SSH key: {made.stderr.decode(errors='replace')}"
                    )
                staged = key.with_name(".ssh_key.tmp")
                staged.write_bytes(made.stdout)
                staged.chmod(0o600)
                staged.replace(key)
            return SshEndpoint(
                host="127.0.0.1",
                port=record.ssh_port,
                user=SSH_USER,
                private_key=key.read_text(),
            )

    # ------------------------------------------------------------ commit paths

    async def _commit_shared_ram(
        self, record: VmRecord, partial: Path, keep_paused: bool
    ) -> tuple[tuple[str, ...], float]:
        async with await self._qmp(record.vm_id) as qmp:
            was_running = await _is_running(qmp)
            stopped_at = time.monotonic()
            await qmp.execute("stop")
            try:
                frozen = await self._freeze_disk(qmp, record)
                await _migrate(
                    qmp, f"exec:cat > {shlex.quote(str(partial / 'device.state'))}", True
                )
                await _run("cp", "--sparse=always", record.ram_path, str(partial / "ram"))
            finally:
                await _settle(qmp, run=was_running and not keep_paused)
            return frozen, time.monotonic() - stopped_at

    async def _commit_through_helper(
        self, record: VmRecord, partial: Path, keep_paused: bool
    ) -> tuple[tuple[str, ...], float]:
        helper = self._layout.runtime_dir / f".helper-{secrets.token_hex(4)}"
        helper.mkdir()
        stream = shlex.quote(str(helper / "stream"))
        try:
            # The VM waits only for its RAM to reach tmpfs; the conversion comes afterwards.
            async with await self._qmp(record.vm_id) as qmp:
                was_running = await _is_running(qmp)
                stopped_at = time.monotonic()
                await qmp.execute("stop")
                try:
                    frozen = await self._freeze_disk(qmp, record)
                    await _migrate(qmp, f"exec:cat > {stream}", False)
                finally:
                    await _settle(qmp, run=was_running and not keep_paused)
                pause = time.monotonic() - stopped_at
            # The helper has the same machine and devices with RAM in a shared tmpfs file,
            # and a blank disk of the same size: it loads the stream but never runs.
            await _run(
                "qemu-img", "create", "-q", "-f", "qcow2",
                str(helper / "disk.qcow2"), f"{record.spec.disk_mib}M",
            )  # fmt: skip
            stand_in = replace(
                record,
                disk_chain=(str(helper / "disk.qcow2"),),
                ram_path=str(helper / "ram"),
                ram_shared=True,
            )
            await self._launch(
                self._qemu_argv(stand_in, helper, pidfile=helper / "qemu.pid", incoming=True),
                record.vm_id,
            )
            async with await QmpClient.connect(qmp_socket(helper)) as helper_qmp:
                await _set_ignore_shared(helper_qmp, False)
                await helper_qmp.execute("migrate-incoming", {"uri": f"exec:cat {stream}"})
                await _wait_for_migration(helper_qmp)
                await _migrate(
                    helper_qmp, f"exec:cat > {shlex.quote(str(partial / 'device.state'))}", True
                )
            await _run("cp", "--sparse=always", str(helper / "ram"), str(partial / "ram"))
        finally:
            await _stop_process(_read_pid(helper / "qemu.pid", qmp_socket(helper)))
            await asyncio.to_thread(shutil.rmtree, helper, True)
        return frozen, pause

    async def _freeze_disk(self, qmp: QmpClient, record: VmRecord) -> tuple[str, ...]:
        """Put a new layer on top of the VM's disk; returns the chain that is now frozen."""
        layer = self._layout.new_layer()
        updated = replace(record, disk_chain=(*record.disk_chain, str(layer)))
        # Recorded before QEMU creates the file, so layer collection never sees it orphaned.
        write_json(self._layout.vm_record(record.vm_id), updated.to_json())
        try:
            await qmp.execute(
                "blockdev-snapshot-sync",
                {"device": "root", "snapshot-file": str(layer), "format": "qcow2"},
            )
        except BaseException:
            write_json(self._layout.vm_record(record.vm_id), record.to_json())
            raise
        return record.disk_chain

    async def _restore_one(self, commit: CommitRecord, vm_id: str) -> VmInfo:
        async with self._lock(vm_id):
            if self._layout.vm_dir(vm_id).exists():
                raise VmAlreadyExists(vm_id)
            commit_dir = self._layout.commit_dir(commit.commit_id)
            record = VmRecord(
                vm_id=vm_id,
                spec=commit.spec,
                disk_chain=(*commit.disk_chain, str(self._layout.new_layer())),
                ram_path=str(commit_dir / "ram"),
                ram_shared=False,
                ssh_port=_free_port(),
                parent_commit_id=commit.commit_id,
                accelerator=commit.accelerator,
                kernel=commit.kernel,
                initrd=commit.initrd,
                created_at=time.time(),
            )
            self._layout.vm_dir(vm_id).mkdir(parents=True)
            self._layout.runtime(vm_id).mkdir(parents=True, exist_ok=True)
            write_json(self._layout.vm_record(vm_id), record.to_json())
            try:
                if (commit_dir / "ssh_key").exists():
                    shutil.copy2(commit_dir / "ssh_key", self._layout.ssh_key(vm_id))
                await _run(
                    "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                    "-b", commit.disk_chain[-1], record.disk_chain[-1],
                )  # fmt: skip
                await self._launch(self._vm_argv(record, incoming=True), vm_id)
                async with await self._qmp(vm_id) as qmp:
                    await _set_ignore_shared(qmp, True)
                    state_file = shlex.quote(str(commit_dir / "device.state"))
                    await qmp.execute("migrate-incoming", {"uri": f"exec:cat {state_file}"})
                    await _wait_for_migration(qmp)
                    await qmp.execute("cont")
                agent = await self._connect_agent(vm_id, RESTORE_AGENT_TIMEOUT_SECONDS)
                await _refresh_identity(agent)
            except BaseException:
                await self._destroy(vm_id)
                raise
        return self._info(record, VmState.RUNNING)

    # -------------------------------------------------------------- processes

    def _new_root_record(self, vm_id: str, spec: VmSpec, image: ImagePaths) -> VmRecord:
        return VmRecord(
            vm_id=vm_id,
            spec=spec,
            disk_chain=(str(image.rootfs), str(self._layout.new_layer())),
            ram_path=str(self._layout.runtime(vm_id) / "ram"),
            ram_shared=True,
            ssh_port=_free_port(),
            parent_commit_id=None,
            accelerator=self.accelerator.name,
            kernel=str(image.kernel),
            initrd=str(image.initrd),
            created_at=time.time(),
        )

    def _vm_argv(self, record: VmRecord, *, incoming: bool) -> list[str]:
        vm_id = record.vm_id
        return self._qemu_argv(
            record,
            self._layout.runtime(vm_id),
            pidfile=self._layout.pidfile(vm_id),
            incoming=incoming,
            serial_log=self._layout.serial_log(vm_id),
            qemu_log=self._layout.qemu_log(vm_id),
            ssh_port=record.ssh_port,
        )

    def _qemu_argv(
        self,
        record: VmRecord,
        runtime: Path,
        *,
        pidfile: Path,
        incoming: bool,
        serial_log: Path | None = None,
        qemu_log: Path | None = None,
        ssh_port: int | None = None,
    ) -> list[str]:
        """The command line; a restore must use the same machine, devices and RAM size."""
        mem = f"{record.spec.mem_mib}M"
        share = "on" if record.ram_shared else "off"
        netdev = "user,id=net0,restrict=on"
        if ssh_port is not None:
            netdev += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
        serial = f"file,id=serial0,path={_opt(serial_log)}" if serial_log else "null,id=serial0"
        cmdline = " ".join(("console=ttyS0", "quiet", "panic=-1", *self.accelerator.kernel_args))
        argv = [
            self._config.qemu_binary,
            "-name", f"vers-orchestrator-{record.vm_id}",
            "-machine",
            "microvm,x-option-roms=off,rtc=on,pit=on,pic=on,isa-serial=on,"
            f"memory-backend={RAM_BLOCK_ID}",
            *self.accelerator.qemu_args,
            "-m", mem,
            "-smp", str(record.spec.vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-object",
            f"memory-backend-file,id={RAM_BLOCK_ID},size={mem},"
            f"mem-path={_opt(record.ram_path)},share={share}",
            "-kernel", record.kernel,
            "-initrd", record.initrd,
            "-append", cmdline,
            "-drive", f"id=root,file={_opt(record.disk_chain[-1])},format=qcow2,if=none",
            "-device", "virtio-blk-device,drive=root",
            "-device", "virtio-serial-device,id=vser0",
            "-chardev", f"socket,id=qga0,path={_opt(qga_socket(runtime))},server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            "-netdev", netdev,
            "-device", "virtio-net-device,netdev=net0",
            "-chardev", serial,
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{_opt(qmp_socket(runtime))},server=on,wait=off",
            "-pidfile", str(pidfile),
            "-daemonize",
        ]  # fmt: skip
        if qemu_log is not None:
            argv += ["-D", str(qemu_log)]
        if incoming:
            # -S: the restored guest must not run before its state is loaded and checked.
            argv += ["-incoming", "defer", "-S"]
        return argv

    async def _launch(self, argv: list[str], vm_id: str) -> None:
        # Errors go to a file, not a pipe: under uvloop the daemonized QEMU keeps a pipe's
        # write end open, so reading it to its end would wait for as long as the VM lives.
        errors_path = self._layout.vm_dir(vm_id) / "launch.err"
        with errors_path.open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=errors,
            )
        # With -daemonize the first process exits once the VM is set up; errors come before.
        returncode = await process.wait()
        if returncode != 0:
            stderr = errors_path.read_text(errors="replace").strip()
            raise DriverError(f"QEMU for {vm_id} failed to start: {stderr}")

    async def _destroy(self, vm_id: str) -> None:
        agent = self._agents.pop(vm_id, None)
        if agent is not None:
            await agent.close()
        runtime = self._layout.runtime(vm_id)
        await _stop_process(_read_pid(self._layout.pidfile(vm_id), qmp_socket(runtime)))
        await asyncio.to_thread(shutil.rmtree, runtime, True)
        await asyncio.to_thread(shutil.rmtree, self._layout.vm_dir(vm_id), True)

    async def _collect_layers(self) -> None:
        async with self._layers_lock:
            records = [
                *self._layout.vms.glob("*/vm.json"),
                *self._layout.commits.glob("*/commit.json"),
                *self._layout.commits.glob(".*.partial/commit.json"),
            ]
            referenced: set[str] = set()
            for path in records:
                with contextlib.suppress(FileNotFoundError):
                    referenced.update(read_json(path)["disk_chain"])
            for layer in self._layout.layers.glob("*.qcow2"):
                if str(layer) not in referenced:
                    layer.unlink(missing_ok=True)

    # ---------------------------------------------------------------- helpers

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _load_vm(self, vm_id: str) -> VmRecord:
        try:
            return VmRecord.from_json(read_json(self._layout.vm_record(vm_id)))
        except FileNotFoundError:
            raise VmNotFound(vm_id) from None

    def _load_commit(self, commit_id: str) -> CommitRecord:
        try:
            return CommitRecord.from_json(read_json(self._layout.commit_record(commit_id)))
        except FileNotFoundError:
            raise CommitNotFound(commit_id) from None

    def _info(self, record: VmRecord, state: VmState) -> VmInfo:
        return VmInfo(
            vm_id=record.vm_id,
            state=state,
            spec=record.spec,
            parent_commit_id=record.parent_commit_id,
        )

    def _pid(self, vm_id: str) -> int | None:
        return _read_pid(self._layout.pidfile(vm_id), qmp_socket(self._layout.runtime(vm_id)))

    async def _qmp(self, vm_id: str) -> QmpClient:
        return await QmpClient.connect(qmp_socket(self._layout.runtime(vm_id)))

    async def _state(self, vm_id: str) -> VmState:
        if self._pid(vm_id) is None:
            return VmState.DEAD
        try:
            async with await self._qmp(vm_id) as qmp:
                running = await _is_running(qmp)
        except QmpError:
            if self._pid(vm_id) is None:
                return VmState.DEAD
            raise
        return VmState.RUNNING if running else VmState.PAUSED

    async def _status_if_exists(self, vm_id: str) -> VmInfo | None:
        try:
            return await self.status(vm_id)
        except VmNotFound:
            return None

    async def _require_alive(self, vm_id: str) -> None:
        if self._pid(vm_id) is None:
            raise VmNotRunning(vm_id, VmState.DEAD)

    async def _require_running(self, vm_id: str) -> None:
        state = await self._state(vm_id)
        if state is not VmState.RUNNING:
            raise VmNotRunning(vm_id, state)

    async def _running_agent(self, vm_id: str) -> GuestAgent:
        # The lock covers only the check: a long command must not block pause or commit.
        async with self._lock(vm_id):
            self._load_vm(vm_id)
            await self._require_running(vm_id)
            return await self._agent(vm_id)

    async def _agent(self, vm_id: str) -> GuestAgent:
        agent = self._agents.get(vm_id)
        if agent is not None and not agent.broken:
            return agent
        return await self._connect_agent(vm_id, RESTORE_AGENT_TIMEOUT_SECONDS)

    async def _connect_agent(self, vm_id: str, timeout_seconds: float) -> GuestAgent:
        stale = self._agents.pop(vm_id, None)
        if stale is not None:
            await stale.close()
        socket_path = qga_socket(self._layout.runtime(vm_id))
        try:
            agent = await GuestAgent.connect(socket_path, timeout_seconds)
        except GuestAgentError as exc:
            if self._pid(vm_id) is None:
                raise DriverError(
                    f"VM {vm_id} died while starting; console:\n{self._console_tail(vm_id)}"
                ) from exc
            raise
        self._agents[vm_id] = agent
        return agent

    def _console_tail(self, vm_id: str) -> str:
        try:
            return self._layout.serial_log(vm_id).read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return "(no console output)"

    async def _get_qemu_version(self) -> str:
        if self._qemu_version is None:
            output = await _run(self._config.qemu_binary, "--version")
            self._qemu_version = output.splitlines()[0].strip()
        return self._qemu_version


# --------------------------------------------------------------------- module helpers


def _check_id(value: str, kind: str) -> None:
    if not ID_PATTERN.match(value):
        raise InvalidRequest(
            f"{kind} id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit: {value!r}"
        )


def _check_spec(spec: VmSpec) -> None:
    if spec.mem_mib < MIN_MEM_MIB:
        raise InvalidRequest(f"mem_mib must be at least {MIN_MEM_MIB}")
    if not 1 <= spec.vcpus <= MAX_VCPUS:
        raise InvalidRequest(f"vcpus must be between 1 and {MAX_VCPUS}")


def _commit_info(record: CommitRecord) -> CommitInfo:
    return CommitInfo(
        commit_id=record.commit_id,
        spec=record.spec,
        source_vm_id=record.source_vm_id,
        parent_commit_id=record.parent_commit_id,
    )


def _opt(value: str | Path) -> str:
    """A value inside a QEMU key=value option, where a comma must be doubled."""
    return str(value).replace(",", ",,")


def _log_progress(message: str) -> None:
    log.info("image: %s", message)


def _free_port() -> int:
    # QEMU binds the port itself; the short race with another process is accepted.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _read_pid(pidfile: Path, qmp_path: Path) -> int | None:
    """The pid of the live QEMU behind this pidfile, or None when it is gone."""
    try:
        pid = int(pidfile.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    # A zombie has exited; a pid reused by another process does not name our socket.
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        return None
    if str(qmp_path).encode() not in cmdline:
        return None
    return pid


async def _stop_process(pid: int | None) -> None:
    if pid is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + PROCESS_EXIT_TIMEOUT_SECONDS / 2
        while time.monotonic() < deadline:
            if not _process_alive(pid):
                return
            await asyncio.sleep(0.02)
    raise DriverError(f"QEMU process {pid} did not exit")


def _process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def _run(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise DriverError(
            f"{command[0]} failed ({process.returncode}): "
            f"{stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return stdout.decode(errors="replace")


async def _is_running(qmp: QmpClient) -> bool:
    status = await qmp.execute("query-status")
    return bool(status["running"])


async def _set_ignore_shared(qmp: QmpClient, enabled: bool) -> None:
    # Both ends must agree: with it on, the stream also carries each RAM block's address.
    await qmp.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "x-ignore-shared", "state": enabled}]},
    )


async def _migrate(qmp: QmpClient, uri: str, ignore_shared: bool) -> None:
    await _set_ignore_shared(qmp, ignore_shared)
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": MIGRATION_BANDWIDTH})
    await qmp.execute("migrate", {"uri": uri})
    await _wait_for_migration(qmp)


async def _wait_for_migration(qmp: QmpClient) -> None:
    deadline = time.monotonic() + MIGRATION_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        info = await qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise DriverError(f"migration {status}: {info.get('error-desc', 'no details')}")
        await asyncio.sleep(0.005)
    raise DriverError(f"migration did not finish within {MIGRATION_TIMEOUT_SECONDS:g} s")


async def _settle(qmp: QmpClient, *, run: bool) -> None:
    """Leave a just-migrated VM running or paused.

    A completed migration hands the disks over to the destination; only `cont` takes them
    back, so a VM that should stay paused is continued and stopped again at once (it runs
    for about a millisecond).
    """
    await qmp.execute("cont")
    if not run:
        await qmp.execute("stop")


async def _refresh_identity(agent: GuestAgent) -> None:
    """What must differ between branches of one commit: wall clock and RNG state."""
    now = time.time_ns()
    refreshed = await _exec(
        agent,
        ExecRequest(
            argv=(
                "perl", "-e", REFRESH_IDENTITY_SCRIPT,
                str(now // 10**9), str(now % 10**9), secrets.token_hex(64),
            )
        ),
    )  # fmt: skip
    if refreshed.exit_code != 0:
        raise DriverError(
            f"cannot refresh the restored guest: {refreshed.stderr.decode(errors='replace')}"
        )


async def _exec(agent: GuestAgent, request: ExecRequest) -> ExecResult:
    if not request.argv:
        raise InvalidRequest("argv must not be empty")
    env = {**GUEST_ENV, **request.env}
    argv = list(request.argv)
    if request.working_dir is not None:
        argv = [*CHDIR_WRAPPER, request.working_dir, *argv]
    try:
        started = await agent.execute(
            "guest-exec",
            {
                "path": argv[0],
                "arg": argv[1:],
                "env": [f"{key}={value}" for key, value in env.items()],
                # Always a pipe: without input-data the command would read the agent's stdin.
                "input-data": base64.b64encode(request.stdin).decode(),
                "capture-output": True,
            },
        )
    except GuestAgentError as exc:
        if SPAWN_FAILURE not in str(exc):
            raise
        return ExecResult(
            exit_code=COMMAND_NOT_FOUND_EXIT_CODE, stdout=b"", stderr=f"{exc}\n".encode()
        )
    pid = int(started["pid"])
    timeout = request.timeout_seconds
    deadline = None if timeout is None else time.monotonic() + timeout
    status = await _wait_exec(agent, pid, deadline)
    if status is None:
        assert timeout is not None
        await _kill_process_tree(agent, pid)
        status = await _wait_exec(agent, pid, time.monotonic() + 10.0) or {}
        raise ExecTimeout(
            timeout,
            base64.b64decode(status.get("out-data", "")),
            base64.b64decode(status.get("err-data", "")),
        )
    return _exec_result(status)


async def _wait_exec(agent: GuestAgent, pid: int, deadline: float | None) -> dict[str, Any] | None:
    """The final guest-exec-status of `pid`, or None if the deadline came first."""
    # Polling is the only way to learn about an exit. Most commands end within a few
    # hundred milliseconds, so poll finely at first and back off for long ones.
    fine_until = time.monotonic() + EXEC_FINE_POLL_SECONDS
    interval = EXEC_FINE_POLL_INTERVAL
    while True:
        status: dict[str, Any] = await agent.execute("guest-exec-status", {"pid": pid})
        if status.get("exited"):
            return status
        if deadline is not None and time.monotonic() >= deadline:
            return None
        await asyncio.sleep(interval)
        if time.monotonic() > fine_until:
            interval = min(interval * 1.5, EXEC_MAX_POLL_INTERVAL)


async def _kill_process_tree(agent: GuestAgent, pid: int) -> None:
    killer = await agent.execute(
        "guest-exec", {"path": "/bin/sh", "arg": ["-c", KILL_TREE_SCRIPT, str(pid)]}
    )
    # Reaping the killer's status too, so qemu-ga forgets it.
    await _wait_exec(agent, int(killer["pid"]), time.monotonic() + 10.0)


def _exec_result(status: dict[str, Any]) -> ExecResult:
    if "signal" in status:
        exit_code = 128 + int(status["signal"])
    else:
        exit_code = int(status.get("exitcode", -1))
    return ExecResult(
        exit_code=exit_code,
        stdout=base64.b64decode(status.get("out-data", "")),
        stderr=base64.b64decode(status.get("err-data", "")),
        stdout_truncated=bool(status.get("out-truncated", False)),
        stderr_truncated=bool(status.get("err-truncated", False)),
    )


async def _open_guest_file(agent: GuestAgent, path: str, mode: str) -> int:
    try:
        handle = await agent.execute("guest-file-open", {"path": path, "mode": mode})
    except GuestAgentError as exc:
        if "No such file or directory" in str(exc):
            raise GuestFileNotFound(path) from exc
        raise
    return int(handle)


async def _close_guest_file(agent: GuestAgent, handle: int) -> None:
    await agent.execute("guest-file-close", {"handle": handle})


async def _write_guest_file(agent: GuestAgent, path: str, data: bytes) -> None:
    handle = await _open_guest_file(agent, path, "w")
    try:
        for chunk in _chunks(data, FILE_WRITE_CHUNK):
            await agent.execute(
                "guest-file-write",
                {"handle": handle, "buf-b64": base64.b64encode(chunk).decode()},
                timeout_seconds=FILE_CHUNK_TIMEOUT_SECONDS,
            )
    finally:
        await _close_guest_file(agent, handle)


def _chunks(data: bytes, size: int) -> Iterable[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
