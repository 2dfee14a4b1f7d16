"""VMs as QEMU microvm processes: the `VmDriver` the services use.

The driver is three rooms around one state object (`host.VmHost`): this module has the
VM lifecycle (boot, pause, continue, grow, delete, find again); `snapshots.Snapshots`
commits and restores; `guest.Guests` talks to vers-agent in each guest (exec, files,
clock). QEMU processes and their command line are in `machine`, the on-disk layout in
`layout`, the default image in `images`, what a VM boots with in `boot`.

One driver object per state directory at a time: QEMU's sockets take one client each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar, cast

from vers_orchestrator.drivers.base import (
    BranchResult,
    CommitInfo,
    DriverError,
    ExecRequest,
    ExecResult,
    FileReader,
    GuestAgentError,
    ImageInUse,
    ImageMissing,
    InvalidRequest,
    Inventory,
    OutputSink,
    SshEndpoint,
    StoredImage,
    VmAlreadyExists,
    VmInfo,
    VmNotFound,
    VmSpec,
    VmState,
)
from vers_orchestrator.drivers.qemu import built_images, network
from vers_orchestrator.drivers.qemu.boot import boot_initrd
from vers_orchestrator.drivers.qemu.guest import Guests
from vers_orchestrator.drivers.qemu.host import QemuDriverConfig, VmHost, check_id, check_spec
from vers_orchestrator.drivers.qemu.images import (
    ImagePaths,
    ensure_default_image,
    load_default_image,
)
from vers_orchestrator.drivers.qemu.layout import VmRecord, read_json
from vers_orchestrator.drivers.qemu.machine import free_port, run
from vers_orchestrator.drivers.qemu.snapshots import Snapshots

__all__ = ["QemuDriver", "QemuDriverConfig"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
SSH_USER = "root"
# Also waits (up to 10 s) for sshd, which a just-booted guest starts after its agent.
SSH_KEY_SCRIPT = """set -e
for attempt in $(seq 100); do [ -s /run/sshd.pid ] && break; sleep 0.1; done
umask 077
mkdir -p /root/.ssh
rm -f /run/vers-orchestrator-key /run/vers-orchestrator-key.pub
ssh-keygen -q -t ed25519 -N '' -C vers-orchestrator -f /run/vers-orchestrator-key
cat /run/vers-orchestrator-key.pub >> /root/.ssh/authorized_keys
cat /run/vers-orchestrator-key
rm -f /run/vers-orchestrator-key /run/vers-orchestrator-key.pub
"""


T = TypeVar("T")


class QemuDriver:
    def __init__(self, config: QemuDriverConfig) -> None:
        self._host = VmHost(config)
        self._guests = Guests(self._host)
        self._snapshots = Snapshots(self._host, self._guests)
        self.accelerator = self._host.accelerator
        log.info("accelerator: %s (%s)", self.accelerator.name, self.accelerator.reason)
        log.info("image: %s", _describe_image(config.images_dir))
        # The default image's build in progress, shared by every VM that waits for it.
        self._image_build: asyncio.Future[ImagePaths] | None = None
        # Held while a VM is made from a user's image and while one is deleted: a delete
        # sees every VM record that lists the image, a new VM never an image half removed.
        self._user_images = asyncio.Lock()

    def warm_up(self) -> None:
        if load_default_image(self._host.config.images_dir) is not None:
            return
        log.info("image: building the default guest image in the background; new VMs wait for it")
        self._default_image().add_done_callback(_log_build_failure)

    def _default_image(self) -> asyncio.Future[ImagePaths]:
        """The default image, built once if missing: callers that come during a build
        share it; a later call looks again (`images build-default` may have made a newer
        one), and a failed build is tried again by the next VM."""
        build = self._image_build
        if build is None or build.done():
            images_dir = self._host.config.images_dir
            build = _in_daemon_thread(lambda: ensure_default_image(images_dir, _log_progress))
            self._image_build = build
        return build

    # ----------------------------------------------------------------- lifecycle

    async def create_vm(self, vm_id: str, spec: VmSpec, *, image: str | None = None) -> VmInfo:
        host = self._host
        check_id(vm_id, "VM")
        check_spec(spec)
        async with host.lock(vm_id):
            if host.layout.vm_dir(vm_id).exists():
                raise VmAlreadyExists(vm_id)
            # Shielded: a VM request that is given up on does not stop the build for others.
            base = await asyncio.shield(self._default_image())
            rootfs, rootfs_mib = base.rootfs, base.rootfs_mib
            async with self._user_images:
                if image is not None:
                    stored = await asyncio.to_thread(built_images.find, self._images_dir, image)
                    if stored is None:
                        raise ImageMissing(image)
                    base, rootfs, rootfs_mib = stored.base, stored.rootfs, stored.rootfs_mib
                if spec.disk_mib < rootfs_mib:
                    raise InvalidRequest(
                        f"the disk must be at least {rootfs_mib} MiB (the image's file system)"
                    )
                initrd = await asyncio.to_thread(boot_initrd, base, host.layout.boot)
                record = self._new_root_record(vm_id, spec, base, rootfs, initrd)
                host.layout.vm_dir(vm_id).mkdir(parents=True)
                host.layout.make_runtime(host.layout.runtime(vm_id))
                host.save_vm(record)
            try:
                await run(
                    "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                    "-b", record.disk_chain[0], record.disk_chain[-1], f"{spec.disk_mib}M",
                )  # fmt: skip
                await host.launch_vm(record, incoming=False)
                host.remember(vm_id, VmState.RUNNING)
                connection = await self._guests.connect(vm_id, host.config.boot_timeout_seconds)
                await self._guests.became(vm_id, connection, restored=False)
            except BaseException:
                await self._guests.disconnect(vm_id)
                await host.destroy(vm_id)
                raise
        return host.info(record, VmState.RUNNING)

    # ----------------------------------------------------------------- users' images

    @property
    def _images_dir(self) -> Path:
        # Absolute: a VM's disk layer names its image's file, and qemu-img reads a relative
        # backing file from the layer's own folder (a relative data dir broke every boot).
        return self._host.config.images_dir.resolve()

    async def image_key(self, source_digest: str, size_mib: int) -> str:
        base = await asyncio.shield(self._default_image())
        return built_images.image_key(source_digest, size_mib, base)

    async def find_image(self, key: str) -> StoredImage | None:
        stored = await asyncio.to_thread(built_images.find, self._images_dir, key)
        return None if stored is None else StoredImage(key, stored.rootfs_mib)

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
        base = await asyncio.shield(self._default_image())
        stored = await asyncio.to_thread(
            lambda: built_images.install(
                self._images_dir, key, tree,
                env=env, workdir=workdir, size_mib=size_mib, base=base, progress=progress,
            )
        )  # fmt: skip
        return StoredImage(key, stored.rootfs_mib)

    async def delete_image(self, key: str) -> None:
        async with self._user_images:
            stored = await asyncio.to_thread(built_images.find, self._images_dir, key)
            if stored is None:
                return
            # Thousands of records: read in a thread, not on the loop.
            if await asyncio.to_thread(self._lists_image, str(stored.rootfs)):
                raise ImageInUse()
            await asyncio.to_thread(built_images.remove, self._images_dir, key)

    def _lists_image(self, rootfs: str) -> bool:
        """Whether a VM's or commit's disk chain (one being written too) starts at `rootfs`."""
        for path in self._host.layout.records():
            with contextlib.suppress(FileNotFoundError):
                if read_json(path)["disk_chain"][0] == rootfs:
                    return True
        return False

    def _new_root_record(
        self, vm_id: str, spec: VmSpec, image: ImagePaths, rootfs: Path, initrd: Path
    ) -> VmRecord:
        layout = self._host.layout
        return VmRecord(
            vm_id=vm_id,
            spec=spec,
            disk_chain=(str(rootfs), str(layout.new_layer())),
            ram_path=str(layout.runtime(vm_id) / "ram"),
            ram_shared=True,
            ssh_port=free_port(),
            parent_commit_id=None,
            accelerator=self.accelerator.name,
            kernel=str(image.kernel),
            initrd=str(initrd),
            created_at=time.time(),
            outbound_nic=True,
        )

    async def pause(self, vm_id: str) -> None:
        host = self._host
        async with host.lock(vm_id):
            host.load_vm(vm_id)
            await host.require_alive(vm_id)
            async with await host.qmp(vm_id) as qmp:
                await qmp.execute("stop")
            host.remember(vm_id, VmState.PAUSED)

    async def resume(self, vm_id: str) -> None:
        host = self._host
        async with host.lock(vm_id):
            host.load_vm(vm_id)
            await host.require_alive(vm_id)
            async with await host.qmp(vm_id) as qmp:
                await qmp.execute("cont")
            host.remember(vm_id, VmState.RUNNING)
        await self._guests.set_clock(vm_id)

    async def status(self, vm_id: str) -> VmInfo:
        host = self._host
        async with host.lock(vm_id):
            record = host.load_vm(vm_id)
            return host.info(record, await host.state(vm_id))

    async def delete_vm(self, vm_id: str) -> None:
        host = self._host
        async with host.lock(vm_id):
            host.load_vm(vm_id)
            await self._guests.forget(vm_id)
            await host.destroy(vm_id)
        host.forget(vm_id)
        await host.collect_files()

    async def inventory(self) -> Inventory:
        vm_ids = sorted(path.parent.name for path in self._host.layout.vms.glob("*/vm.json"))
        vms = await asyncio.gather(*(self._status_if_exists(vm_id) for vm_id in vm_ids))
        return Inventory(
            vms=tuple(vm for vm in vms if vm is not None),
            commits=tuple(self._snapshots.commits()),
        )

    async def remove_leftovers(self) -> list[str]:
        removed = await asyncio.to_thread(built_images.remove_partial_builds, self._images_dir)
        return removed + await self._host.remove_leftovers()

    async def _status_if_exists(self, vm_id: str) -> VmInfo | None:
        try:
            return await self.status(vm_id)
        except VmNotFound:
            return None
        except DriverError as exc:
            # A QEMU we cannot reach (its monitor socket gone) cannot be run or paused: it
            # counts as dead, so that start-up goes on and a delete still stops it by pid.
            log.warning("VM %s does not answer its monitor, counted as dead: %s", vm_id, exc)
            return self._host.info(self._host.load_vm(vm_id), VmState.DEAD)

    async def grow_disk(self, vm_id: str, disk_mib: int) -> VmInfo:
        host = self._host
        async with host.lock(vm_id):
            record = host.load_vm(vm_id)
            if disk_mib <= record.spec.disk_mib:
                raise InvalidRequest(
                    f"the disk must grow past its current {record.spec.disk_mib} MiB"
                )
            # The file system is grown from inside, so the guest must be running.
            await host.require_running(vm_id)
            async with await host.qmp(vm_id) as qmp:
                await qmp.execute("block_resize", {"device": "root", "size": disk_mib * MIB})
            record = replace(record, spec=replace(record.spec, disk_mib=disk_mib))
            host.save_vm(record)
            resized = await self._guests.exec(vm_id, ExecRequest(argv=("resize2fs", "/dev/vda")))
            if resized.exit_code != 0:
                raise GuestAgentError(
                    f"the disk is now {disk_mib} MiB, but growing its file system failed"
                    f" (resize2fs exited {resized.exit_code}):"
                    f" {resized.stderr.decode(errors='replace').strip()}"
                )
            return host.info(record, VmState.RUNNING)

    async def ssh_endpoint(self, vm_id: str) -> SshEndpoint:
        host = self._host
        async with host.lock(vm_id):
            record = host.load_vm(vm_id)
            key = host.layout.ssh_key(vm_id)
            if not key.exists():
                made = await self._guests.exec(
                    vm_id, ExecRequest(argv=("sh", "-c", SSH_KEY_SCRIPT))
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
                host="127.0.0.1", port=record.ssh_port, user=SSH_USER, private_key=key.read_text()
            )

    async def guest_port(self, vm_id: str, port: int) -> tuple[str, int]:
        host = self._host
        # Known forwards are answered from memory: the edge asks for every request.
        known = host.forwards.get(vm_id, {}).get(port)
        if known is not None:
            return "127.0.0.1", known
        async with host.network_lock(vm_id):
            host.load_vm(vm_id)
            await host.require_alive(vm_id)
            runtime = host.layout.runtime(vm_id)
            forwards = network.read_forwards(runtime)
            if port not in forwards:
                async with await host.qmp(vm_id) as qmp:
                    await network.add_forward(qmp, runtime, forwards, port, free_port)
            host.forwards[vm_id] = forwards
        return "127.0.0.1", forwards[port]

    async def close(self) -> None:
        await self._snapshots.chains.close()
        await self._guests.close()

    # ------------------------------------------------------------------ snapshots

    async def commit(self, vm_id: str, commit_id: str, *, keep_paused: bool = False) -> CommitInfo:
        return await self._snapshots.commit(vm_id, commit_id, keep_paused=keep_paused)

    async def restore(self, commit_id: str, new_vm_ids: Sequence[str]) -> tuple[VmInfo, ...]:
        return await self._snapshots.restore(commit_id, new_vm_ids)

    async def branch(
        self,
        vm_id: str,
        commit_id: str,
        new_vm_ids: Sequence[str],
        *,
        keep_paused: bool = False,
    ) -> BranchResult:
        return await self._snapshots.branch(vm_id, commit_id, new_vm_ids, keep_paused=keep_paused)

    async def delete_commit(self, commit_id: str) -> None:
        await self._snapshots.delete_commit(commit_id)

    # -------------------------------------------------------------- in the guest

    async def exec(
        self,
        vm_id: str,
        request: ExecRequest,
        sink: OutputSink | None = None,
        started: Callable[[], None] | None = None,
    ) -> ExecResult:
        return await self._guests.exec(vm_id, request, sink, started)

    async def read_file(self, vm_id: str, path: str, *, max_bytes: int | None = None) -> bytes:
        return await self._guests.read_file(vm_id, path, max_bytes)

    def open_file(self, vm_id: str, path: str) -> AbstractAsyncContextManager[FileReader]:
        return self._guests.open_file(vm_id, path)

    async def write_file(
        self,
        vm_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int | None = None,
        create_dirs: bool = False,
    ) -> int:
        return await self._guests.write_file(vm_id, path, data, mode, create_dirs)


def _describe_image(images_dir: Path) -> str:
    try:
        image = load_default_image(images_dir)
    except (OSError, ValueError, KeyError) as exc:
        return f"cannot read the default image in {images_dir}: {exc}"
    if image is None:
        return f"the default image is not built yet in {images_dir}"
    return f"{image.directory} (kernel {image.kernel_version})"


def _in_daemon_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """`work()` in a thread of its own whose result lands in the returned future.

    Not `asyncio.to_thread`: the event loop's executor is joined when the server stops,
    and a server stopped during a minute-long image build would wait for it, silent. A
    daemon thread ends with the process; the build's file lock goes with it, and the next
    build removes what this one left (`images._build`).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, failure: BaseException | None) -> None:
        if future.done():
            return
        if failure is not None:
            future.set_exception(failure)
        else:
            future.set_result(cast(T, result))

    def run() -> None:
        outcome: tuple[T | None, BaseException | None]
        try:
            outcome = (work(), None)
        except BaseException as exc:  # handed to the waiting coroutines, not lost here
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=run, name="default-image-build", daemon=True).start()
    return future


def _log_build_failure(build: asyncio.Future[ImagePaths]) -> None:
    if not build.cancelled() and build.exception() is not None:
        log.error("image: the default guest image could not be built: %s", build.exception())


def _log_progress(message: str) -> None:
    log.info("image: %s", message)
