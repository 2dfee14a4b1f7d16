"""CPU per request of three ASGI apps doing the same durable insert, measured in one process.

No network and no uvicorn: the script calls each app directly with the same
`POST /api/v1/repositories` requests, in alternating chunks, so the machine's noise hits
all three alike. It splits the cost of the real endpoint into the framework's share and
ours (bench/README.md, "Create repository").

    .venv/bin/python -m bench.inprocess_ab [--rounds 16]     # from the repository root
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from bench import floor_app
from litestar import Litestar, post

from vers_orchestrator.app import create_app
from vers_orchestrator.schemas.repositories import (
    CreateRepositoryRequest,
    CreateRepositoryResponse,
)
from vers_orchestrator.services import keys
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.connect import open_database
from vers_orchestrator.store.database import Tx
from vers_orchestrator.store.migrate import upgrade

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
CHUNK = 512
CONCURRENCY = 64


async def start(app: Any) -> None:
    """Run the app's lifespan start-up and leave it running."""
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        started.set()

    asyncio.get_running_loop().create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, queue.get, send)
    )
    await started.wait()


async def main(rounds: int, directory: Path) -> None:
    settings = Settings(data_dir=directory / "data", log_level="INFO")
    upgrade(settings)
    db = await open_database(settings)
    created = await keys.create(db, "bench", "bench")

    @post("/api/v1/repositories", status_code=201)
    async def minimal_handler(data: CreateRepositoryRequest) -> CreateRepositoryResponse:
        repo_id = str(uuid.uuid4())

        async def insert(tx: Tx) -> int:
            return await tx.execute(
                "INSERT INTO repositories (repo_id, org_id, name, description, is_public,"
                " owner_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                repo_id,
                created.org_id,
                data.name,
                data.description,
                False,
                created.api_key_id,
                "2026-01-01 00:00:00.000000",
            )

        await db.write(insert)
        return CreateRepositoryResponse(repo_id=repo_id, name=data.name)

    os.environ["FLOOR_DATABASE_URL"] = f"sqlite:///{directory / 'floor.sqlite3'}"
    floor_app.KEY_ID = created.api_key[:36]
    floor_app.SECRET_HASH = hashlib.sha256(created.api_key[36:].encode()).hexdigest()
    # The access log is part of the work; it goes to a file, as in production.
    sys.stderr = (directory / "access.log").open("w")
    apps: dict[str, Any] = {
        "floor (bare ASGI)": floor_app.app,
        "Litestar, one handler": Litestar([minimal_handler], logging_config=None),
        "vers-orchestrator": create_app(settings),
    }
    for app in apps.values():
        await start(app)

    headers = [
        (b"host", b"bench"),
        (b"authorization", f"Bearer {created.api_key}".encode()),
        (b"content-type", b"application/json"),
    ]
    counter = 0
    statuses: dict[int, int] = {}

    async def one(app: App) -> None:
        nonlocal counter
        counter += 1
        body = b'{"name":"r-%d"}' % counter
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/api/v1/repositories",
            "raw_path": b"/api/v1/repositories", "query_string": b"", "root_path": "",
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    async def chunk(app: App) -> None:
        async def worker() -> None:
            for _ in range(CHUNK // CONCURRENCY):
                await one(app)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    gc.freeze()
    cpu = dict.fromkeys(apps, 0.0)
    for _ in range(rounds):
        for name, app in apps.items():
            started = time.process_time()
            await chunk(app)
            cpu[name] += time.process_time() - started
    print("| app | CPU µs/req |\n|---|---|")
    for name in apps:
        print(f"| {name} | {cpu[name] / (rounds * CHUNK) * 1e6:.0f} |")
    print(f"\nresponses by status: {statuses}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=16)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vers-ab-") as scratch:
        uvloop.run(main(arguments.rounds, Path(scratch)))
