"""QEMU processes: their command line, starting them, finding them, stopping them.

Every QEMU runs daemonized with a pidfile, so it outlives the driver object and the server.
A VM is alive when its pidfile names a process that is not a zombie and whose command line
contains the VM's socket path (a reused pid does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from vers_orchestrator.agent.protocol import PORT_NAME
from vers_orchestrator.drivers.base import DriverError
from vers_orchestrator.drivers.qemu.accelerator import Accelerator
from vers_orchestrator.drivers.qemu.layout import VmRecord, agent_socket, qmp_socket
from vers_orchestrator.drivers.tools import child_environment

RAM_BLOCK_ID = "ram0"
# Measured under TCG on one vCPU: every command vers-agent starts is put in a cgroup of its
# own, which costs a synchronize_rcu (a scheduler tick, ~4 ms) per move unless grace periods
# are expedited, and pressure-stall accounting slows each process down. Together they took
# exec of `true` from 32 to 20 ms. Nothing in our guests reads PSI.
KERNEL_ARGS = ("console=ttyS0", "quiet", "panic=-1", "rcupdate.rcu_expedited=1", "psi=0")
# The second network card, through which a guest reaches the outside (`network.py`); the
# guest's init tells it from the first (QEMU user networking, inbound forwards only) by
# this address.
OUTBOUND_MAC = "52:54:00:76:65:01"
PROCESS_EXIT_TIMEOUT_SECONDS = 10.0


def qemu_argv(
    record: VmRecord,
    runtime: Path,
    *,
    qemu_binary: str,
    accelerator: Accelerator,
    kernel_args: tuple[str, ...],
    pidfile: Path,
    incoming: bool,
    serial_log: Path | None = None,
    qemu_log: Path | None = None,
    ssh_port: int | None = None,
    outbound_fd: int | None = None,
) -> list[str]:
    """The command line; a restore must use the same machine, devices and RAM size.
    `kernel_args` come after KERNEL_ARGS (a restored guest ignores them: it booted long ago).

    Network cards: `net0` is QEMU's user networking with `restrict=on`, which lets nothing
    out and carries only forwards from the host (SSH, the edge's guest ports). A record
    with `outbound_nic` has a second card, `net1`, connected to passt through the inherited
    socket `outbound_fd` (outbound NAT), or, without one, to a restricted user network that
    goes nowhere, so that the device set a commit recorded is the same either way.
    """
    mem = f"{record.spec.mem_mib}M"
    share = "on" if record.ram_shared else "off"
    netdev = "user,id=net0,restrict=on"
    if ssh_port is not None:
        netdev += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    serial = f"file,id=serial0,path={_opt(serial_log)}" if serial_log else "null,id=serial0"
    cmdline = " ".join((*KERNEL_ARGS, *kernel_args))
    argv = [
        qemu_binary,
        "-name", f"vers-orchestrator-{record.vm_id}",
        "-machine",
        "microvm,x-option-roms=off,rtc=on,pit=on,pic=on,isa-serial=on,"
        f"memory-backend={RAM_BLOCK_ID}",
        # qboot, microvm's minimal firmware, ships with QEMU 7.2 and 10 alike; with QEMU 10
        # the default (SeaBIOS's microvm build) never reached the kernel here.
        "-bios", "qboot.rom",
        *accelerator.qemu_args,
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
        "-chardev",
        f"socket,id=agent0,path={_opt(agent_socket(runtime))},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={PORT_NAME}",
        "-netdev", netdev,
        "-device", "virtio-net-device,netdev=net0",
        *_outbound_nic(record.outbound_nic, outbound_fd),
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


async def launch(
    argv: list[str], errors_path: Path, what: str, pass_fds: tuple[int, ...] = ()
) -> None:
    """Start a daemonizing QEMU, which inherits `pass_fds`; returns once it is set up (or
    raises with its stderr)."""
    # Errors go to a file, not a pipe: under uvloop the daemonized QEMU keeps a pipe's
    # write end open, so reading it to its end would wait for as long as the VM lives.
    with errors_path.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=errors,
            pass_fds=pass_fds,
            env=child_environment(),
        )
    # With -daemonize the first process exits once the VM is set up; errors come before.
    if await process.wait() != 0:
        stderr = (await asyncio.to_thread(errors_path.read_text, errors="replace")).strip()
        raise DriverError(f"QEMU for {what} failed to start: {stderr}")


def read_pid(pidfile: Path, qmp_path: Path) -> int | None:
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


async def stop_process(pid: int | None) -> None:
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


async def run(*command: str) -> str:
    """Run a host tool; its stdout, or DriverError with the end of its stderr."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_environment(),
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise DriverError(
            f"{command[0]} failed ({process.returncode}): "
            f"{stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return stdout.decode(errors="replace")


def free_port() -> int:
    # QEMU binds the port itself; the short race with another process is accepted.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _outbound_nic(present: bool, fd: int | None) -> list[str]:
    if not present:
        return []
    if fd is None:
        netdev = "user,id=net1,restrict=on"
    else:
        netdev = f"stream,id=net1,server=off,addr.type=fd,addr.str={fd}"
    return ["-netdev", netdev, "-device", f"virtio-net-device,netdev=net1,mac={OUTBOUND_MAC}"]


def _opt(value: str | Path) -> str:
    """A value inside a QEMU key=value option, where a comma must be doubled."""
    return str(value).replace(",", ",,")
