"""Tags: names for commits, in two namespaces that never see each other (decisions.md).

- Repository tags (`/repositories/{repo}/tags`): unique per repository, 1-128 characters,
  addressed as `repo:tag`.
- Organization-wide tags (`/commit_tags`): unique per organization, 1-64 characters.

A tag may point only at a live commit of the caller's organization. Tags that point at a
commit deleted later stay listed.
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from vers_orchestrator.auth import Principal
from vers_orchestrator.errors import (
    NoUpdatesProvided,
    RepositoryNotFound,
    RepoTagAlreadyExists,
    TagAlreadyExists,
    TagNotFound,
)
from vers_orchestrator.ids import new_id
from vers_orchestrator.services import repositories
from vers_orchestrator.services.commits import check_taggable
from vers_orchestrator.services.validation import (
    ORG_TAG_NAME_MAX,
    REPO_TAG_NAME_MAX,
    is_valid_name,
    validate_tag_name,
    validate_text,
)
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import tags as tag_store
from vers_orchestrator.store.database import (
    Database,
    ForeignKeyViolation,
    Tx,
    UniqueViolation,
    utc_now,
)
from vers_orchestrator.store.repositories import Repository
from vers_orchestrator.store.tags import Tag

Description = str | None | UnsetType


async def _new_tag(
    tx: Tx,
    principal: Principal,
    repo_id: str | None,
    tag_name: str,
    commit_id: str,
    description: str | None,
) -> Tag:
    commit = await commit_store.get(tx, commit_id)
    check_taggable(commit, principal)
    now = utc_now()
    tag = Tag(
        tag_id=new_id(),
        org_id=principal.org_id,
        repo_id=repo_id,
        tag_name=tag_name,
        commit_id=commit_id,
        owner_id=principal.api_key_id,
        description=description,
        created_at=now,
        updated_at=now,
    )
    await tag_store.insert(tx, tag)
    return tag


def _check_update(commit_id: str | None, description: Description) -> None:
    # Before any lookup, as on the hosted service: a PATCH that changes nothing is 400.
    # `commit_id: null` means "keep", like an absent one.
    if commit_id is None and description is UNSET:
        raise NoUpdatesProvided()
    if not isinstance(description, UnsetType):
        validate_text("description", description)


async def _apply_update(
    tx: Tx, principal: Principal, tag: Tag, commit_id: str | None, description: Description
) -> None:
    if commit_id is not None:
        check_taggable(await commit_store.get(tx, commit_id), principal)
    await tag_store.update(
        tx,
        tag.tag_id,
        commit_id,
        not isinstance(description, UnsetType),
        None if isinstance(description, UnsetType) else description,
        utc_now(),
    )


# Repository tags


async def _find_repo_tag(
    tx: Tx, principal: Principal, repo_name: str, tag_name: str
) -> tuple[Repository, Tag]:
    repository = await repositories.find(tx, principal, repo_name)
    tag = None
    if is_valid_name(tag_name, REPO_TAG_NAME_MAX):
        tag = await tag_store.get_in_repository(tx, repository.repo_id, tag_name)
    if tag is None:
        raise TagNotFound()
    return repository, tag


async def create_repo_tag(
    db: Database,
    principal: Principal,
    repo_name: str,
    tag_name: str,
    commit_id: str,
    description: str | None,
) -> Tag:
    validate_tag_name(tag_name, REPO_TAG_NAME_MAX)
    validate_text("description", description)

    async def unit(tx: Tx) -> Tag:
        repository = await repositories.find(tx, principal, repo_name)
        return await _new_tag(tx, principal, repository.repo_id, tag_name, commit_id, description)

    try:
        return await db.write(unit)
    except UniqueViolation:
        raise RepoTagAlreadyExists() from None
    except ForeignKeyViolation:
        # The repository was deleted after `find`: of the tag's parents only repositories
        # are ever removed (commits are marked deleted, keys and organizations stay).
        raise RepositoryNotFound() from None


async def list_repo_tags(db: Database, principal: Principal, repo_name: str) -> list[Tag]:
    async def unit(tx: Tx) -> list[Tag]:
        repository = await repositories.find(tx, principal, repo_name)
        return await tag_store.list_in_repository(tx, repository.repo_id)

    return await db.read(unit)


async def get_repo_tag(db: Database, principal: Principal, repo_name: str, tag_name: str) -> Tag:
    _, tag = await db.read(lambda tx: _find_repo_tag(tx, principal, repo_name, tag_name))
    return tag


async def update_repo_tag(
    db: Database,
    principal: Principal,
    repo_name: str,
    tag_name: str,
    commit_id: str | None,
    description: Description,
) -> None:
    _check_update(commit_id, description)

    async def unit(tx: Tx) -> None:
        _, tag = await _find_repo_tag(tx, principal, repo_name, tag_name)
        await _apply_update(tx, principal, tag, commit_id, description)

    await db.write(unit)


async def delete_repo_tag(
    db: Database, principal: Principal, repo_name: str, tag_name: str
) -> None:
    """The tag only; the commit it names stays."""

    async def unit(tx: Tx) -> None:
        _, tag = await _find_repo_tag(tx, principal, repo_name, tag_name)
        await tag_store.delete(tx, tag.tag_id)

    await db.write(unit)


# Organization-wide tags


async def _find_org_tag(tx: Tx, principal: Principal, tag_name: str) -> Tag:
    tag = None
    if is_valid_name(tag_name, ORG_TAG_NAME_MAX):
        tag = await tag_store.get_in_org(tx, principal.org_id, tag_name)
    if tag is None:
        raise TagNotFound()
    return tag


async def create_org_tag(
    db: Database, principal: Principal, tag_name: str, commit_id: str, description: str | None
) -> Tag:
    validate_tag_name(tag_name, ORG_TAG_NAME_MAX)
    validate_text("description", description)
    try:
        return await db.write(
            lambda tx: _new_tag(tx, principal, None, tag_name, commit_id, description)
        )
    except UniqueViolation:
        raise TagAlreadyExists() from None


async def list_org_tags(db: Database, principal: Principal) -> list[Tag]:
    return await db.read(lambda tx: tag_store.list_in_org(tx, principal.org_id))


async def get_org_tag(db: Database, principal: Principal, tag_name: str) -> Tag:
    return await db.read(lambda tx: _find_org_tag(tx, principal, tag_name))


async def update_org_tag(
    db: Database,
    principal: Principal,
    tag_name: str,
    commit_id: str | None,
    description: Description,
) -> None:
    _check_update(commit_id, description)

    async def unit(tx: Tx) -> None:
        tag = await _find_org_tag(tx, principal, tag_name)
        await _apply_update(tx, principal, tag, commit_id, description)

    await db.write(unit)


async def delete_org_tag(db: Database, principal: Principal, tag_name: str) -> None:
    async def unit(tx: Tx) -> None:
        await tag_store.delete(tx, (await _find_org_tag(tx, principal, tag_name)).tag_id)

    await db.write(unit)
