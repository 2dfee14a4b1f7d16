"""A user's environment variables: one row per (user, key)."""

from __future__ import annotations

from datetime import datetime

from vers_orchestrator.store.database import Tx


async def lock_user(tx: Tx, user_id: str) -> None:
    """Hold the user's row until the transaction ends: two writes of one user's variables
    (from two of its keys) run one after the other, each seeing the other's rows. An
    update that changes nothing takes PostgreSQL's row lock; SQLite writes one at a time."""
    await tx.execute("UPDATE users SET user_name = user_name WHERE user_id = $1", user_id)


async def of_user(tx: Tx, user_id: str) -> dict[str, str]:
    """The user's variables, by key in byte order."""
    rows = await tx.fetch_all(
        "SELECT key, value FROM user_env_vars WHERE user_id = $1 ORDER BY key", user_id
    )
    return {row["key"]: row["value"] for row in rows}


async def upsert(tx: Tx, user_id: str, key: str, value: str, now: datetime) -> None:
    await tx.execute(
        "INSERT INTO user_env_vars (user_id, key, value, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $4)"
        " ON CONFLICT (user_id, key) DO UPDATE SET value = excluded.value,"
        " updated_at = excluded.updated_at",
        user_id,
        key,
        value,
        now,
    )


async def delete_all(tx: Tx, user_id: str) -> None:
    await tx.execute("DELETE FROM user_env_vars WHERE user_id = $1", user_id)


async def delete(tx: Tx, user_id: str, key: str) -> bool:
    """False when the user has no such variable."""
    deleted = await tx.execute(
        "DELETE FROM user_env_vars WHERE user_id = $1 AND key = $2", user_id, key
    )
    return deleted == 1
