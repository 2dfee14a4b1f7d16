"""The migrations build exactly the schema `store/schema.py` describes, on each backend."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import Backend
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.migrate import sqlalchemy_url, upgrade
from vers_orchestrator.store.schema import metadata


def _differences(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    with warnings.catch_warnings():
        # Alembic cannot compare expression indexes (`lower(name)`) and says so.
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        warnings.filterwarnings("ignore", message=".*autogenerate skipping.*")
        return list(compare_metadata(context, metadata))


def _diff(backend: Backend) -> list[Any]:
    settings = Settings.from_env(backend.env)
    upgrade(settings)
    url = sqlalchemy_url(settings)
    if url.startswith("postgresql+asyncpg://"):

        async def run() -> list[Any]:
            engine = create_async_engine(url, poolclass=sa.pool.NullPool)
            try:
                async with engine.connect() as connection:
                    return await connection.run_sync(_differences)
            finally:
                await engine.dispose()

        return asyncio.run(run())
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return _differences(connection)
    finally:
        engine.dispose()


def test_migrations_produce_the_described_schema(fresh_backend: Backend) -> None:
    assert _diff(fresh_backend) == []
