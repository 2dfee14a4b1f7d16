"""The floor: the same durable work as `POST /api/v1/repositories`, with no framework.

A bare ASGI callable: check a bearer key (one SHA-256 against a key held in memory),
decode and validate the JSON body, INSERT under UNIQUE(org_id, name), answer 201 JSON.
On SQLite it commits in WAL mode with synchronous=FULL through the same kind of group
commit as the real store; on PostgreSQL it inserts through an asyncpg pool. Whatever
the real endpoint costs beyond this is the framework's and our own cross-cutting work.

Run: FLOOR_DATABASE_URL=sqlite:////tmp/floor.db FLOOR_API_KEY=<100 chars> \
     uvicorn --loop uvloop --http httptools bench.floor_app:app
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
DDL = (
    "CREATE TABLE IF NOT EXISTS floor_repositories (repo_id TEXT PRIMARY KEY, org_id TEXT"
    " NOT NULL, name TEXT NOT NULL, description TEXT, created_at TEXT NOT NULL,"
    " UNIQUE (org_id, name))"
)
INSERT = (
    "INSERT INTO floor_repositories (repo_id, org_id, name, description, created_at)"
    " VALUES ($1, $2, $3, $4, $5)"
)


class Conflict(Exception):
    pass


class SqliteGroupCommit:
    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute(DDL)
        self.sql = INSERT.replace("$", "?")
        self.pending: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self.wakeup = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def insert(self, *args: Any) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((args, future))
        self.wakeup.set()
        await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            self.conn.execute("BEGIN IMMEDIATE")
            results: list[BaseException | None] = []
            for args, _ in batch:
                self.conn.execute("SAVEPOINT s")
                try:
                    self.conn.execute(self.sql, args)
                    results.append(None)
                except sqlite3.IntegrityError:
                    self.conn.execute("ROLLBACK TO s")
                    results.append(Conflict())
                self.conn.execute("RELEASE s")
            await loop.run_in_executor(None, self.conn.execute, "COMMIT")
            for (_, future), result in zip(batch, results, strict=True):
                if result is None:
                    future.set_result(None)
                else:
                    future.set_exception(result)


class Postgres:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def insert(self, *args: Any) -> None:
        try:
            await self.pool.execute(INSERT, *args)
        except asyncpg.UniqueViolationError:
            raise Conflict() from None


store: Any = None
KEY = os.environ.get("FLOOR_API_KEY", "")
KEY_ID, SECRET_HASH = KEY[:36], hashlib.sha256(KEY[36:].encode()).hexdigest()
ORG_ID = str(uuid.uuid4())


async def respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Any, receive: Any, send: Any) -> None:
    global store
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                url = os.environ["FLOOR_DATABASE_URL"]
                if url.startswith("postgresql://"):
                    pool = await asyncpg.create_pool(url, min_size=4, max_size=16)
                    await pool.execute(DDL)
                    store = Postgres(pool)
                else:
                    store = SqliteGroupCommit(url.removeprefix("sqlite:///"))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    authorization = b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
    token = authorization.decode().removeprefix("Bearer ")
    if token[:36] != KEY_ID or not hmac.compare_digest(
        hashlib.sha256(token[36:].encode()).hexdigest(), SECRET_HASH
    ):
        await respond(send, 401, b'{"success":false,"error":"Invalid bearer token"}')
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    data = json.loads(body)
    name = data["name"]
    if not NAME.fullmatch(name):
        await respond(send, 400, b'{"success":false,"error":"invalid repository name"}')
        return
    repo_id = str(uuid.uuid4())
    try:
        await store.insert(
            repo_id, ORG_ID, name, data.get("description"), datetime.now(UTC).isoformat()
        )
    except Conflict:
        await respond(send, 409, b'{"success":false,"error":"repository already exists"}')
        return
    await respond(send, 201, json.dumps({"repo_id": repo_id, "name": name}).encode())
