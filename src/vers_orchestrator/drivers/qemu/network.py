"""A guest's network: outbound NAT through passt, inbound forwards to guest ports.

Two network cards (`machine.qemu_argv`):
- `net0`, QEMU's user networking with `restrict=on`: the guest can send nothing out
  through it, and the host reaches guest ports through forwards on 127.0.0.1 that QEMU adds
  at run time (`hostfwd_add`), which is how SSH and the edge proxy reach a guest.
- `net1`, outbound: a socket to passt (Debian's `passt`), which turns the guest's packets
  into ordinary sockets of the host. passt runs with `--no-map-gw`, so the gateway address
  is not the host's loopback (QEMU's user networking maps 10.0.2.2 to it, and the guest
  would reach the API and PostgreSQL there); the guest reaches what any other machine on
  the host's network reaches, nothing on 127.0.0.1.

The guest's addresses are fixed (`GUEST_OUTBOUND_ADDRESS` …) and set by its init, so a
restored guest finds the same network with a new passt behind it. passt runs in a session
of its own, so that it outlives a server restart as the VM does, drops to `nobody` itself,
and exits when its QEMU does.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from vers_orchestrator.drivers.base import DriverError
from vers_orchestrator.drivers.qemu.layout import read_json, write_json
from vers_orchestrator.drivers.qemu.machine import read_pid, stop_process
from vers_orchestrator.drivers.qemu.qmp import QmpClient, QmpError
from vers_orchestrator.drivers.tools import child_environment

NETWORK_MODES = ("nat", "none")
PASST = "passt"
GUEST_OUTBOUND_ADDRESS = "10.0.3.15"
GUEST_OUTBOUND_PREFIX = 24
# The guest's gateway and name server: passt answers ARP for it and forwards DNS queries
# sent to it to the host's resolver; nothing else reaches the host through it.
GUEST_OUTBOUND_GATEWAY = "10.0.3.2"
# Where QEMU's user networking puts the guest on net0 (its default), the target of forwards.
GUEST_INBOUND_ADDRESS = "10.0.2.15"
MAX_GUEST_PORT = 65535
# Forwards a VM keeps at once (ports reached through the edge); the oldest goes first.
MAX_FORWARDS = 32
_FORWARD_FAILED = re.compile(r"could not set up host forwarding rule", re.IGNORECASE)


class NetworkError(DriverError):
    """passt or a forward could not be set up; the message says which and why."""


def passt_pidfile(runtime: Path) -> Path:
    return runtime / "passt.pid"


def forwards_file(runtime: Path) -> Path:
    return runtime / "forwards.json"


def check_passt_installed() -> None:
    """Raises DriverError when the `nat` network mode cannot work on this machine."""
    if shutil.which(PASST) is None:
        raise DriverError(
            "passt is not installed (Debian package passt; run "
            "scripts/install-system-packages.sh), or set VERS_ORCHESTRATOR_VM_NETWORK=none"
        )


async def start_passt(runtime: Path, log_file: Path) -> socket.socket:
    """Start the VM's passt on one end of a socket pair and return the other end, for QEMU
    to inherit (`-netdev stream` on a file descriptor) and the caller to close once QEMU
    has it. passt exits when QEMU's end closes. Raises NetworkError.

    A socket pair rather than passt's listening socket: passt binds its socket after it
    has become `nobody`, which cannot enter the runtime directory (closed to all others).
    """
    qemu_end, passt_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = [
        PASST, "--foreground", "--quiet", "--no-map-gw", "--ipv4-only",
        "--address", GUEST_OUTBOUND_ADDRESS, "--netmask", str(GUEST_OUTBOUND_PREFIX),
        "--gateway", GUEST_OUTBOUND_GATEWAY, "--dns-forward", GUEST_OUTBOUND_GATEWAY,
        "--fd", str(passt_end.fileno()), "--log-file", str(log_file),
    ]  # fmt: skip
    pidfile = passt_pidfile(runtime)
    pidfile.unlink(missing_ok=True)
    try:
        # Started by a shell that exits at once, having written passt's pid: passt is
        # nobody's child but init's, as a daemonized QEMU is, so no event loop or server
        # process waits for it. (No pipe from it: under uvloop a child's pipe stays open
        # in what it starts, and reading it to its end would wait for passt to exit.)
        launcher = await asyncio.create_subprocess_exec(
            "sh", "-c", '"$@" </dev/null >/dev/null 2>&1 & echo $! >"$0"', str(pidfile), *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            pass_fds=(passt_end.fileno(),),
            env=child_environment(),
            # Not in the server's process group: a Ctrl-C to the server must not cut the
            # VMs' network, and the VM outlives the server.
            start_new_session=True,
        )  # fmt: skip
        await launcher.wait()
    except OSError as exc:
        qemu_end.close()
        raise NetworkError(f"passt did not start: {exc.strerror}") from None
    finally:
        passt_end.close()
    if launcher.returncode != 0 or not pidfile.exists():
        qemu_end.close()
        raise NetworkError("passt did not start")
    return qemu_end


async def stop_passt(runtime: Path, log_file: Path) -> None:
    """Stop the VM's passt if it still runs (it exits by itself when its QEMU goes)."""
    await stop_process(read_pid(passt_pidfile(runtime), log_file))


