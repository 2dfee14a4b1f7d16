"""`--version`, and `--help`: every command listed, every option's default shown."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support import VERS_ORCHESTRATOR
from vers_orchestrator import __version__
from vers_orchestrator.cli import command_names

COMMANDS = [
    "serve",
    "keys create",
    "keys list",
    "keys revoke",
    "db upgrade",
    "images build-default",
    "images build",
    "vms stop-all",
    "deploy",
]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VERS_ORCHESTRATOR, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_version_prints_the_package_version() -> None:
    result = _run("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"vers-orchestrator {__version__}\n",
        "",
    )


def test_help_lists_every_command() -> None:
    result = _run("--help")
    assert result.returncode == 0
    listed = result.stdout.split("\ncommands:\n", 1)[1]
    names = [re.split(r"\s{2,}", line.strip())[0] for line in listed.splitlines()]
    assert names == command_names() == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command_shows_every_default(command: str) -> None:
    result = _run(*command.split(), "--help")
    assert result.returncode == 0
    options = [
        line.strip()
        for line in re.split(r"\n(?=  -)", result.stdout.split("\noptions:\n", 1)[1])
        if not line.strip().startswith("-h, --help")
    ]
    for option in options:
        assert re.search(r"\((default: .+|required)\)$", " ".join(option.split())), option


def test_serve_help_shows_host_and_port_defaults() -> None:
    help_text = " ".join(_run("serve", "--help").stdout.split())
    assert "--host HOST address to listen on (default: 127.0.0.1)" in help_text
    assert "--port PORT port to listen on; 0 picks one (default: 8080)" in help_text
