"""Public browsing, without a key: public repositories of every organization and their tags.

A private or missing repository is 404 alike, so browsing reveals nothing private.
Organization names match whatever their case; repository and tag names exactly.
"""

from __future__ import annotations

from vers_orchestrator.errors import RepositoryNotFound, TagNotFound
from vers_orchestrator.services.keys import ORG_NAME_MAX
from vers_orchestrator.services.validation import (
    REPO_TAG_NAME_MAX,
    REPOSITORY_NAME_MAX,
    is_valid_name,
)
from vers_orchestrator.store import repositories as repository_store
from vers_orchestrator.store import tags as tag_store
from vers_orchestrator.store.database import Database, Tx
from vers_orchestrator.store.repositories import PublicRepository
from vers_orchestrator.store.tags import Tag


async def list_repositories(db: Database) -> list[PublicRepository]:
    return await db.read(repository_store.list_public)


async def _find(tx: Tx, org_name: str, repo_name: str) -> PublicRepository | None:
    if not (
        is_valid_name(org_name, ORG_NAME_MAX) and is_valid_name(repo_name, REPOSITORY_NAME_MAX)
    ):
        return None
    return await repository_store.get_public(tx, org_name, repo_name)


async def _require(tx: Tx, org_name: str, repo_name: str) -> PublicRepository:
    repository = await _find(tx, org_name, repo_name)
    if repository is None:
        raise RepositoryNotFound()
    return repository


async def get_repository(db: Database, org_name: str, repo_name: str) -> PublicRepository:
    return await db.read(lambda tx: _require(tx, org_name, repo_name))


async def list_tags(db: Database, org_name: str, repo_name: str) -> list[Tag]:
    async def unit(tx: Tx) -> list[Tag]:
        repository = await _require(tx, org_name, repo_name)
        return await tag_store.list_in_repository(tx, repository.repo_id)

    return await db.read(unit)


async def get_tag(db: Database, org_name: str, repo_name: str, tag_name: str) -> Tag:
    """Whatever is missing or private, the answer is the same 404 `tag not found`."""

    async def unit(tx: Tx) -> Tag | None:
        repository = await _find(tx, org_name, repo_name)
        if repository is None or not is_valid_name(tag_name, REPO_TAG_NAME_MAX):
            return None
        return await tag_store.get_in_repository(tx, repository.repo_id, tag_name)

    tag = await db.read(unit)
    if tag is None:
        raise TagNotFound()
    return tag
