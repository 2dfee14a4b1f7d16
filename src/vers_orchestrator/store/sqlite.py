"""SQLite in WAL mode with `synchronous=FULL`, and group commit.

A 201 must mean the row survives a power cut, so every commit is fsynced. One fsync per
request would halve throughput (`stack-measurements.md`), so writes are batched: one
writer task opens a transaction, runs every queued unit inside its own SAVEPOINT (a unit
that fails rolls back alone), then commits the whole batch with one fsync and only then
answers each unit. Requests that arrive during that fsync form the next batch.

Statements run on the event-loop thread: they touch only the page cache and take
microseconds, cheaper than a thread hop each. Only COMMIT, which waits for the disk,
goes to a thread. Reads use a second connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vers_orchestrator.store.database import ForeignKeyViolation, Row, T, UniqueViolation, Unit

_PLACEHOLDER = re.compile(r"\$(\d+)")
_translated: dict[str, str] = {}
_BUSY_TIMEOUT_MS = 5000


def _translate(sql: str) -> str:
    """`$1` (PostgreSQL) to `?1` (SQLite's numbered form); cached per statement text."""
    cached = _translated.get(sql)
    if cached is None:
        cached = _translated[sql] = _PLACEHOLDER.sub(r"?\1", sql)
    return cached


def _timestamp_text(value: Any) -> Any:
    # Timestamps are stored as fixed-width UTC text so that they sort as they compare.
    if type(value) is datetime:
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _adapt(args: tuple[Any, ...]) -> tuple[Any, ...]:
    if datetime in map(type, args):
        return tuple(map(_timestamp_text, args))
    return args


def connect(path: Path, busy_timeout_ms: int = _BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=256
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Switching to WAL above may wait for another process's lock; from here on, the
    # connection waits as its caller asked.
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    return conn


class SqliteTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _run(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._conn.execute(_translate(sql), _adapt(args))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE constraint failed" in str(exc):
                raise UniqueViolation(str(exc)) from exc
            if "FOREIGN KEY constraint failed" in str(exc):
                raise ForeignKeyViolation(str(exc)) from exc
            raise

    async def fetch_one(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = self._run(sql, args).fetchone()
        return row

    async def fetch_all(self, sql: str, *args: Any) -> Sequence[Row]:
        rows: Sequence[Row] = self._run(sql, args).fetchall()
        return rows

    async def fetch_value(self, sql: str, *args: Any) -> Any:
        row = self._run(sql, args).fetchone()
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> int:
        return self._run(sql, args).rowcount


class SqliteDatabase:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer never waits for a lock on the event loop: see `_begin`.
        self._writer = connect(path, busy_timeout_ms=0)
        self._reader = connect(path)
        self._write_tx = SqliteTx(self._writer)
        self._read_tx = SqliteTx(self._reader)
        self._pending: list[tuple[Unit[Any], asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-commit")
        self._writer_task = asyncio.get_running_loop().create_task(self._write_batches())

    async def read(self, unit: Unit[T]) -> T:
        return await unit(self._read_tx)

    async def write(self, unit: Unit[T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((unit, future))
        self._wakeup.set()
        return await future

    async def _write_batches(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._commit_batch(batch)
            elif self._closing:
                return

    async def _commit_batch(self, batch: list[tuple[Unit[Any], asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._begin()
            outcomes = [await self._run_in_savepoint(unit) for unit, _ in batch]
            await loop.run_in_executor(self._disk, self._writer.execute, "COMMIT")
        except Exception as exc:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():  # the caller went away; its unit is committed all the same
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE on the loop when the write lock is free, as it is unless another
        process (the CLI) writes; else wait for the lock in the commit thread. A thread hop
        per batch costs more than the BEGIN itself."""
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            await asyncio.get_running_loop().run_in_executor(self._disk, self._begin_waiting)

    def _begin_waiting(self) -> None:
        self._writer.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        finally:
            self._writer.execute("PRAGMA busy_timeout = 0")

    async def _run_in_savepoint(self, unit: Unit[Any]) -> tuple[bool, Any]:
        self._writer.execute("SAVEPOINT unit")
        try:
            value = await unit(self._write_tx)
        except Exception as exc:
            self._writer.execute("ROLLBACK TO unit")
            self._writer.execute("RELEASE unit")
            return False, exc
        self._writer.execute("RELEASE unit")
        return True, value

    async def close(self) -> None:
        # Queued writes are committed and answered before the connections go away.
        self._closing = True
        self._wakeup.set()
        await self._writer_task
        self._disk.shutdown(wait=True)
        self._writer.close()
        self._reader.close()
