"""The external programs image builds run (skopeo, umoci, tar, rsync, mkfs.ext4 …): each
bounded in time, and all killed at once when the server stops, so that a stop never waits
for a pull that may take minutes (the threads that wait for them return at once)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vers_orchestrator.drivers.base import DriverError

# Long enough for a multi-gigabyte pull on a slow link; a hung registry ends here.
TIMEOUT_SECONDS = 3600
PR_SET_PDEATHSIG = 1
SETTINGS_PREFIX = "VERS_ORCHESTRATOR_"

_running: set[subprocess.Popen[str]] = set()
_lock = threading.Lock()


class ToolError(DriverError):
    """A program failed; the message is what it was doing and the program's own reason."""


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


def last_lines(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return "; ".join(lines[-3:]) or "failed without a message"


def run(
    command: list[str],
    doing: str,
    *,
    accept: tuple[int, ...] = (0,),
    explain: Callable[[str], str] = last_lines,
    timeout: float = TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> Finished:
    """Run `command` (blocking; call it from a thread) and return its output. Raises
    ToolError "<doing>: <explain(stderr)>" when it exits with a code not in `accept`, cannot
    start, outlives `timeout` seconds or is stopped by `stop_all`. The program's environment
    is `child_environment(env)`."""
    try:
        with _lock:
            process = subprocess.Popen(
                command,
                preexec_fn=_die_with_parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=child_environment(env),
            )
            _running.add(process)
    except OSError as exc:
        raise ToolError(f"{doing}: cannot run {command[0]}: {exc.strerror or exc}") from exc
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ToolError(f"{doing}: {command[0]} did not finish within {timeout:.0f} s") from None
    finally:
        with _lock:
            _running.discard(process)
    if process.returncode < 0:
        raise ToolError(f"{doing}: stopped (the server is stopping)")
    if process.returncode not in accept:
        raise ToolError(f"{doing}: {explain(stderr)}")
    return Finished(process.returncode, stdout, stderr)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a program the server starts: the server's, less its own
    settings (`VERS_ORCHESTRATOR_*`: the database URL, the deploy token), plus `extra`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}
    return {**inherited, **(extra or {})}


def _die_with_parent() -> None:
    """In the child before exec: killed when the server dies, even by SIGKILL, instead of
    pulling on into a folder the next start removes (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_all() -> None:
    """Kill every program `run` is waiting for; their callers get ToolError."""
    with _lock:
        for process in _running:
            process.kill()
