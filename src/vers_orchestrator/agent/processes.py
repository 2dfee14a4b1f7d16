"""How the agent starts a command's process, and keeps its own privileges from it.

`spawn` is posix_spawn with what an exec needs around it: the program looked up in the
command's own PATH, a new session, default signal dispositions, and the instant between
the spawn and the command's move into its cgroup held by the agent (docs/guest-agent.md).
"""

from __future__ import annotations

import os
import resource
import signal
import stat

from .connection import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Ignored by the agent (as by every Python program); commands start with the defaults.
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
AGENT_OOM_SCORE_ADJ = -1000
_DEV_NULL: list[int] = []
# The open-files limit commands get: the one the agent was started with.
_COMMAND_NOFILE: list[tuple[int, int]] = []
# Emptied when the guest refuses the agent a real-time policy.
_REALTIME = [True]


def protect_agent() -> None:
    """The agent is how the host reaches the guest: the out-of-memory killer must take
    anything else first, and many commands at once must not run it out of descriptors.
    Commands start without either privilege (see `spawn`)."""
    _set_oom_score_adj(AGENT_OOM_SCORE_ADJ)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _COMMAND_NOFILE.append((soft, hard))
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _set_oom_score_adj(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as adjustment:
            adjustment.write(str(value))
    except OSError as exc:
        log(f"cannot set the OOM score adjustment to {value}: {exc}")


def _spawning(begins: bool) -> None:
    """Around a spawn: take off the agent's protections, which posix_spawn has no action
    for and a child inherits (a command the out-of-memory killer may not take stalls its
    cgroup instead of being killed), and put the agent ahead of the child on the CPU until
    it is in its cgroup. On one vCPU the new process otherwise runs first, and a shell runs
    a whole pipeline before the agent moves it. SCHED_RESET_ON_FORK: the child is born
    with the ordinary policy."""
    _set_oom_score_adj(0 if begins else AGENT_OOM_SCORE_ADJ)
    if _COMMAND_NOFILE and _COMMAND_NOFILE[0][0] < _COMMAND_NOFILE[0][1]:
        soft, hard = _COMMAND_NOFILE[0]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft if begins else hard, hard))
    if _REALTIME:
        try:
            if begins:
                policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
                os.sched_setscheduler(0, policy, os.sched_param(1))
            else:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:
            _REALTIME.clear()
            log(f"cannot run ahead of new commands ({exc}); they may fork before their move")


def spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    stdio: tuple[int | None, int, int],
    settle: Callable[[int], None],
) -> int:
    """Start `argv` as the leader of a new session, with stdin, stdout and stderr from
    `stdio` (stdin None: /dev/null), and call `settle(pid)` (put it into its cgroup)
    before it runs; returns its pid.

    posix_spawn rather than subprocess: measured under TCG, 13-16 ms against 20 ms for
    `true`, most of an exec's cost. It has no working-directory action, so the agent
    (single-threaded) steps into `cwd` around it. The program is looked up in the
    command's PATH, not the agent's.
    """
    program = _which(argv[0], env.get("PATH", PATH))
    if not _DEV_NULL:
        _DEV_NULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    stdin, stdout, stderr = stdio
    actions = [
        (os.POSIX_SPAWN_DUP2, _DEV_NULL[0] if stdin is None else stdin, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ]
    os.chdir(cwd)
    _spawning(True)
    try:
        pid = os.posix_spawn(
            program, argv, env, file_actions=actions, setsid=True, setsigdef=RESET_SIGNALS
        )
        settle(pid)
        return pid
    finally:
        # The agent lives in "/": the one directory no command can take away from it.
        os.chdir("/")
        _spawning(False)


def _which(program: str, path: str) -> str:
    if "/" in program:
        return program
    denied: OSError | None = None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", program)
        try:
            info = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = PermissionError(13, "Permission denied", candidate)
    if denied is not None:
        raise denied
    raise FileNotFoundError(2, "command not found", program)
