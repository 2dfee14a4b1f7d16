"""Start vers-agent: `python3 -m vers_agent [--port PATH]` (the guest's init does this)."""

from __future__ import annotations

import os
import signal
import sys

from . import protocol
from .connection import Connection, Stream, log
from .execs import Exec
from .files import FileRead, FileWrite
from .loop import Loop
from .processes import protect_agent
from .system import CGROUP_ROOT, Cgroups, Ping, Refresh

DEFAULT_PORT = f"/dev/virtio-ports/{protocol.PORT_NAME}"


USAGE = f"""usage: python3 -m vers_agent [--port PATH] [--fd N] [--cgroup-root PATH]
  --port PATH         the virtio-serial port to serve (default: {DEFAULT_PORT})
  --fd N              serve this inherited stream socket instead (tests)
  --cgroup-root PATH  where cgroup2 is mounted; '' for none (default: {CGROUP_ROOT})
"""


def _options(argv: list[str]) -> dict[str, str]:
    # Not argparse: it costs a tenth of a second to import under TCG, at every boot.
    options = {"--port": DEFAULT_PORT, "--cgroup-root": CGROUP_ROOT}
    pairs = iter(argv)
    for name in pairs:
        value = next(pairs, None)
        if name not in ("--port", "--fd", "--cgroup-root") or value is None:
            sys.exit(USAGE)
        options[name] = value
    return options


def _find_port(name: str) -> str:
    """The device of the virtio-serial port called `name`: the guest's init starts the
    agent before anything names the ports under /dev/virtio-ports."""
    ports = "/sys/class/virtio-ports"
    for port in sorted(os.listdir(ports)):
        try:
            with open(f"{ports}/{port}/name") as port_name:
                if port_name.read().strip() == name:
                    return f"/dev/{port}"
        except OSError:
            continue
    sys.exit(f"vers-agent: no virtio-serial port named {name}")


def _uptime() -> str:
    try:
        with open("/proc/uptime") as uptime:
            return uptime.read().split()[0]
    except OSError:
        return "?"


def main() -> None:
    options = _options(sys.argv[1:])
    # Writes to a pipe whose reader is gone fail with EPIPE instead of killing the agent;
    # subprocess restores the default for the commands it starts.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.chdir("/")
    protect_agent()
    loop = Loop()
    cgroups = Cgroups(loop, options["--cgroup-root"])
    if "--fd" in options:
        fd = int(options["--fd"])
        os.set_blocking(fd, False)
    else:
        port = options["--port"]
        if port == DEFAULT_PORT and not os.path.exists(port):
            port = _find_port(protocol.PORT_NAME)
        fd = os.open(port, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)

    def exec_stream(connection: Connection, stream_id: int, request: dict[str, object]) -> Stream:
        return Exec(connection, stream_id, request, cgroups)

    connection = Connection(
        loop,
        fd,
        {
            "exec": exec_stream,
            "read_file": FileRead,
            "write_file": FileWrite,
            "refresh": Refresh,
            "ping": Ping,
        },
    )
    connection.announce()
    log(f"serving protocol {protocol.PROTOCOL_VERSION}, {_uptime()} s after the kernel started")
    loop.run_forever()


if __name__ == "__main__":
    main()
