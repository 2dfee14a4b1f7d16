"""A failing database gives a generic 500: no SQL, no paths, no stack trace to the client."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg

from tests.support import Backend, Server, error, make_key, unique_name
from vers_orchestrator.settings import Settings


def break_repositories_table(backend: Backend) -> None:
    """Take the table away under the running server, as a bad migration or operator might."""
    settings = Settings.from_env(backend.env)
    if settings.sqlite_path is not None:
        with sqlite3.connect(settings.sqlite_path) as connection:
            connection.execute("DROP TABLE repositories")
        return

    async def drop() -> None:
        connection = await asyncpg.connect(settings.effective_database_url)
        try:
            await connection.execute("DROP TABLE repositories CASCADE")
        finally:
            await connection.close()

    asyncio.run(drop())


def test_database_failure_is_a_generic_500(fresh_backend: Backend, tmp_path: Path) -> None:
    key = make_key(fresh_backend)
    server = Server(fresh_backend, tmp_path / "server.log").start()
    try:
        break_repositories_table(fresh_backend)
        with server.client(key.token, **{"X-Request-Id": "req-broken-db"}) as client:
            response = client.post("/api/v1/repositories", json={"name": unique_name()})
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/json"
        assert response.json() == error("internal server error")
        log = server.log_text()
        assert "unhandled error request_id=req-broken-db POST /api/v1/repositories" in log
        assert "Traceback" in log
    finally:
        assert server.stop() == 0


def test_a_500_is_not_replayed(fresh_backend: Backend, tmp_path: Path) -> None:
    key = make_key(fresh_backend)
    server = Server(fresh_backend, tmp_path / "server.log").start()
    try:
        break_repositories_table(fresh_backend)
        headers = {"X-Idempotency-Key": "retry-after-500"}
        with server.client(key.token, **headers) as client:
            first = client.post("/api/v1/repositories", json={"name": "retried"})
            second = client.post("/api/v1/repositories", json={"name": "retried"})
        assert (first.status_code, second.status_code) == (500, 500)
        assert "idempotent-replayed" not in second.headers
    finally:
        server.stop()
