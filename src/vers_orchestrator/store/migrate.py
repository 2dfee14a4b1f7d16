"""Bring a database to the newest schema with Alembic, on SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from vers_orchestrator.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(settings: Settings) -> str:
    url = settings.effective_database_url
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme) :]
    return url


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not an option: ini interpolation would mangle '%' in passwords.
    config.attributes["url"] = sqlalchemy_url(settings)
    return config


def upgrade(settings: Settings) -> None:
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), "head")
