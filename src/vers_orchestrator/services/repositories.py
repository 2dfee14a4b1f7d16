"""Repositories of an organization: create, list, get, publish, delete.

Every key of the organization reads and changes them alike; another organization's
repository is simply not found, never forbidden. Lookups by a name that no repository
can have answer 404 without asking the database.
"""

from __future__ import annotations

from vers_orchestrator.auth import Principal
from vers_orchestrator.errors import RepositoryAlreadyExists, RepositoryNotFound
from vers_orchestrator.ids import new_id
from vers_orchestrator.services.validation import (
    REPOSITORY_NAME_MAX,
    is_valid_name,
    validate_repository_name,
    validate_text,
)
from vers_orchestrator.store import repositories as repository_store
from vers_orchestrator.store.database import Database, Tx, UniqueViolation, utc_now
from vers_orchestrator.store.repositories import Repository


async def create(
    db: Database, principal: Principal, name: str, description: str | None
) -> Repository:
    validate_repository_name(name)
    validate_text("description", description)
    repository = Repository(
        repo_id=new_id(),
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


async def list_in_org(db: Database, principal: Principal) -> list[Repository]:
    return await db.read(lambda tx: repository_store.list_by_org(tx, principal.org_id))


async def find(tx: Tx, principal: Principal, name: str) -> Repository:
    """The caller's organization's repository `name`, inside a unit of work; else 404."""
    repository = None
    if is_valid_name(name, REPOSITORY_NAME_MAX):
        repository = await repository_store.get_by_name(tx, principal.org_id, name)
    if repository is None:
        raise RepositoryNotFound()
    return repository


async def get(db: Database, principal: Principal, name: str) -> Repository:
    return await db.read(lambda tx: find(tx, principal, name))


async def delete(db: Database, principal: Principal, name: str) -> None:
    """Delete the repository and its tags in one statement; its commits stay."""
    if not is_valid_name(name, REPOSITORY_NAME_MAX) or not await db.write(
        lambda tx: repository_store.delete_by_name(tx, principal.org_id, name)
    ):
        raise RepositoryNotFound()


async def set_visibility(db: Database, principal: Principal, name: str, is_public: bool) -> None:
    """Public repositories and their tags are readable, without a key, by everyone."""
    if not is_valid_name(name, REPOSITORY_NAME_MAX) or not await db.write(
        lambda tx: repository_store.set_public(tx, principal.org_id, name, is_public)
    ):
        raise RepositoryNotFound()
