"""`read_file` and `write_file`: regular files only, streamed, never half-written.

read_file ``{"op": "read_file", "path", "max_bytes": int | null}`` answers
``{"file": {"size", "mode"}}``, DATA on STDOUT as credit allows, END, ``{"done": {"bytes"}}``.

write_file ``{"op": "write_file", "path", "mode": int | null, "create_dirs": bool}``
answers ``{"ready": {}}``; the host sends DATA on INPUT and END; the agent answers
``{"done": {"bytes"}}``. The bytes go to a temporary file beside the target, which
replaces the target only once complete (owner kept, mode kept unless given, new files
0644); a cancelled or failed write removes it. Symbolic links are followed.

Relative paths are relative to root's home, like commands' working directory.
"""

from __future__ import annotations

import os
import stat

from . import protocol
from .connection import Connection, Stream
from .execs import DEFAULT_CWD
from .protocol import Channel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NEW_FILE_MODE = 0o644
# Kernel interfaces: their files say size 0 (or 4096) whatever they hold, and some never
# end or stall the kernel when read whole (/proc/kcore). Exec reads them. Known by the
# file system a file is on, wherever it is mounted; by path where /proc cannot say.
KERNEL_FILE_SYSTEMS = frozenset(
    {
        "proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
        "configfs", "bpf", "pstore", "efivarfs", "fusectl", "binfmt_misc",
    }
)  # fmt: skip
KERNEL_FILES = ("/proc/", "/sys/")


def _file_path(stream: Stream, request: dict[str, Any], option: str, valid: bool) -> str | None:
    """The request's path, or None once the stream is refused: a path that is not a
    string, an `option` that is not `valid`, or a path that cannot name a regular file."""
    path = request.get("path")
    if not isinstance(path, str) or not path or "\0" in path:
        stream.fail("bad_request", "path must be a non-empty string without NUL")
        return None
    if not valid:
        stream.fail("bad_request", option)
        return None
    path = os.path.join(DEFAULT_CWD, path)
    if _not_a_file(path):
        stream.fail("not_regular", f"not a regular file: {path}")
        return None
    return path


def _not_a_file(path: str) -> bool:
    """A path that names a directory (a trailing "/", "." or "..") or a kernel interface."""
    if path.endswith("/") or os.path.basename(path) in (".", ".."):
        return True
    return os.path.realpath(path).startswith(KERNEL_FILES)


def _on_kernel_file_system(info: os.stat_result) -> bool:
    """Whether the file of `info` lives on procfs, sysfs or another kernel interface (its
    device looked up in /proc/self/mountinfo)."""
    device = f"{os.major(info.st_dev)}:{os.minor(info.st_dev)}"
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                mount, _, described = line.partition(" - ")
                fields = mount.split()
                if len(fields) > 2 and fields[2] == device:
                    return described.split(" ", 1)[0] in KERNEL_FILE_SYSTEMS
    except OSError:
        pass  # no /proc: the path check is all there is
    return False


def _io_error(stream: Stream, path: str, exc: OSError) -> None:
    stream.fail("io_error", f"{path}: {exc.strerror or exc}")


