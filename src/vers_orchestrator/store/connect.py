"""Open the database the settings name: PostgreSQL for a URL that says so, else SQLite."""

from __future__ import annotations

from vers_orchestrator.settings import Settings
from vers_orchestrator.store.database import Database
from vers_orchestrator.store.postgres import PostgresDatabase
from vers_orchestrator.store.sqlite import SqliteDatabase


async def open_database(settings: Settings) -> Database:
    if settings.uses_postgres:
        return await PostgresDatabase.connect(
            settings.effective_database_url, settings.postgres_pool_size
        )
    path = settings.sqlite_path
    if path is None:
        raise ValueError(f"unsupported database URL: {settings.effective_database_url}")
    return SqliteDatabase(path)