async def add_forward(
    qmp: QmpClient,
    runtime: Path,
    forwards: dict[int, int],
    port: int,
    pick_port: Callable[[], int],
) -> dict[int, int]:
    """Forward a port on 127.0.0.1 to `port` in the guest, through the running QEMU's user
    network (`hostfwd_add`), and list it in the runtime folder: forwards live as long as
    the QEMU. `forwards` are the VM's now (`read_forwards`), changed in place and returned.
    A VM has at most MAX_FORWARDS; the oldest goes to make room (anyone who reaches the
    edge names ports, and each forward is a listening socket of QEMU's). The caller holds
    the VM's network lock. Raises NetworkError."""
    if not 1 <= port <= MAX_GUEST_PORT:
        raise NetworkError(f"guest port {port} is not between 1 and {MAX_GUEST_PORT}")
    while len(forwards) >= MAX_FORWARDS:
        oldest = next(iter(forwards))
        rule = f"tcp:127.0.0.1:{forwards.pop(oldest)}"
        try:
            await qmp.execute(
                "human-monitor-command", {"command-line": f"hostfwd_remove net0 {rule}"}
            )
        except QmpError as exc:
            raise NetworkError(f"removing the forward to guest port {oldest}: {exc}") from None
        _write_forwards(runtime, forwards)
    for _ in range(5):
        host_port = pick_port()
        rule = f"tcp:127.0.0.1:{host_port}-{GUEST_INBOUND_ADDRESS}:{port}"
        try:
            output = await qmp.execute(
                "human-monitor-command", {"command-line": f"hostfwd_add net0 {rule}"}
            )
        except QmpError as exc:
            raise NetworkError(f"forward to guest port {port}: {exc}") from None
        if not (isinstance(output, str) and _FORWARD_FAILED.search(output)):
            forwards[port] = host_port
            _write_forwards(runtime, forwards)
            return forwards
        # Another process took the port between our probe and QEMU's bind: another one.
    raise NetworkError(f"could not forward a host port to guest port {port}")


def read_forwards(runtime: Path) -> dict[int, int]:
    """Guest port → host port of the VM's forwards, oldest first."""
    try:
        data = read_json(forwards_file(runtime))
    except FileNotFoundError:
        return {}
    return {int(guest): int(host) for guest, host in data.items()}


def _write_forwards(runtime: Path, forwards: dict[int, int]) -> None:
    write_json(forwards_file(runtime), {str(guest): host for guest, host in forwards.items()})
