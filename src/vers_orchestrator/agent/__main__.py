"""Start vers-agent: `python3 -m vers_agent [--port PATH]` (the guest's init does this)."""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from . import protocol
from .connection import Connection, Stream, log
from .execs import DEFAULT_CWD, Exec
from .files import FileRead, FileWrite
from .loop import Loop
from .system import CGROUP_ROOT, Cgroups, Ping, Refresh

DEFAULT_PORT = f"/dev/virtio-ports/{protocol.PORT_NAME}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="vers-agent")
    parser.add_argument("--port", default=DEFAULT_PORT, help="the virtio-serial port to serve")
    parser.add_argument(
        "--fd", type=int, help="serve this inherited stream socket instead of a port (tests)"
    )
    parser.add_argument(
        "--cgroup-root", default=CGROUP_ROOT, help="where cgroup2 is mounted ('' for none)"
    )
    arguments = parser.parse_args()
    # Writes to a pipe whose reader is gone fail with EPIPE instead of killing the agent;
    # subprocess restores the default for the commands it starts.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.chdir(DEFAULT_CWD if os.path.isdir(DEFAULT_CWD) else "/")
    loop = Loop()
    cgroups = Cgroups(loop, arguments.cgroup_root)
    if arguments.fd is not None:
        fd = arguments.fd
        os.set_blocking(fd, False)
    else:
        fd = os.open(arguments.port, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)

    def exec_stream(connection: Connection, stream_id: int, request: dict[str, Any]) -> Stream:
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
    log(f"serving protocol {protocol.PROTOCOL_VERSION}")
    loop.run_forever()


if __name__ == "__main__":
    main()
