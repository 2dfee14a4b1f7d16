"""Real servers, real databases and real clients for the tests: no mocks anywhere.

`Server` runs `vers-orchestrator serve` as a subprocess on a free port; `Backend` gives
each one a database of its own (a SQLite file, or a fresh PostgreSQL database). Factories
are plain functions (`make_key`, `unique_name`) so each test shows the data it uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import asyncpg
import httpx
from vers_sdk import VersSdkClient

T = TypeVar("T")

VERS_ORCHESTRATOR = str(Path(sys.executable).parent / "vers-orchestrator")
POSTGRES_URL_VARIABLE = "VERS_ORCHESTRATOR_TEST_POSTGRES_URL"
REPO = Path(__file__).resolve().parents[1]
# The default image, built once per machine and shared by every test (see tests/drivers).
IMAGES_DIR = REPO / "build" / "images"
# Every backend's VM runtime folder, removed again at the end of the session.
RUNTIME_DIRS: list[str] = []
SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (a server given it may race another process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def unique_name(prefix: str = "repo") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Backend:
    """One database for one server (or several servers sharing it, like replicas)."""

    kind: str  # "sqlite" or "postgresql"
    env: dict[str, str]
    _drop: Callable[[], None] | None = None

    @classmethod
    def create(cls, kind: str, directory: Path, **settings: str) -> Backend:
        """`settings` are more `VERS_ORCHESTRATOR_*` variables, e.g. `MAX_VMS="0"`."""
        directory.mkdir(parents=True, exist_ok=True)
        # VM RAM and sockets: private to this backend's servers, short for unix sockets.
        runtime_dir = f"/dev/shm/vo-test-{uuid.uuid4().hex[:8]}"
        RUNTIME_DIRS.append(runtime_dir)
        env = {
            **os.environ,
            "VERS_ORCHESTRATOR_DATA_DIR": str(directory / "data"),
            "VERS_ORCHESTRATOR_LOG_LEVEL": "INFO",
            "VERS_ORCHESTRATOR_IMAGES_DIR": str(IMAGES_DIR),
            "VERS_ORCHESTRATOR_VM_RUNTIME_DIR": runtime_dir,
            **{f"VERS_ORCHESTRATOR_{name}": value for name, value in settings.items()},
        }
        env.pop("VERS_ORCHESTRATOR_DATABASE_URL", None)
        if kind == "sqlite":
            return cls(kind, env, lambda: shutil.rmtree(runtime_dir, ignore_errors=True))
        admin_url = os.environ[POSTGRES_URL_VARIABLE]
        database = f"vers_test_{uuid.uuid4().hex[:16]}"
        _postgres_admin(admin_url, f'CREATE DATABASE "{database}"')
        env["VERS_ORCHESTRATOR_DATABASE_URL"] = admin_url.rsplit("/", 1)[0] + "/" + database

        def drop() -> None:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            _drop_postgres_database(admin_url, database)

        return cls(kind, env, drop)

    def drop(self) -> None:
        if self._drop is not None:
            self._drop()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [VERS_ORCHESTRATOR, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} failed ({result.returncode}): {result.stderr}")
        return result


def _drop_postgres_database(admin_url: str, database: str) -> None:
    # FORCE ends our own leftover sessions, but not an autovacuum worker that PostgreSQL
    # may have started in the database (the test role may not signal it): such a worker
    # is gone a moment later, so try again.
    for attempt in range(20):
        try:
            _postgres_admin(admin_url, f'DROP DATABASE "{database}" WITH (FORCE)')
            return
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            if attempt == 19:
                raise
            time.sleep(0.25)


def _postgres_admin(url: str, statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


class Server:
    """`vers-orchestrator serve` in a subprocess, with its log in a file."""

    # Every server a test started, so that the session can stop any a failing test left.
    started: ClassVar[list[Server]] = []

    def __init__(self, backend: Backend, log_path: Path) -> None:
        self.backend = backend
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self, timeout: float = 60) -> Server:
        log = self.log_path.open("ab")
        offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [VERS_ORCHESTRATOR, "serve", "--host", "127.0.0.1", "--port", "0"],
            env=self.backend.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        Server.started.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", self.log_path.read_text()[offset:])
            if found:
                self.base_url = found.group(1)
                break
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log_text()}")
            time.sleep(0.05)
        else:
            raise AssertionError(f"server did not start:\n{self.log_text()}")
        # Startup (lifespan) completes before the first request is answered.
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            client.get("/openapi.json").raise_for_status()
        return self

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, token: str | None = None, **headers: str) -> httpx.Client:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


@dataclass(frozen=True)
class Key:
    token: str
    api_key_id: str
    org_id: str
    org_name: str
    user_id: str


def make_key(backend: Backend, org: str | None = None, user: str | None = None) -> Key:
    """A new API key through the real CLI; a new organization unless `org` is given."""
    created = json.loads(
        backend.cli(
            "keys",
            "create",
            "--org",
            org or unique_name("org"),
            "--user",
            user or unique_name("user"),
            "--format",
            "json",
        ).stdout
    )
    return Key(
        token=created["api_key"],
        api_key_id=created["api_key_id"],
        org_id=created["org_id"],
        org_name=created["org_name"],
        user_id=created["user_id"],
    )


def sdk_call(
    server: Server,
    token: str | None,
    call: Callable[[VersSdkClient], Awaitable[T]],
    **client_options: Any,
) -> T:
    """Run one call of the official async SDK, unchanged, against `server`."""

    async def run() -> T:
        async with VersSdkClient(
            base_url=server.base_url, api_key=token, **client_options
        ) as client:
            return await call(client)

    return asyncio.run(run())


def live_processes(marker: str, program: str = "") -> list[int]:
    """Live (not zombie) processes whose command line mentions `marker` (and `program`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if program.encode() in cmdline and marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def qemu_processes(marker: str) -> list[int]:
    """Live QEMU processes whose command line mentions `marker`."""
    return live_processes(marker, "qemu-system")


def shut_down(server: Server, backend: Backend, token: str) -> list[int]:
    """End a module that made VMs: delete every VM of the key's organization, stop the
    server, kill any QEMU that outlived it, drop the database. Returns the pids of those
    QEMU processes, which the caller asserts there were none of."""
    runtime_dir = backend.env["VERS_ORCHESTRATOR_VM_RUNTIME_DIR"]
    try:
        with server.client(token) as client:
            client.timeout = httpx.Timeout(240.0)
            for vm in client.get("/api/v1/vm").json():
                client.delete(f"/api/v1/vm/{vm['vm_id']}")
    finally:
        server.stop()
        leftovers = qemu_processes(runtime_dir)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        backend.drop()
    return leftovers


def error(message: str) -> dict[str, Any]:
    return {"success": False, "error": message}


async def creates_racing_deletes(
    server: Server,
    key: Key,
    rounds: list[tuple[str, Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]]],
    creates_per_round: int = 40,
) -> list[httpx.Response]:
    """Per round `(delete_path, create)`: `creates_per_round` calls of `create` at once,
    with a DELETE of `delete_path` sent among them halfway through (it must answer 204).
    Returns the creates' answers, all rounds together."""
    headers = {"Authorization": f"Bearer {key.token}"}
    limits = httpx.Limits(max_connections=creates_per_round + 1)
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=headers, timeout=30, limits=limits
    ) as client:
        answers: list[httpx.Response] = []
        for delete_path, create in rounds:
            creates = [create(client) for _ in range(creates_per_round)]
            half = creates_per_round // 2
            responses = await asyncio.gather(
                *creates[:half], client.delete(delete_path), *creates[half:]
            )
            assert responses.pop(half).status_code == 204
            answers += responses
    return answers
