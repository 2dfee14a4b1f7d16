"""Repositories: create (and, in later issues, list, get, publish, delete, fork)."""

from __future__ import annotations

import uuid

from vers_orchestrator.auth import Principal
from vers_orchestrator.errors import RepositoryAlreadyExists
from vers_orchestrator.services.validation import validate_repository_name, validate_text
from vers_orchestrator.store import repositories as repository_store
from vers_orchestrator.store.database import Database, UniqueViolation, utc_now
from vers_orchestrator.store.repositories import Repository


async def create(
    db: Database, principal: Principal, name: str, description: str | None
) -> Repository:
    validate_repository_name(name)
    validate_text("description", description)
    repository = Repository(
        repo_id=str(uuid.uuid4()),
        org_id=principal.org_id,
        name=name,
        description=description,
        is_public=False,
        owner_id=principal.api_key_id,
        created_at=utc_now(),
    )
    try:
        await db.write(lambda tx: repository_store.insert(tx, repository))
    except UniqueViolation:
        raise RepositoryAlreadyExists() from None
    return repository