class FileRead(Stream):
    def __init__(self, connection: Connection, stream_id: int, request: dict[str, Any]) -> None:
        super().__init__(connection, stream_id)
        self._fd: int | None = None
        self._sent = 0
        max_bytes = request.get("max_bytes")
        path = _file_path(
            self,
            request,
            "max_bytes must be a non-negative integer",
            max_bytes is None or (isinstance(max_bytes, int) and max_bytes >= 0),
        )
        if path is None:
            return
        try:
            # Looked at before opening: opening a device or FIFO can block or have effects.
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode) or _on_kernel_file_system(info):
                self.fail("not_regular", f"not a regular file: {path}")
                return
            fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self.fail("not_found", f"no such file: {path}")
            return
        except NotADirectoryError:
            self.fail("not_found", f"no such file: {path}")
            return
        except OSError as exc:
            _io_error(self, path, exc)
            return
        opened = os.fstat(fd)
        replaced = opened.st_dev != info.st_dev and _on_kernel_file_system(opened)
        if not stat.S_ISREG(opened.st_mode) or replaced:  # replaced between the two looks
            os.close(fd)
            self.fail("not_regular", f"not a regular file: {path}")
            return
        info = opened
        if max_bytes is not None and info.st_size > max_bytes:
            os.close(fd)
            self.send_message(
                protocol.error_message(
                    "too_large", f"{path} is {info.st_size} bytes", size=info.st_size
                )
            )
            self.finish()
            return
        self._fd = fd
        self._path = path
        # Exactly this many bytes are sent: a file that grows meanwhile is cut there, one
        # that shrinks is an error (the host may have promised the size to its client).
        self._size = info.st_size
        self.send_message({"file": {"size": info.st_size, "mode": stat.S_IMODE(info.st_mode)}})
        connection.loop.set_idle(self, self._produce)

    def _produce(self) -> None:
        """One chunk per loop turn, so other streams and the port get their turns too."""
        if self._fd is None:
            return
        left = self._size - self._sent
        size = min(protocol.MAX_PAYLOAD, self.credit[Channel.STDOUT], left)
        if left and size <= 0:
            self.connection.loop.set_idle(self, None)  # on_credit resumes
            return
        try:
            data = os.read(self._fd, size) if left else b""
        except OSError as exc:
            self._stop()
            _io_error(self, self._path, exc)
            return
        if data:
            self._sent += len(data)
            self.send_data(Channel.STDOUT, data)
            return
        self._stop()
        if left:
            self.fail("io_error", f"{self._path} shrank while it was read")
            return
        self.send_end(Channel.STDOUT)
        self.send_message({"done": {"bytes": self._sent}})
        self.finish()

    def on_credit(self, channel: int, amount: int) -> None:
        super().on_credit(channel, amount)
        if self._fd is not None:
            self.connection.loop.set_idle(self, self._produce)

    def _stop(self) -> None:
        self.connection.loop.set_idle(self, None)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def on_close(self) -> None:
        super().on_close()
        self._stop()


class FileWrite(Stream):
    def __init__(self, connection: Connection, stream_id: int, request: dict[str, Any]) -> None:
        super().__init__(connection, stream_id)
        self._fd: int | None = None
        self._staged: str | None = None
        self._written = 0
        mode = request.get("mode")
        path = _file_path(
            self,
            request,
            "mode must be between 0 and 0o7777",
            mode is None or (isinstance(mode, int) and 0 <= mode <= 0o7777),
        )
        if path is None:
            return
        try:
            if request.get("create_dirs"):
                os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            target = os.path.realpath(path)
            directory = os.path.dirname(target)
            if not os.path.isdir(directory):
                self.fail("not_found", f"no such directory: {os.path.dirname(path)}")
                return
            if _on_kernel_file_system(os.stat(directory)):
                self.fail("not_regular", f"not a regular file: {path}")
                return
            try:
                existing: os.stat_result | None = os.stat(target)
            except FileNotFoundError:
                existing = None
            if existing is not None and not stat.S_ISREG(existing.st_mode):
                self.fail("not_regular", f"not a regular file: {path}")
                return
            staged = os.path.join(
                directory, f".{os.path.basename(target)}.vers-{os.urandom(4).hex()}"
            )
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            _io_error(self, path, exc)
            return
        self._fd = fd
        self._path = path
        self._target = target
        self._staged = staged
        self._mode = mode
        self._existing = existing
        self.send_message({"ready": {}})

    def on_data(self, channel: int, data: bytes) -> None:
        if channel != Channel.INPUT or self._fd is None:
            self.fail("bad_request", "file data after the end")
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._discard()
            _io_error(self, self._path, exc)
            return
        self._written += len(data)
        self.consumed(Channel.INPUT, len(data))

    def on_end(self, channel: int) -> None:
        if channel != Channel.INPUT or self._fd is None:
            self.fail("bad_request", "END of a channel the host does not send")
            return
        fd = self._fd
        staged = self._staged
        assert staged is not None
        try:
            existing = self._existing
            mode = self._mode
            if mode is None:
                mode = stat.S_IMODE(existing.st_mode) if existing is not None else NEW_FILE_MODE
            if existing is not None:
                os.fchown(fd, existing.st_uid, existing.st_gid)
            os.fchmod(fd, mode)
            os.close(fd)
            self._fd = None
            os.replace(staged, self._target)
            self._staged = None
        except OSError as exc:
            self._discard()
            _io_error(self, self._path, exc)
            return
        self.send_message({"done": {"bytes": self._written}})
        self.finish()

    def _discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._staged is not None:
            try:
                os.unlink(self._staged)
            except OSError:
                pass  # already gone
            self._staged = None

    def on_close(self) -> None:
        super().on_close()
        self._discard()
