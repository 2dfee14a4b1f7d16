"""Repositories: named groups of tagged commits, unique by name within an organization."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator.store.database import Row, Tx, as_datetime, as_id


@dataclass(frozen=True, slots=True)
class Repository:
    repo_id: str
    org_id: str
    name: str
    description: str | None
    is_public: bool
    owner_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PublicRepository:
    repo_id: str
    org_name: str
    name: str
    description: str | None
    created_at: datetime


_COLUMNS = (
    "SELECT repo_id, org_id, name, description, is_public, owner_id, created_at FROM repositories"
)


def _repository(row: Row) -> Repository:
    return Repository(
        repo_id=as_id(row["repo_id"]),
        org_id=as_id(row["org_id"]),
        name=row["name"],
        description=row["description"],
        is_public=bool(row["is_public"]),
        owner_id=as_id(row["owner_id"]),
        created_at=as_datetime(row["created_at"]),
    )


def _public_repository(row: Row) -> PublicRepository:
    return PublicRepository(
        repo_id=as_id(row["repo_id"]),
        org_name=row["org_name"],
        name=row["name"],
        description=row["description"],
        created_at=as_datetime(row["created_at"]),
    )


async def insert(tx: Tx, repository: Repository) -> None:
    """Raises `UniqueViolation` when the organization already has a repository of that name."""
    await tx.execute(
        "INSERT INTO repositories"
        " (repo_id, org_id, name, description, is_public, owner_id, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        repository.repo_id,
        repository.org_id,
        repository.name,
        repository.description,
        repository.is_public,
        repository.owner_id,
        repository.created_at,
    )


async def list_by_org(tx: Tx, org_id: str) -> list[Repository]:
    rows = await tx.fetch_all(_COLUMNS + " WHERE org_id = $1 ORDER BY name", org_id)
    return [_repository(row) for row in rows]


async def get_by_name(tx: Tx, org_id: str, name: str) -> Repository | None:
    row = await tx.fetch_one(_COLUMNS + " WHERE org_id = $1 AND name = $2", org_id, name)
    return None if row is None else _repository(row)


async def delete_by_name(tx: Tx, org_id: str, name: str) -> bool:
    """Delete a repository and, by the foreign key's cascade, its tags; False if absent."""
    deleted = await tx.execute(
        "DELETE FROM repositories WHERE org_id = $1 AND name = $2", org_id, name
    )
    return deleted == 1


async def set_public(tx: Tx, org_id: str, name: str, is_public: bool) -> bool:
    """False when the organization has no repository of that name."""
    changed = await tx.execute(
        "UPDATE repositories SET is_public = $3 WHERE org_id = $1 AND name = $2",
        org_id,
        name,
        is_public,
    )
    return changed == 1


_PUBLIC_COLUMNS = (
    "SELECT r.repo_id, o.name AS org_name, r.name, r.description, r.created_at"
    " FROM repositories r JOIN organizations o ON o.org_id = r.org_id"
)


async def list_public(tx: Tx) -> list[PublicRepository]:
    # Equal repository names of several organizations are ordered by organization name.
    rows = await tx.fetch_all(_PUBLIC_COLUMNS + " WHERE r.is_public ORDER BY r.name, o.name")
    return [_public_repository(row) for row in rows]


async def get_public(tx: Tx, org_name: str, name: str) -> PublicRepository | None:
    row = await tx.fetch_one(
        _PUBLIC_COLUMNS + " WHERE lower(o.name) = lower($1) AND r.name = $2 AND r.is_public",
        org_name,
        name,
    )
    return None if row is None else _public_repository(row)
