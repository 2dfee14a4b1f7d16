"""Commits: recorded by the VM layer; listed, published, named and deleted here.

Who may do what (`upstream-semantics.md` §6, `decisions.md`):
- a commit is visible to every key of its organization, and to everyone once public;
  another organization's private commit answers as if it did not exist;
- only the key that created a commit may change or delete it;
- lists are per key (`/commits`) or across organizations (`/commits/public`), and never
  show deleted commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from vers_orchestrator.auth import Principal
from vers_orchestrator.errors import (
    CommitHasActiveVms,
    CommitNotFound,
    Forbidden,
    InvalidCommitId,
    NotFound,
)
from vers_orchestrator.ids import new_id
from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.services.validation import clamp_page, validate_text
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import identity
from vers_orchestrator.store.commits import Commit
from vers_orchestrator.store.database import Database, Tx, utc_now


@dataclass(frozen=True, slots=True)
class Page:
    commits: list[Commit]
    total: int
    limit: int
    offset: int


def canonical_id(commit_id: str) -> str:
    """The lowercase hyphenated form of a commit id given in any form a UUID may take.

    Checked before any query: in a PostgreSQL `uuid` column, junk would be a 500.
    """
    try:
        return str(uuid.UUID(commit_id))
    except ValueError:
        raise InvalidCommitId() from None


def visible_to(commit: Commit | None, principal: Principal) -> bool:
    return (
        commit is not None
        and commit.deleted_at is None
        and (commit.org_id == principal.org_id or commit.is_public)
    )


def check_taggable(commit: Commit | None, principal: Principal) -> Commit:
    """A tag may point only at a live commit of the caller's own organization."""
    if commit is None or not visible_to(commit, principal):
        raise CommitNotFound()
    if commit.org_id != principal.org_id:
        # Public, so its existence is no secret: refused, not hidden.
        raise Forbidden()
    return commit


def _default_name(parent_vm_id: str, created_at: str) -> str:
    return f"commit: of_vm={parent_vm_id} timestamp={created_at}"


async def record(
    db: Database,
    owner_id: str,
    parent_vm_id: str,
    started_from: str | None,
    name: str | None = None,
    description: str | None = None,
    commit_id: str | None = None,
) -> Commit:
    """Store a new private commit of VM `parent_vm_id`, owned by the API key `owner_id`.

    Its `grandparent_commit_id` is the VM's newest live commit, or for its first one the
    commit the VM was `started_from`, as the hosted service does: committing a VM twice
    chains the two, so `/parents` lists every commit of the line. The VM layer calls this
    once the snapshot is safely written.
    """
    validate_text("name", name)
    validate_text("description", description)
    created_at = utc_now()

    async def unit(tx: Tx) -> Commit:
        owner = await identity.get_api_key(tx, owner_id)
        if owner is None:
            raise ValueError(f"no API key {owner_id}")
        previous = await commit_store.latest_of_vm(tx, parent_vm_id)
        commit = Commit(
            commit_id=commit_id or new_id(),
            org_id=owner.org_id,
            owner_id=owner_id,
            parent_vm_id=parent_vm_id,
            grandparent_commit_id=previous or started_from,
            name=name or _default_name(parent_vm_id, rfc3339(created_at)),
            description=description,
            is_public=False,
            created_at=created_at,
            deleted_at=None,
        )
        await commit_store.insert(tx, commit)
        return commit

    return await db.write(unit)


async def list_own(
    db: Database, principal: Principal, limit: int | None, offset: int | None
) -> Page:
    """The caller's key's live commits, newest first (per key, not per organization)."""
    limit, offset = clamp_page(limit, offset)

    async def unit(tx: Tx) -> Page:
        commits = await commit_store.list_by_owner(tx, principal.api_key_id, limit, offset)
        total = await commit_store.count_by_owner(tx, principal.api_key_id)
        return Page(commits, total, limit, offset)

    return await db.read(unit)


async def list_public(db: Database, limit: int | None, offset: int | None) -> Page:
    limit, offset = clamp_page(limit, offset)

    async def unit(tx: Tx) -> Page:
        commits = await commit_store.list_public(tx, limit, offset)
        return Page(commits, await commit_store.count_public(tx), limit, offset)

    return await db.read(unit)


def _blank_to_none(value: str | None) -> str | None:
    # Empty or whitespace-only means "leave as is", as on the hosted service.
    return None if value is None or not value.strip() else value


async def update(
    db: Database,
    principal: Principal,
    commit_id: str,
    is_public: bool,
    name: str | None,
    description: str | None,
) -> Commit:
    """Publish or unpublish; rename and redescribe when given (they cannot be cleared)."""
    validate_text("name", name)
    validate_text("description", description)
    name, description = _blank_to_none(name), _blank_to_none(description)
    canonical = canonical_id(commit_id)

    async def unit(tx: Tx) -> Commit:
        commit = await commit_store.get(tx, canonical)
        if commit is None or not visible_to(commit, principal):
            raise NotFound()  # the hosted text here is the bare "not found"
        if commit.owner_id != principal.api_key_id:
            raise Forbidden()
        await commit_store.update_metadata(tx, commit.commit_id, is_public, name, description)
        updated = await commit_store.get(tx, commit.commit_id)
        assert updated is not None, "commits are never removed"
        return updated

    return await db.write(unit)


async def delete(db: Database, principal: Principal, commit_id: str) -> None:
    """Mark deleted; refused while VMs started from it are alive. Tags keep pointing at it."""
    canonical = canonical_id(commit_id)

    async def unit(tx: Tx) -> None:
        commit = await commit_store.get(tx, canonical)
        if commit is None or not visible_to(commit, principal):
            raise CommitNotFound()
        if commit.owner_id != principal.api_key_id:
            raise Forbidden()
        # Marked first, counted after: a VM made from the commit meanwhile either wrote its
        # row before the mark (and is counted: 409, nothing changes) or finds the commit
        # deleted when it writes (`store.commits.hold_live`), never both missing the other.
        if not await commit_store.mark_deleted(
            tx, commit.commit_id, principal.api_key_id, utc_now()
        ):
            raise CommitNotFound()
        live_vms = await commit_store.count_live_vms(tx, commit.commit_id)
        if live_vms:
            raise CommitHasActiveVms(live_vms)

    await db.write(unit)


async def parents(db: Database, principal: Principal, commit_id: str) -> list[Commit]:
    """The commit, then the commit its VM was started from, and so on to the root."""
    canonical = canonical_id(commit_id)
    chain = await db.read(lambda tx: commit_store.chain(tx, canonical))
    if not chain or not visible_to(chain[0], principal):
        raise CommitNotFound()
    # The caller may see its own commit's ancestors' ids, so a private one of another
    # organization is refused rather than hidden.
    if not all(visible_to(ancestor, principal) for ancestor in chain[1:]):
        raise Forbidden()
    return chain
