"""The database boundary: units of work over SQLite or PostgreSQL.

Every query in `store/` is written once, with PostgreSQL's `$1` placeholders, and runs
through a `Tx`. A unit of work is an async function of a `Tx`; `Database.write` runs it
in one transaction and returns only after that transaction is durable, `Database.read`
runs it against committed data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Row(Protocol):
    """A result row: `sqlite3.Row` and `asyncpg.Record` both read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


class UniqueViolation(Exception):
    """An INSERT or UPDATE broke a unique constraint; the unit's changes are undone."""


class ForeignKeyViolation(Exception):
    """A statement broke a foreign key; the unit's changes are undone.

    Units look a parent up before they write its children, so an INSERT that names a
    missing parent means another transaction deleted it in between: on PostgreSQL, where
    units run side by side (SQLite runs write units one at a time). Services answer as if
    the parent had been gone before the request came: mostly with the parent's 404.
    """


class Tx(Protocol):
    async def fetch_one(self, sql: str, *args: Any) -> Row | None: ...

    async def fetch_all(self, sql: str, *args: Any) -> Sequence[Row]: ...

    async def fetch_value(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return the number of rows it changed."""
        ...


Unit = Callable[[Tx], Awaitable[T]]


class Database(Protocol):
    async def read(self, unit: Unit[T]) -> T: ...

    async def write(self, unit: Unit[T]) -> T: ...

    async def close(self) -> None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_datetime(value: Any) -> datetime:
    """A timestamp column as an aware UTC datetime, whichever backend produced it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def as_optional_datetime(value: Any) -> datetime | None:
    return None if value is None else as_datetime(value)


def as_id(value: Any) -> str:
    """A UUID column as its lowercase hyphenated text (PostgreSQL returns `uuid.UUID`)."""
    return str(value)
