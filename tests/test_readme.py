"""The README's snippets, run as written, in order, against a real server on a machine that
has never built the guest image; and its command list, against the CLI's.

The snippets are read from README.md, so they cannot drift from what the test runs. The
only change made to them is the server's address (the test's server listens on a free
port, not 8080). A block preceded by `<!-- readme-test: skip (why) -->` is not run; one
preceded by `<!-- readme-test: after-stop -->` runs after the server has stopped.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO, VERS_ORCHESTRATOR, Backend, Server, free_port, qemu_processes
from vers_orchestrator.cli import command_names

pytestmark = pytest.mark.slow

README = REPO / "README.md"
BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<mark>[a-z-]+)[^>]*-->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
    re.DOTALL,
)
README_ADDRESS = "http://127.0.0.1:8080"
# The edge's port as `make run` sets it; the test's server has its own.
README_EDGE_PORT = ":8081/"


@dataclass(frozen=True)
class Snippet:
    lang: str
    body: str
    mark: str | None


def snippets() -> list[Snippet]:
    return [
        Snippet(found["lang"], found["body"], found["mark"])
        for found in BLOCK.finditer(README.read_text())
    ]


def test_the_command_list_is_the_clis() -> None:
    text = README.read_text()
    section = text[text.index("## Commands") :]
    listed = next(s for s in snippets() if s.lang == "" and s.body in section)
    names = []
    for line in listed.body.splitlines():
        words = line.split("#")[0].split()[1:]  # after "vers-orchestrator"
        names.append(" ".join(w for w in words[:2] if re.fullmatch(r"[a-z][a-z-]*", w)))
    assert names == command_names()


@pytest.fixture
def first_machine(tmp_path: Path) -> Iterator[tuple[Backend, Server, Path]]:
    """A server whose images folder is empty, as on a machine that never built the image,
    and a working folder like the repository root (`.venv`, `README.md`)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (workdir / "README.md").write_bytes(README.read_bytes())
    backend = Backend.create(
        "sqlite",
        tmp_path / "backend",
        IMAGES_DIR=str(tmp_path / "images"),
        EDGE_PORT=str(free_port()),
    )
    server = Server(backend, tmp_path / "server.log")
    try:
        yield backend, server, workdir
    finally:
        server.stop()
        for pid in qemu_processes(backend.env["VERS_ORCHESTRATOR_VM_RUNTIME_DIR"]):
            os.kill(pid, 9)
        backend.drop()


def run_snippets(chosen: list[Snippet], base_url: str, env: dict[str, str], workdir: Path) -> str:
    """Every snippet in one shell, so that what one exports the next sees; Python ones
    run as files with the project's interpreter (the README says `pip install vers-sdk`)."""
    script = ["set -euo pipefail"]
    for number, snippet in enumerate(chosen):
        edge_port = env["VERS_ORCHESTRATOR_EDGE_PORT"]
        body = snippet.body.replace(README_ADDRESS, base_url).replace(
            README_EDGE_PORT, f":{edge_port}/"
        )
        if snippet.lang == "python":
            path = workdir / f"snippet_{number}.py"
            path.write_text(body)
            script.append(f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}")
        else:
            assert snippet.lang == "sh", snippet
            script.append(body)
        script.append(f"echo '--- snippet {number} done'")
    finished = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    return output


def test_the_snippets_run_as_written_on_a_first_machine(
    first_machine: tuple[Backend, Server, Path],
) -> None:
    backend, server, workdir = first_machine
    runnable = [s for s in snippets() if s.lang in ("sh", "python") and s.mark != "skip"]
    during = [s for s in runnable if s.mark != "after-stop"]
    after = [s for s in runnable if s.mark == "after-stop"]
    assert during
    assert after
    # `serve` starts building the missing image in the background at once; `make run`'s
    # own build step then waits for that build rather than making a second one.
    server.start()
    built = subprocess.run(
        [VERS_ORCHESTRATOR, "images", "build-default", "--if-missing"],
        env=backend.env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    log = server.log_text()
    assert "building the default guest image in the background" in log
    assert "default image ready" in log

    output = run_snippets(during, server.base_url, backend.env, workdir)
    assert output.count("--- snippet") == len(during)
    assert '"success":false' not in output.replace(" ", "")
    assert "Traceback" not in output
    assert "same bytes" in output  # the raw upload came back byte for byte
    assert "hello from my image" in output  # a VM from an uploaded image
    assert "{'vms': [{'vm_id':" in output  # the branch by reference
    # The VM's web server through the edge, by port and by custom domain.
    assert output.count("Directory listing for /") == 2

    server.stop()
    run_snippets(after, server.base_url, backend.env, workdir)
    assert qemu_processes(backend.env["VERS_ORCHESTRATOR_VM_RUNTIME_DIR"]) == []
