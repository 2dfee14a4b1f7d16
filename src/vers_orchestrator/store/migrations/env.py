"""Alembic environment: run by `store.migrate.upgrade`, never by a module-level config."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from vers_orchestrator.store.schema import metadata

# Any fixed number: replicas started together take turns to migrate.
_MIGRATION_LOCK = 0x7665_7273


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_postgres(url: str) -> None:
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    async with engine.connect() as connection:
        await connection.execute(sa.text(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})"))
        await connection.commit()
        try:
            await connection.run_sync(_migrate)
        finally:
            await connection.execute(sa.text(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})"))
            await connection.commit()
    await engine.dispose()


def _run() -> None:
    url: str = context.config.attributes["url"]
    if url.startswith("postgresql+asyncpg://"):
        asyncio.run(_migrate_postgres(url))
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        _migrate(connection)
    engine.dispose()


_run()
