"""What `serve` says at start-up: one line and exit 2 for what the machine lacks, and the
accelerator, image and URLs it uses when it starts."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import VERS_ORCHESTRATOR, Backend, Server
from vers_orchestrator.drivers.qemu.accelerator import kvm_problem


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`serve` on a SQLite backend of its own, with `env` on top of the backend's."""
    backend = Backend.create("sqlite", tmp_path / "backend")
    try:
        return subprocess.run(
            [VERS_ORCHESTRATOR, "serve", "--host", "127.0.0.1", *args],
            env={**backend.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        backend.drop()


def _assert_one_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert "Traceback" not in result.stderr
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == f"vers-orchestrator: error: {line}"


class TestStartupErrors:
    def test_port_in_use(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = _serve(tmp_path, "--port", str(port))
        _assert_one_line(
            result,
            f"port {port} on 127.0.0.1 is in use (--port, or PORT= with make run, chooses another)",
        )

    def test_data_directory_that_is_a_file(self, tmp_path: Path) -> None:
        # Mode bits stop no one running as root; a file where the directory should be does.
        data_dir = tmp_path / "data"
        data_dir.write_text("")
        result = _serve(tmp_path, "--port", "0", VERS_ORCHESTRATOR_DATA_DIR=str(data_dir))
        _assert_one_line(result, f"data directory {data_dir} is not a directory")

    def test_data_directory_below_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("")
        data_dir = tmp_path / "file" / "data"
        result = _serve(tmp_path, "--port", "0", VERS_ORCHESTRATOR_DATA_DIR=str(data_dir))
        _assert_one_line(result, f"data directory {data_dir} is not usable: Not a directory")

    def test_database_that_does_not_connect(self, tmp_path: Path) -> None:
        result = _serve(
            tmp_path,
            "--port",
            "0",
            VERS_ORCHESTRATOR_DATABASE_URL="postgresql://nobody:secret@127.0.0.1:1/x",
        )
        _assert_one_line(
            result,
            "cannot use the database postgresql://nobody:***@127.0.0.1:1/x:"
            " Connect call failed ('127.0.0.1', 1)",
        )

    def test_database_url_of_an_unknown_kind(self, tmp_path: Path) -> None:
        result = _serve(tmp_path, "--port", "0", VERS_ORCHESTRATOR_DATABASE_URL="mysql://db/x")
        _assert_one_line(
            result, "unsupported database URL mysql://db/x: use postgresql://… or sqlite:///…"
        )

    def test_missing_qemu(self, tmp_path: Path) -> None:
        # Raised in the app's start-up (the driver is made there), through uvicorn.
        result = _serve(tmp_path, "--port", "0", PATH=str(Path(sys.executable).parent))
        _assert_one_line(
            result,
            "QEMU is not installed (qemu-system-x86_64, qemu-img not found on PATH):"
            " install the Debian packages qemu-system-x86 qemu-utils (`make install` does)",
        )

    def test_kvm_asked_for_where_it_cannot_run(self, tmp_path: Path) -> None:
        problem = kvm_problem()
        if problem is None:
            pytest.skip("KVM works here: nothing to refuse")
        result = _serve(tmp_path, "--port", "0", VERS_ORCHESTRATOR_VM_ACCELERATOR="kvm")
        _assert_one_line(result, f"KVM was asked for but cannot be used: {problem}")


def test_start_up_log_names_accelerator_image_and_urls(
    fresh_backend: Backend, tmp_path: Path
) -> None:
    server = Server(fresh_backend, tmp_path / "server.log").start()
    server.stop()
    log = server.log_text()
    problem = kvm_problem()
    accelerator = "kvm (/dev/kvm works)" if problem is None else f"tcg ({problem})"
    assert f" accelerator: {accelerator}\n" in log
    assert re.search(r" image: \S+/default-\d{8}T\d{6}Z \(kernel \S+\)\n", log), log
    base = server.base_url
    assert f" listening on {base} (API docs at {base}/docs)\n" in log
    assert "Traceback" not in log
