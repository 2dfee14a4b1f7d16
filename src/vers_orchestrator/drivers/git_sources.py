"""Git repositories that deploy clones (git, run on the host, never through a shell).

The repository, branch and token reach git as separate arguments and environment values:
none is ever part of a command line a shell reads. A token is sent as an HTTP
`Authorization` header set through git's environment (`GIT_CONFIG_*`), so it appears in no
URL, no process list and no error message. Blocking: call from a thread.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from vers_orchestrator.drivers import tools

LS_REMOTE_TIMEOUT_SECONDS = 60
CLONE_TIMEOUT_SECONDS = 900
# What git says when a repository is missing or hidden from us (GitHub answers 404 to both,
# and asks for credentials it will never accept).
_MISSING = re.compile(
    r"not found|does not exist|could not read username|authentication failed|"
    r"terminal prompts disabled|returned error: 40[134]",
    re.IGNORECASE,
)


class RepositoryMissing(tools.ToolError):
    """The git host has no such repository, or not for these credentials."""


class GitHostUnreachable(tools.ToolError):
    """The git host did not answer as a git server does; the message says why."""


def _environment(token: str | None) -> dict[str, str]:
    environment = {
        # Never wait for a password on a terminal there is none of.
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        # Only the configured host's own transport: no `ext::` or `file://` tricks.
        "GIT_ALLOW_PROTOCOL": "http:https",
    }
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        environment.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            }
        )
    return environment


def _run(command: list[str], doing: str, token: str | None, timeout: float) -> tools.Finished:
    try:
        return tools.run(command, doing, timeout=timeout, env=_environment(token))
    except tools.ToolError as exc:
        if _MISSING.search(str(exc)):
            raise RepositoryMissing(str(exc)) from None
        raise GitHostUnreachable(str(exc)) from None


def branches(url: str, token: str | None) -> set[str]:
    """The branch names of the repository at `url`. Raises RepositoryMissing,
    GitHostUnreachable."""
    listed = _run(
        ["git", "ls-remote", "--heads", "--", url],
        "listing the repository's branches",
        token,
        LS_REMOTE_TIMEOUT_SECONDS,
    )
    names = set()
    for line in listed.stdout.splitlines():
        _, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/"):
            names.add(ref.removeprefix("refs/heads/"))
    return names


def clone(url: str, branch: str | None, token: str | None, destination: Path) -> None:
    """A shallow clone of `branch` (else the default branch) into `destination`, which
    must not exist. Raises RepositoryMissing, GitHostUnreachable, ToolError."""
    command = ["git", "clone", "--quiet", "--depth", "1", "--single-branch"]
    if branch is not None:
        command += ["--branch", branch]
    _run([*command, "--", url, str(destination)], "clone", token, CLONE_TIMEOUT_SECONDS)
