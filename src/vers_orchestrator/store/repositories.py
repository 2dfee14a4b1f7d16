"""Repositories: named groups of tagged commits, unique by name within an organization."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator.store.database import Tx


@dataclass(frozen=True, slots=True)
class Repository:
    repo_id: str
    org_id: str
    name: str
    description: str | None
    is_public: bool
    owner_id: str
    created_at: datetime


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
