"""The guest as a whole: cgroups for commands, and what changes when a VM becomes a new one.

`refresh` is what a restored VM needs before anyone uses it: it continues a commit whose
wall clock stopped when the commit was taken, whose kernel RNG is in the same state in every
branch, and whose hostname and SSH host keys are its parent's.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import signal
import time

from .connection import Connection, Stream, log
from .loop import READ, Loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"
EXEC_CGROUPS = "vers-exec"
AGENT_CGROUP = "vers-agent"
AGENT_MEMORY = 32 * 1024 * 1024
# Against the commands' 100 (the default): thousands of runnable command processes (a fork
# bomb) share one hundredth of the CPU whenever the agent wants it.
AGENT_CPU_WEIGHT = 10000
# Cgroups of commands whose processes outlived them are removed once empty; checked this often.
SWEEP_SECONDS = 30.0
# Kept from commands, for the agent, init, sshd, the kernel and the page cache of what
# they run: a quarter of the guest's memory, between these two. Files commands leave in
# tmpfs cannot be reclaimed; measured in a 256 MiB guest, keeping 64 MiB was not enough (the
# kernel found nothing left to kill and panicked), 96 MiB is.
RESERVED_MEMORY = 96 * 1024 * 1024
MAX_RESERVED_MEMORY = 512 * 1024 * 1024
RESERVED_PIDS = 256
# Each command may run one process per this much of the commands' memory (640 in a 256 MiB
# guest): a process costs the kernel a stack, page tables and task structures that a fork
# bomb multiplies; capped by count, a fork bomb left running stays a bounded nuisance instead
# of pressing the kernel's own memory until the guest stops answering (seen under TCG in CI).
# The cap is per command, so the next command can still fork.
MEMORY_PER_PROCESS = 256 * 1024
MIN_COMMAND_PIDS = 512
STRAY_ROUNDS = 16
RNDRESEEDCRNG = 0x5207
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
SSHD_PID = "/run/sshd.pid"
HOSTNAME_MAX = 64
HOSTNAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# A clock off by less than this is slewed (adjtime), not stepped: programs never see time
# jump, backwards least of all. Beyond it the clock is stepped at once.
MAX_SLEW_NS = 500_000_000
# Processes the agent runs for itself, beside it in its cgroup.
_helpers: set[int] = set()


class Cgroup:
    """A command's cgroup (v2), or its session where the guest has no cgroup2 mounted."""

    def __init__(self, path: str | None = None, owner: Cgroups | None = None) -> None:
        self.path = path
        self._owner = owner

    def place(self, pid: int) -> None:
        """Move the just-started command into the cgroup, and whatever it forked before that.

        It starts beside the agent, not in its cgroup: had the agent stepped in to start it
        there, it would share the commands' memory limit and could stall at it. The agent
        runs ahead of it meanwhile (processes.spawn), but on another vCPU it runs at once.
        """
        if self.path is None:
            return
        try:
            _write(os.path.join(self.path, "cgroup.procs"), str(pid))
        except ProcessLookupError:
            pass  # it has exited already
        except OSError as exc:
            log(f"cannot move {pid} into {self.path}: {exc}")
        if self._owner is not None:
            self._owner.gather_strays(self.path)

    def kill(self, leader: int) -> None:
        """SIGKILL every process of the command: its cgroup, and its session in any case."""
        if self.path is not None:
            try:
                _write(os.path.join(self.path, "cgroup.kill"), "1")
            except OSError as exc:
                log(f"cgroup.kill failed: {exc}")
        _kill(leader, group=True)
        if self.path is None:
            for pid in _session_members(leader):
                _kill(pid)

    def remove(self) -> None:
        if self.path is not None and self._owner is not None:
            self._owner.remove(self.path)


