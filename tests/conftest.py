from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    POSTGRES_URL_VARIABLE,
    RUNTIME_DIRS,
    Backend,
    Key,
    Server,
    make_key,
    qemu_processes,
)


def _backends() -> list[object]:
    postgres = pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not os.environ.get(POSTGRES_URL_VARIABLE) and not os.environ.get("CI"),
            reason=f"{POSTGRES_URL_VARIABLE} is not set (make test sets it)",
        ),
    )
    return ["sqlite", postgres]


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_servers() -> Iterator[None]:
    yield
    for server in Server.started:
        server.stop()
    for runtime_dir in RUNTIME_DIRS:
        # VMs outlive their server by design; a test that failed before deleting its VMs
        # must not leave them running on the machine.
        for pid in qemu_processes(runtime_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(runtime_dir, ignore_errors=True)


@pytest.fixture(scope="session", params=_backends())
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """The shared database of this session's server, once per backend."""
    created = Backend.create(request.param, tmp_path_factory.mktemp(request.param))
    yield created
    created.drop()


@pytest.fixture(scope="session")
def server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(backend, tmp_path_factory.mktemp("server") / "server.log").start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def key(backend: Backend) -> Key:
    """A key of an organization shared by tests that only touch names they made up."""
    return make_key(backend)


@pytest.fixture
def fresh_backend(backend: Backend, tmp_path: Path) -> Iterator[Backend]:
    """A database of the same kind as `backend`, for tests that restart or break servers."""
    created = Backend.create(backend.kind, tmp_path / "backend")
    yield created
    created.drop()
