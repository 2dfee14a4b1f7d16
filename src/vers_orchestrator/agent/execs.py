"""`exec`: run a command in a session and cgroup of its own, and report what it does.

Request (OPEN): ``{"op": "exec", "argv": [...], "env": {...}, "cwd": str | null,
"stdin": bool, "timeout_ms": int | null, "output_limit": int | null, "name": str}``.

Replies: ``{"started": {"pid": n}}``; DATA on STDOUT and STDERR as the command writes;
then END on both, ``{"exit": {...}}`` and CLOSE. With ``stdin``, the host sends DATA on
INPUT and END when it has no more.

Rules (docs/guest-agent.md):
- The exec is over when the command itself exits, with everything it wrote until then.
  Processes it left running keep running; their later output is read and dropped, so
  they never block on a full pipe or die of SIGPIPE.
- On timeout the command's cgroup is killed (every descendant, reparented or not, and
  those that left its session too); without cgroups, its session is.
- With ``output_limit``, at most that many bytes of each stream are sent; the rest is
  counted and dropped, and the exit says so (``stdout_truncated`` …).
"""

from __future__ import annotations

import os

from . import protocol
from .connection import Connection, Stream
from .loop import READ, WRITE, Timer
from .processes import PATH, spawn
from .protocol import STREAM_NAMES, Channel
from .system import Cgroup, Cgroups

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ENV = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
# Between DEFAULT_ENV and a request's own env (`environment_file`).
ENVIRONMENT_FILE = "/etc/environment"
DEFAULT_CWD = "/root"
# The image's WORKDIR, when its builder wrote one (drivers/qemu/built_images.py).
WORKDIR_FILE = "/etc/vers-agent/workdir"
# What the command wrote before it exited but the host had no credit for yet; beyond it
# (a background process flooding the pipe) the rest is dropped as after-exit output.
MAX_HELD_AFTER_EXIT = protocol.WINDOW
COMMAND_NOT_FOUND = 127
NOT_EXECUTABLE = 126


class OutputPipe:
    __slots__ = ("channel", "fd", "held", "limit", "sent", "total", "truncated", "watching")

    def __init__(self, channel: int, fd: int, limit: int | None) -> None:
        self.channel = channel
        self.fd: int | None = fd
        self.limit = limit
        self.sent = 0
        self.total = 0
        self.truncated = False
        # Read after the command exited, waiting for credit.
        self.held = bytearray()
        self.watching = False


