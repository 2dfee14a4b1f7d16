"""Organizations, users and API keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator.store.database import Row, Tx, as_datetime, as_id, as_optional_datetime


@dataclass(frozen=True, slots=True)
class Organization:
    org_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    org_id: str
    user_name: str
    email: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    api_key_id: str
    org_id: str
    org_name: str
    user_id: str
    user_name: str
    email: str | None
    label: str | None
    secret_hash: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    max_vcpus: int | None
    max_memory_mib: int | None
    max_disk_mib: int | None


def _organization(row: Row) -> Organization:
    return Organization(as_id(row["org_id"]), row["name"], as_datetime(row["created_at"]))


def _user(row: Row) -> User:
    return User(
        as_id(row["user_id"]),
        as_id(row["org_id"]),
        row["user_name"],
        row["email"],
        as_datetime(row["created_at"]),
    )


def _api_key(row: Row) -> ApiKey:
    return ApiKey(
        api_key_id=as_id(row["api_key_id"]),
        org_id=as_id(row["org_id"]),
        org_name=row["org_name"],
        user_id=as_id(row["user_id"]),
        user_name=row["user_name"],
        email=row["email"],
        label=row["label"],
        secret_hash=row["secret_hash"],
        created_at=as_datetime(row["created_at"]),
        expires_at=as_optional_datetime(row["expires_at"]),
        revoked_at=as_optional_datetime(row["revoked_at"]),
        max_vcpus=row["max_vcpus"],
        max_memory_mib=row["max_memory_mib"],
        max_disk_mib=row["max_disk_mib"],
    )


async def get_organization_by_name(tx: Tx, name: str) -> Organization | None:
    row = await tx.fetch_one(
        "SELECT org_id, name, created_at FROM organizations WHERE lower(name) = lower($1)", name
    )
    return None if row is None else _organization(row)


async def insert_organization(tx: Tx, org_id: str, name: str, now: datetime) -> Organization:
    await tx.execute(
        "INSERT INTO organizations (org_id, name, created_at) VALUES ($1, $2, $3)",
        org_id,
        name,
        now,
    )
    return Organization(org_id, name, now)


async def get_user(tx: Tx, org_id: str, user_name: str) -> User | None:
    row = await tx.fetch_one(
        "SELECT user_id, org_id, user_name, email, created_at FROM users"
        " WHERE org_id = $1 AND user_name = $2",
        org_id,
        user_name,
    )
    return None if row is None else _user(row)


async def insert_user(
    tx: Tx, user_id: str, org_id: str, user_name: str, email: str | None, now: datetime
) -> User:
    await tx.execute(
        "INSERT INTO users (user_id, org_id, user_name, email, created_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        user_id,
        org_id,
        user_name,
        email,
        now,
    )
    return User(user_id, org_id, user_name, email, now)


async def insert_api_key(
    tx: Tx,
    api_key_id: str,
    org_id: str,
    user_id: str,
    label: str | None,
    secret_hash: str,
    now: datetime,
    expires_at: datetime | None,
    max_vcpus: int | None = None,
    max_memory_mib: int | None = None,
    max_disk_mib: int | None = None,
) -> None:
    await tx.execute(
        "INSERT INTO api_keys (api_key_id, org_id, user_id, label, secret_hash, created_at,"
        " expires_at, max_vcpus, max_memory_mib, max_disk_mib)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        api_key_id,
        org_id,
        user_id,
        label,
        secret_hash,
        now,
        expires_at,
        max_vcpus,
        max_memory_mib,
        max_disk_mib,
    )


_API_KEY_COLUMNS = (
    "SELECT k.api_key_id, k.org_id, o.name AS org_name, k.user_id, u.user_name, u.email,"
    " k.label, k.secret_hash, k.created_at, k.expires_at, k.revoked_at,"
    " k.max_vcpus, k.max_memory_mib, k.max_disk_mib"
    " FROM api_keys k"
    " JOIN organizations o ON o.org_id = k.org_id"
    " JOIN users u ON u.user_id = k.user_id"
)


async def get_api_key(tx: Tx, api_key_id: str) -> ApiKey | None:
    row = await tx.fetch_one(_API_KEY_COLUMNS + " WHERE k.api_key_id = $1", api_key_id)
    return None if row is None else _api_key(row)


async def list_api_keys(tx: Tx, org_name: str | None) -> list[ApiKey]:
    rows: Sequence[Row]
    if org_name is None:
        rows = await tx.fetch_all(_API_KEY_COLUMNS + " ORDER BY o.name, k.created_at")
    else:
        rows = await tx.fetch_all(
            _API_KEY_COLUMNS + " WHERE lower(o.name) = lower($1) ORDER BY k.created_at",
            org_name,
        )
    return [_api_key(row) for row in rows]


async def revoke_api_key(tx: Tx, api_key_id: str, now: datetime) -> bool:
    """Mark a key revoked and move the key generation on, so that every server forgets
    the keys it has cached; False when no such key exists. Revoking twice keeps the first
    time."""
    changed = await tx.execute(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE api_key_id = $1",
        api_key_id,
        now,
    )
    if changed != 1:
        return False
    await tx.execute("UPDATE api_key_generation SET generation = generation + 1 WHERE id = 1")
    return True


async def get_api_key_generation(tx: Tx) -> int:
    """A number that changes whenever a key stops being valid before its expiry."""
    generation: int = await tx.fetch_value("SELECT generation FROM api_key_generation WHERE id = 1")
    return generation
