"""PostgreSQL through an asyncpg pool: one transaction per unit of work.

Several API replicas may share the database, so nothing here keeps state between
requests; uniqueness and ordering come from the schema (unique indexes, `COLLATE "C"`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import asyncpg

from vers_orchestrator.store.database import ForeignKeyViolation, Row, T, UniqueViolation, Unit


@contextmanager
def _constraint_violations() -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise UniqueViolation(exc.constraint_name or str(exc)) from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise ForeignKeyViolation(exc.constraint_name or str(exc)) from exc


class PostgresTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
        self._conn = conn

    async def fetch_one(self, sql: str, *args: Any) -> Row | None:
        with _constraint_violations():
            row: Row | None = await self._conn.fetchrow(sql, *args)
        return row

    async def fetch_all(self, sql: str, *args: Any) -> Sequence[Row]:
        rows: Sequence[Row] = await self._conn.fetch(sql, *args)
        return rows

    async def fetch_value(self, sql: str, *args: Any) -> Any:
        with _constraint_violations():
            return await self._conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        with _constraint_violations():
            status: str = await self._conn.execute(sql, *args)
        # asyncpg answers with the command tag, e.g. "UPDATE 3" or "INSERT 0 1".
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0


class PostgresDatabase:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, pool_size: int) -> PostgresDatabase:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size)
        return cls(pool)

    async def read(self, unit: Unit[T]) -> T:
        async with self._pool.acquire() as conn:
            return await unit(PostgresTx(conn))

    async def write(self, unit: Unit[T]) -> T:
        async with self._pool.acquire() as conn, conn.transaction():
            return await unit(PostgresTx(conn))

    async def close(self) -> None:
        await self._pool.close()