class Exec(Stream):
    def __init__(
        self,
        connection: Connection,
        stream_id: int,
        request: dict[str, Any],
        cgroups: Cgroups,
    ) -> None:
        super().__init__(connection, stream_id)
        self._loop = connection.loop
        self._cgroups = cgroups
        self._exit: dict[str, Any] | None = None
        self._timed_out = False
        self._timer: Timer | None = None
        self._pidfd: int | None = None
        self._stdin_fd: int | None = None
        self._stdin_buffer = bytearray()
        self._stdin_ended = False
        self._pipes: list[OutputPipe] = []
        self._cgroup: Cgroup | None = None
        try:
            argv, env, cwd, timeout_ms, limit = _parse(request)
        except ValueError as exc:
            self.fail("bad_request", str(exc))
            return
        if not os.path.isdir(cwd):
            self.fail("cwd_not_found", f"working directory not found: {cwd}")
            return
        self._start(argv, env, cwd, bool(request.get("stdin")), limit, str(request.get("name")))
        if timeout_ms is not None and self._exit is None:
            self._timer = self._loop.call_later(timeout_ms / 1000, self._on_timeout)

    # -- starting -------------------------------------------------------------------

    def _start(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        with_stdin: bool,
        limit: int | None,
        name: str,
    ) -> None:
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        in_read, in_write = os.pipe() if with_stdin else (None, None)
        self._cgroup = self._cgroups.create(name)
        failure: OSError | None = None
        try:
            pid = spawn(argv, env, cwd, (in_read, out_write, err_write), self._cgroup.place)
        except OSError as exc:
            failure = exc
        finally:
            # The child has its own copies of these ends, or there is no child.
            for fd in (out_write, err_write, in_read):
                if fd is not None:
                    os.close(fd)
        if failure is not None:
            for fd in (out_read, err_read, in_write):
                if fd is not None:
                    os.close(fd)
            self._cgroup.remove()
            self._cgroup = None
            self._not_started(argv[0], failure)
            return
        self._pid = pid
        self.send_message({"started": {"pid": pid}})
        for channel, fd in ((Channel.STDOUT, out_read), (Channel.STDERR, err_read)):
            os.set_blocking(fd, False)
            pipe = OutputPipe(channel, fd, limit)
            self._pipes.append(pipe)
            self._watch(pipe)
        if in_write is not None:
            os.set_blocking(in_write, False)
            self._stdin_fd = in_write
        self._pidfd = os.pidfd_open(pid)
        self._loop.watch(self._pidfd, READ, lambda _: self._on_exit())

    def _not_started(self, program: str, error: OSError) -> None:
        # As a shell reports it: 127 for a missing program, 126 for one it cannot run.
        code = COMMAND_NOT_FOUND if isinstance(error, FileNotFoundError) else NOT_EXECUTABLE
        reason = error.strerror or str(error)
        self.send_message({"started": {"pid": None}})
        message = f"vers-agent: cannot run {program}: {reason}\n".encode()
        self.send_data(Channel.STDERR, message)
        self.send_end(Channel.STDOUT)
        self.send_end(Channel.STDERR)
        self.send_message({"exit": _exit_report(code, None, False, [], len(message))})
        self.finish()
        self._exit = {}

    # -- output ---------------------------------------------------------------------

    def _watch(self, pipe: OutputPipe) -> None:
        if pipe.fd is not None and not pipe.watching:
            pipe.watching = True
            self._loop.watch(pipe.fd, READ, lambda _: self._on_output(pipe))

    def _pause(self, pipe: OutputPipe) -> None:
        if pipe.fd is not None and pipe.watching:
            pipe.watching = False
            self._loop.unwatch(pipe.fd)

    def _sending(self, pipe: OutputPipe) -> bool:
        """Whether what the pipe yields now still goes to the host."""
        return self.open and self._exit is None and (pipe.limit is None or pipe.sent < pipe.limit)

    def _on_output(self, pipe: OutputPipe) -> None:
        if pipe.fd is None:
            return
        size = protocol.MAX_PAYLOAD
        if self._sending(pipe):
            size = min(size, self.credit[pipe.channel])
            if size <= 0:
                self._pause(pipe)  # the command blocks on a full pipe until credit comes
                return
        try:
            data = os.read(pipe.fd, size)
        except BlockingIOError:
            return
        if not data:
            self._close_pipe(pipe)
            return
        self._take(pipe, data)

    def _take(self, pipe: OutputPipe, data: bytes) -> None:
        kept = self._within_limit(pipe, data)
        if kept:
            self.send_data(pipe.channel, kept)

    def _within_limit(self, pipe: OutputPipe, data: bytes) -> bytes:
        """What of `data` goes to the host (counted as sent); the rest is only counted."""
        pipe.total += len(data)
        if not self._sending(pipe):
            if self.open and pipe.limit is not None and self._exit is None:
                pipe.truncated = True
            return b""
        if pipe.limit is not None and len(data) > pipe.limit - pipe.sent:
            pipe.truncated = True
            data = data[: pipe.limit - pipe.sent]
        pipe.sent += len(data)
        return data

    def _close_pipe(self, pipe: OutputPipe) -> None:
        if pipe.fd is not None:
            self._pause(pipe)
            os.close(pipe.fd)
            pipe.fd = None
        self._release_when_idle()

    def on_credit(self, channel: int, amount: int) -> None:
        super().on_credit(channel, amount)
        for pipe in self._pipes:
            if pipe.channel == channel:
                if self._exit is None:
                    self._watch(pipe)
                else:
                    self._send_held()

    # -- stdin ----------------------------------------------------------------------

    def on_data(self, channel: int, data: bytes) -> None:
        if channel != Channel.INPUT or self._stdin_ended:
            self.fail("bad_request", "stdin data on a stream without stdin")
            return
        if self._stdin_fd is None:
            self.consumed(Channel.INPUT, len(data))  # the command closed its stdin
            return
        self._stdin_buffer += data
        self._write_stdin()

    def on_end(self, channel: int) -> None:
        if channel != Channel.INPUT:
            self.fail("bad_request", "END of a channel the host does not send")
            return
        self._stdin_ended = True
        self._write_stdin()

    def _write_stdin(self) -> None:
        fd = self._stdin_fd
        if fd is None:
            return
        while self._stdin_buffer:
            try:
                written = os.write(fd, self._stdin_buffer)
            except BlockingIOError:
                self._loop.watch(fd, WRITE, lambda _: self._write_stdin())
                return
            except (BrokenPipeError, OSError):
                written = len(self._stdin_buffer)  # nobody reads it any more: drop the rest
                self._close_stdin()
            del self._stdin_buffer[:written]
            self.consumed(Channel.INPUT, written)
            if self._stdin_fd is None:
                return
        self._loop.unwatch(fd)
        if self._stdin_ended:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin_fd is not None:
            self._loop.unwatch(self._stdin_fd)
            os.close(self._stdin_fd)
            self._stdin_fd = None
        if self._stdin_buffer:
            self.consumed(Channel.INPUT, len(self._stdin_buffer))
            self._stdin_buffer.clear()

    # -- the end ------------------------------------------------------------------------

    def _on_timeout(self) -> None:
        self._timer = None
        if self._exit is not None:
            return
        self._timed_out = True
        assert self._cgroup is not None
        self._cgroup.kill(self._pid)

    def _on_exit(self) -> None:
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self._pid, 255 << 8
        if pid == 0:
            return
        returncode = os.waitstatus_to_exitcode(status)
        if self._pidfd is not None:
            self._loop.unwatch(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Everything the command wrote is in its pipes now; take it before the exit.
        for pipe in self._pipes:
            self._drain(pipe)
        signal_number = -returncode if returncode < 0 else None
        code = 128 + signal_number if signal_number is not None else returncode
        self._exit = _exit_report(code, signal_number, self._timed_out, self._pipes, 0)
        self._close_stdin()
        self._send_held()
        self._release_when_idle()

    def _drain(self, pipe: OutputPipe) -> None:
        while pipe.fd is not None and len(pipe.held) < MAX_HELD_AFTER_EXIT:
            try:
                data = os.read(pipe.fd, protocol.MAX_PAYLOAD)
            except BlockingIOError:
                return
            if not data:
                self._close_pipe(pipe)
                return
            pipe.held += self._within_limit(pipe, data)

    def _send_held(self) -> None:
        """After the exit: what the command wrote, as credit allows, then the exit itself."""
        if self._exit is None or not self.open:
            return
        for pipe in self._pipes:
            if pipe.held:
                amount = min(len(pipe.held), self.credit[pipe.channel])
                if amount > 0:
                    self.send_data(pipe.channel, bytes(pipe.held[:amount]))
                    del pipe.held[:amount]
        if any(pipe.held for pipe in self._pipes):
            return
        for pipe in self._pipes:
            self.send_end(pipe.channel)
            # From now on the pipe only keeps background writers from blocking.
            self._watch(pipe)
        exit_report = dict(self._exit)
        for pipe in self._pipes:
            name = STREAM_NAMES[pipe.channel]
            exit_report[f"{name}_bytes"] = pipe.total
            exit_report[f"{name}_truncated"] = pipe.truncated
        self.send_message({"exit": exit_report})
        self.finish()

    def on_close(self) -> None:
        super().on_close()
        for pipe in self._pipes:
            pipe.held.clear()
            self._watch(pipe)  # keep draining, for processes that outlive the stream
        self._close_stdin()

    def _release_when_idle(self) -> None:
        done = self._exit is not None and all(pipe.fd is None for pipe in self._pipes)
        if done and self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None


def _parse(
    request: dict[str, Any],
) -> tuple[list[str], dict[str, str], str, int | None, int | None]:
    argv = request.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    env = request.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k for k, v in env.items()
    ):
        raise ValueError("env must map names without '=' to strings")
    if any("\0" in part for part in (*argv, *env, *env.values())):
        raise ValueError("argv and env must not contain NUL")
    cwd = request.get("cwd") or default_workdir()
    if not isinstance(cwd, str) or "\0" in cwd:
        raise ValueError("cwd must be a path")
    timeout_ms = _optional_count(request, "timeout_ms")
    limit = _optional_count(request, "output_limit")
    return argv, {**DEFAULT_ENV, **environment_file(), **env}, cwd, timeout_ms, limit


