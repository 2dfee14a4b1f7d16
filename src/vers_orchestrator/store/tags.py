"""Tags: names for commits, in a repository or in the organization-wide namespace.

One table holds both namespaces; `repo_id IS NULL` marks an organization-wide tag. Every
query here names its namespace, so the two never see each other's tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator.store.database import Row, Tx, as_datetime, as_id


@dataclass(frozen=True, slots=True)
class Tag:
    tag_id: str
    org_id: str
    repo_id: str | None
    tag_name: str
    commit_id: str
    owner_id: str
    description: str | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = (
    "SELECT tag_id, org_id, repo_id, tag_name, commit_id, owner_id, description,"
    " created_at, updated_at FROM commit_tags"
)


def _tag(row: Row) -> Tag:
    repo_id = row["repo_id"]
    return Tag(
        tag_id=as_id(row["tag_id"]),
        org_id=as_id(row["org_id"]),
        repo_id=None if repo_id is None else as_id(repo_id),
        tag_name=row["tag_name"],
        commit_id=as_id(row["commit_id"]),
        owner_id=as_id(row["owner_id"]),
        description=row["description"],
        created_at=as_datetime(row["created_at"]),
        updated_at=as_datetime(row["updated_at"]),
    )


async def insert(tx: Tx, tag: Tag) -> None:
    """Raises `UniqueViolation` when the namespace already has a tag of that name."""
    await tx.execute(
        "INSERT INTO commit_tags (tag_id, org_id, repo_id, tag_name, commit_id, owner_id,"
        " description, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        tag.tag_id,
        tag.org_id,
        tag.repo_id,
        tag.tag_name,
        tag.commit_id,
        tag.owner_id,
        tag.description,
        tag.created_at,
        tag.updated_at,
    )


async def list_in_repository(tx: Tx, repo_id: str) -> list[Tag]:
    rows = await tx.fetch_all(_COLUMNS + " WHERE repo_id = $1 ORDER BY tag_name", repo_id)
    return [_tag(row) for row in rows]


async def get_in_repository(tx: Tx, repo_id: str, tag_name: str) -> Tag | None:
    row = await tx.fetch_one(_COLUMNS + " WHERE repo_id = $1 AND tag_name = $2", repo_id, tag_name)
    return None if row is None else _tag(row)


async def list_in_org(tx: Tx, org_id: str) -> list[Tag]:
    rows = await tx.fetch_all(
        _COLUMNS + " WHERE org_id = $1 AND repo_id IS NULL ORDER BY tag_name", org_id
    )
    return [_tag(row) for row in rows]


async def get_in_org(tx: Tx, org_id: str, tag_name: str) -> Tag | None:
    row = await tx.fetch_one(
        _COLUMNS + " WHERE org_id = $1 AND repo_id IS NULL AND tag_name = $2", org_id, tag_name
    )
    return None if row is None else _tag(row)


async def update(
    tx: Tx,
    tag_id: str,
    commit_id: str | None,
    set_description: bool,
    description: str | None,
    now: datetime,
) -> None:
    """Move the tag when `commit_id` is given; replace the description when `set_description`."""
    await tx.execute(
        "UPDATE commit_tags SET commit_id = COALESCE($2, commit_id),"
        " description = CASE WHEN $3 THEN $4 ELSE description END, updated_at = $5"
        " WHERE tag_id = $1",
        tag_id,
        commit_id,
        set_description,
        description,
        now,
    )


async def delete(tx: Tx, tag_id: str) -> None:
    await tx.execute("DELETE FROM commit_tags WHERE tag_id = $1", tag_id)