class Cgroups:
    def __init__(self, loop: Loop, root: str) -> None:
        """Commands' cgroups go under `root`/vers-exec; an empty `root` means none."""
        self.root = root
        self._base = os.path.join(root, EXEC_CGROUPS)
        self._numbers = itertools.count(1)
        # Cgroups whose commands ended while processes of theirs still ran.
        self._lingering: set[str] = set()
        self.available = False
        # Processes one command may run (MEMORY_PER_PROCESS), once known.
        self._command_pids: int | None = None
        # Where the agent lives, once it has a cgroup of its own.
        self._agent_procs: str | None = None
        try:
            if not root or not os.path.exists(os.path.join(root, "cgroup.procs")):
                raise OSError("cgroup2 is not mounted")
            os.makedirs(self._base, exist_ok=True)
            self.available = os.path.exists(os.path.join(self._base, "cgroup.kill"))
        except OSError as exc:
            log(f"no cgroups for commands ({exc}); timeouts kill their sessions only")
        if self.available:
            self._limit_commands()
            self._protect_agent()
            # Left by an agent that ran before this one.
            self._lingering.update(
                entry.path
                for entry in os.scandir(self._base)
                if entry.is_dir(follow_symlinks=False)
            )
        self._loop = loop
        loop.call_later(SWEEP_SECONDS, self._sweep)

    def _limit_commands(self) -> None:
        """Commands, all together, may not take the guest from under the agent and init: a
        fork bomb meets a process limit, memory hogs (tmpfs files too) meet their own
        out-of-memory killer, and the agent and init keep what they need. What one command
        leaves running may not take every later command's turn either."""
        # Enabled below vers-exec too: each command's cgroup then has a CPU share of its own
        # (a fork bomb left running by one command is one share, not thousands) and is
        # killed whole by the commands' out-of-memory killer (memory.oom.group).
        for parent in (self.root, self._base):
            for controller in ("cpu", "memory", "pids"):
                try:
                    _write(os.path.join(parent, "cgroup.subtree_control"), f"+{controller}")
                except OSError as exc:
                    log(f"no {controller} controller for commands: {exc}")
        try:
            with open("/proc/meminfo") as meminfo:
                total = int(meminfo.readline().split()[1]) * 1024
            reserve = min(max(RESERVED_MEMORY, total // 4), MAX_RESERVED_MEMORY)
            # No memory.high: files in tmpfs cannot be reclaimed, and over `high` every
            # allocation of every command would be throttled without end (measured: an
            # exec of `rm` never finished). At `max` their own out-of-memory killer acts.
            commands_memory = max(total - reserve, reserve)
            _write(os.path.join(self._base, "memory.max"), str(commands_memory))
            with open("/proc/sys/kernel/pid_max") as pid_max:
                pids = int(pid_max.read()) - RESERVED_PIDS
            _write(os.path.join(self._base, "pids.max"), str(max(pids, MIN_COMMAND_PIDS)))
            self._command_pids = min(
                pids, max(commands_memory // MEMORY_PER_PROCESS, MIN_COMMAND_PIDS)
            )
        except (OSError, ValueError) as exc:
            log(f"no memory or process limits for commands: {exc}")

    def _protect_agent(self) -> None:
        """The agent lives in a cgroup of its own whose memory the kernel does not reclaim
        below AGENT_MEMORY and whose CPU share dwarfs the commands': however hard commands
        press, the agent keeps answering."""
        agent = os.path.join(self.root, AGENT_CGROUP)
        try:
            os.makedirs(agent, exist_ok=True)
            _write(os.path.join(agent, "cgroup.procs"), "0")
            self._agent_procs = os.path.join(agent, "cgroup.procs")
            _write(os.path.join(agent, "memory.min"), str(AGENT_MEMORY))
            _write(os.path.join(agent, "cpu.weight"), str(AGENT_CPU_WEIGHT))
        except OSError as exc:
            log(f"the agent's memory is not protected: {exc}")

    def gather_strays(self, into: str) -> None:
        """Move every process in the agent's cgroup but the agent and its helpers `into`
        the cgroup of the command just started: they are that command's children. Repeated
        until none is left, since they may fork while being moved."""
        if self._agent_procs is None:
            return
        me = os.getpid()
        for _ in range(STRAY_ROUNDS):
            try:
                with open(self._agent_procs) as procs:
                    strays = [int(pid) for pid in procs.read().split()]
            except (OSError, ValueError) as exc:
                log(f"cannot list the agent's cgroup: {exc}")
                return
            strays = [pid for pid in strays if pid != me and pid not in _helpers]
            if not strays:
                return
            for pid in strays:
                try:
                    _write(os.path.join(into, "cgroup.procs"), str(pid))
                except OSError:
                    pass  # exited meanwhile
        log(f"processes keep appearing in the agent's cgroup; left beside it: {strays}")

    def create(self, name: str) -> Cgroup:
        if not self.available:
            return Cgroup()
        try:
            # A command may have frozen the whole subtree: new commands must run.
            _write(os.path.join(self._base, "cgroup.freeze"), "0")
        except OSError:
            pass
        safe = "".join(c for c in name if c.isascii() and (c.isalnum() or c == "-"))[:40]
        path = os.path.join(self._base, f"{next(self._numbers)}-{safe}")
        try:
            os.mkdir(path)
        except OSError as exc:
            log(f"cannot make cgroup {path}: {exc}")
            return Cgroup()
        try:
            _write(os.path.join(path, "memory.oom.group"), "1")
        except OSError:
            pass  # no memory controller: the killer takes one process at a time
        if self._command_pids is not None:
            try:
                _write(os.path.join(path, "pids.max"), str(self._command_pids))
            except OSError as exc:
                log(f"no process limit for {path}: {exc}")
        return Cgroup(path, self)

    def remove(self, path: str) -> None:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                self._lingering.add(path)  # processes of it still run

    def _sweep(self) -> None:
        for path in list(self._lingering):
            self._lingering.discard(path)
            self.remove(path)
        self._loop.call_later(SWEEP_SECONDS, self._sweep)


def _kill(pid: int, *, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # gone already


def _session_members(session: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, session.
        if len(fields) > 3 and fields[3] == str(session):
            members.append(int(entry))
    return members


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class Refresh(Stream):
    """``{"op": "refresh", "time_ns"?, "sync_ns"?, "seed"?, "hostname"?, "host_keys"?: bool}``.

    Sets the wall clock to the host's (``time_ns``, nanoseconds since the epoch), or brings
    it there gently (``sync_ns``: slewed when less than half a second off), feeds the
    kernel RNG 64 fresh bytes and reseeds its CRNG at once (writing /dev/urandom alone only
    feeds the input pool, so branches would go on producing the same numbers for up to a
    minute), sets the hostname, and makes new SSH host keys in the background (sshd
    reloads them within about 0.1 s; until then it shows the parent's). Answers
    ``{"done": {"clock_offset_ns": guest minus host before the change}}``.
    """

    def __init__(self, connection: Connection, stream_id: int, request: dict[str, Any]) -> None:
        super().__init__(connection, stream_id)
        done: dict[str, Any] = {}
        try:
            if request.get("time_ns") is not None:
                host_now = int(request["time_ns"])
                done["clock_offset_ns"] = time.time_ns() - host_now
                time.clock_settime_ns(time.CLOCK_REALTIME, host_now)
            if request.get("sync_ns") is not None:
                offset = time.time_ns() - int(request["sync_ns"])
                done["clock_offset_ns"] = offset
                _correct_clock(offset)
            if request.get("seed"):
                _reseed(bytes.fromhex(str(request["seed"])))
            if request.get("hostname"):
                _set_hostname(str(request["hostname"]))
            if request.get("host_keys"):
                _regenerate_host_keys(connection.loop)
        except (OSError, ValueError) as exc:
            self.fail("internal", f"refresh failed: {exc}")
            return
        self.send_message({"done": done})
        self.finish()


class Ping(Stream):
    """``{"op": "ping"}``: answers ``{"pong": {...}}`` with the agent's view of the guest."""

    def __init__(self, connection: Connection, stream_id: int, request: dict[str, Any]) -> None:
        super().__init__(connection, stream_id)
        self.send_message(
            {
                "pong": {
                    "time_ns": time.time_ns(),
                    "hostname": os.uname().nodename,
                    "streams": len(connection.streams),
                }
            }
        )
        self.finish()


def _correct_clock(offset_ns: int) -> None:
    if abs(offset_ns) <= MAX_SLEW_NS:
        try:
            _adjtime(-offset_ns)
            return
        except OSError as exc:
            log(f"adjtime failed ({exc}); stepping the clock")
    time.clock_settime_ns(time.CLOCK_REALTIME, time.time_ns() - offset_ns)


def _adjtime(delta_ns: int) -> None:
    import ctypes  # only here: the agent starts faster without it

    class Timeval(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]

    seconds, nanoseconds = divmod(delta_ns, 1_000_000_000)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.adjtime(ctypes.byref(Timeval(seconds, nanoseconds // 1000)), None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _reseed(seed: bytes) -> None:
    with open("/dev/urandom", "wb", buffering=0) as rng:
        rng.write(seed)
        fcntl.ioctl(rng.fileno(), RNDRESEEDCRNG)


def _set_hostname(name: str) -> None:
    if not 0 < len(name) <= HOSTNAME_MAX or not set(name) <= HOSTNAME_CHARACTERS:
        raise ValueError(f"not a hostname: {name!r}")
    _write("/proc/sys/kernel/hostname", name)
    _replace_file("/etc/hostname", f"{name}\n")
    try:
        with open("/etc/hosts") as hosts:
            lines = hosts.read().splitlines()
    except FileNotFoundError:
        lines = ["127.0.0.1 localhost"]
    lines = [line for line in lines if not line.startswith("127.0.1.1")]
    lines.append(f"127.0.1.1 {name}")
    _replace_file("/etc/hosts", "\n".join(lines) + "\n")
    if os.path.exists("/etc/machine-id"):
        _replace_file("/etc/machine-id", os.urandom(16).hex() + "\n")


def _replace_file(path: str, text: str) -> None:
    staged = f"{path}.vers-agent"
    with open(staged, "w") as out:
        out.write(text)
    try:
        os.chmod(staged, os.stat(path).st_mode & 0o7777)
    except OSError:
        pass  # a new file keeps the default mode
    os.replace(staged, path)


def _regenerate_host_keys(loop: Loop) -> None:
    keygen = "/usr/bin/ssh-keygen"
    if not os.path.exists(keygen):
        return
    staged = f"{HOST_KEY}.new"
    for path in (staged, f"{staged}.pub"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    argv = [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", staged]
    pid = os.posix_spawn(keygen, argv, {"PATH": "/usr/bin:/bin"}, setsid=True)
    _helpers.add(pid)
    pidfd = os.pidfd_open(pid)

    def finished(_: int) -> None:
        loop.unwatch(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        _helpers.discard(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            log("ssh-keygen failed; the SSH host key stays the parent's")
            return
        os.replace(f"{staged}.pub", f"{HOST_KEY}.pub")
        os.replace(staged, HOST_KEY)
        try:
            with open(SSHD_PID) as pid_file:
                os.kill(int(pid_file.read().strip()), signal.SIGHUP)
        except (OSError, ValueError):
            pass  # no sshd: it reads the new key when it starts

    loop.watch(pidfd, READ, finished)