def default_workdir(path: str = WORKDIR_FILE) -> str:
    """Where a command that names no working directory runs: the image's WORKDIR when it was
    built from an OCI image that has one (written to WORKDIR_FILE) and it is a directory,
    else DEFAULT_CWD."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            workdir = file.read(4096).strip()
    except OSError:
        return DEFAULT_CWD
    usable = workdir.startswith("/") and "\0" not in workdir and os.path.isdir(workdir)
    return workdir if usable else DEFAULT_CWD


def environment_file(path: str = ENVIRONMENT_FILE) -> dict[str, str]:
    """The guest's `/etc/environment`, read at every exec (the user's variables are written
    there when a VM is made; SSH sessions read the same file through pam_env): `KEY=VALUE`
    lines, `#` comments, an optional `export ` and one pair of quotes around a value."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read(1 << 20)
    except OSError:
        return {}
    found: dict[str, str] = {}
    for raw in text.split("\n"):  # only "\n" ends a line, as for pam_env
        line = raw.removesuffix("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.removeprefix("export ").partition("=")
        key = key.strip()  # the value is kept as written, trailing spaces included
        if not separator or not key or "\0" in key or "\0" in value:
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        found[key] = value
    return found


def _optional_count(request: dict[str, Any], name: str) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _exit_report(
    code: int, signal_number: int | None, timed_out: bool, pipes: list[OutputPipe], errors: int
) -> dict[str, Any]:
    report: dict[str, Any] = {"code": code, "signal": signal_number, "timed_out": timed_out}
    report.update(stdout_bytes=0, stdout_truncated=False, stderr_bytes=errors)
    report["stderr_truncated"] = False
    for pipe in pipes:
        name = STREAM_NAMES[pipe.channel]
        report[f"{name}_bytes"] = pipe.total
        report[f"{name}_truncated"] = pipe.truncated
    return report
