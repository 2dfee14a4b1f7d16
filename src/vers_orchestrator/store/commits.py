"""Commits: snapshots of VMs. Deleting one marks it deleted; the row stays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator.store.database import Row, Tx, as_datetime, as_id, as_optional_datetime


@dataclass(frozen=True, slots=True)
class Commit:
    commit_id: str
    org_id: str
    owner_id: str
    parent_vm_id: str | None
    grandparent_commit_id: str | None
    name: str
    description: str | None
    is_public: bool
    created_at: datetime
    deleted_at: datetime | None


_FIELDS = (
    " commit_id, org_id, owner_id, parent_vm_id, grandparent_commit_id, name, description,"
    " is_public, created_at, deleted_at"
)
_COLUMNS = "SELECT" + _FIELDS + " FROM commits"
# Newest first; the id breaks ties between commits of the same microsecond.
_NEWEST_FIRST = " ORDER BY created_at DESC, commit_id DESC"


def _optional_id(value: object) -> str | None:
    return None if value is None else as_id(value)


def _commit(row: Row) -> Commit:
    return Commit(
        commit_id=as_id(row["commit_id"]),
        org_id=as_id(row["org_id"]),
        owner_id=as_id(row["owner_id"]),
        parent_vm_id=_optional_id(row["parent_vm_id"]),
        grandparent_commit_id=_optional_id(row["grandparent_commit_id"]),
        name=row["name"],
        description=row["description"],
        is_public=bool(row["is_public"]),
        created_at=as_datetime(row["created_at"]),
        deleted_at=as_optional_datetime(row["deleted_at"]),
    )


async def insert(tx: Tx, commit: Commit) -> None:
    await tx.execute(
        "INSERT INTO commits (commit_id, org_id, owner_id, parent_vm_id, grandparent_commit_id,"
        " name, description, is_public, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        commit.commit_id,
        commit.org_id,
        commit.owner_id,
        commit.parent_vm_id,
        commit.grandparent_commit_id,
        commit.name,
        commit.description,
        commit.is_public,
        commit.created_at,
    )


async def get(tx: Tx, commit_id: str) -> Commit | None:
    """The commit, deleted or not."""
    row = await tx.fetch_one(_COLUMNS + " WHERE commit_id = $1", commit_id)
    return None if row is None else _commit(row)


async def latest_of_vm(tx: Tx, vm_id: str) -> str | None:
    """The id of the VM's newest live commit, if it has one."""
    commit_id = await tx.fetch_value(
        "SELECT commit_id FROM commits WHERE parent_vm_id = $1 AND deleted_at IS NULL"
        " ORDER BY created_at DESC, commit_id DESC LIMIT 1",
        vm_id,
    )
    return _optional_id(commit_id)


async def list_by_owner(tx: Tx, owner_id: str, limit: int, offset: int) -> list[Commit]:
    rows = await tx.fetch_all(
        _COLUMNS
        + " WHERE owner_id = $1 AND deleted_at IS NULL"
        + _NEWEST_FIRST
        + " LIMIT $2 OFFSET $3",
        owner_id,
        limit,
        offset,
    )
    return [_commit(row) for row in rows]


async def count_by_owner(tx: Tx, owner_id: str) -> int:
    count: int = await tx.fetch_value(
        "SELECT count(*) FROM commits WHERE owner_id = $1 AND deleted_at IS NULL", owner_id
    )
    return count


async def list_public(tx: Tx, limit: int, offset: int) -> list[Commit]:
    rows = await tx.fetch_all(
        _COLUMNS
        + " WHERE is_public AND deleted_at IS NULL"
        + _NEWEST_FIRST
        + " LIMIT $1 OFFSET $2",
        limit,
        offset,
    )
    return [_commit(row) for row in rows]


async def count_public(tx: Tx) -> int:
    count: int = await tx.fetch_value(
        "SELECT count(*) FROM commits WHERE is_public AND deleted_at IS NULL"
    )
    return count


async def update_metadata(
    tx: Tx, commit_id: str, is_public: bool, name: str | None, description: str | None
) -> None:
    """Set `is_public`; replace name and description only when given."""
    await tx.execute(
        "UPDATE commits SET is_public = $2, name = COALESCE($3, name),"
        " description = COALESCE($4, description) WHERE commit_id = $1",
        commit_id,
        is_public,
        name,
        description,
    )


async def mark_deleted(tx: Tx, commit_id: str, deleted_by: str, now: datetime) -> bool:
    """False when the commit was already deleted (a concurrent delete won)."""
    changed = await tx.execute(
        "UPDATE commits SET deleted_at = $3, deleted_by = $2"
        " WHERE commit_id = $1 AND deleted_at IS NULL",
        commit_id,
        deleted_by,
        now,
    )
    return changed == 1


async def chain(tx: Tx, commit_id: str) -> list[Commit]:
    """The live commit and its ancestors through `grandparent_commit_id`, child first.

    The walk stops at the first deleted commit; empty when the commit itself is deleted
    or unknown. One recursive query, whatever the depth.
    """
    rows = await tx.fetch_all(
        "WITH RECURSIVE chain(commit_id, depth) AS ("
        " SELECT commit_id, 0 FROM commits WHERE commit_id = $1 AND deleted_at IS NULL"
        " UNION ALL"
        " SELECT parent.commit_id, chain.depth + 1 FROM chain"
        " JOIN commits child ON child.commit_id = chain.commit_id"
        " JOIN commits parent ON parent.commit_id = child.grandparent_commit_id"
        " WHERE parent.deleted_at IS NULL"
        ")"
        " SELECT c.commit_id, c.org_id, c.owner_id, c.parent_vm_id, c.grandparent_commit_id,"
        " c.name, c.description, c.is_public, c.created_at, c.deleted_at"
        " FROM chain JOIN commits c ON c.commit_id = chain.commit_id ORDER BY chain.depth",
        commit_id,
    )
    return [_commit(row) for row in rows]


async def hold_live(tx: Tx, commit_id: str) -> bool:
    """Lock a live commit's row until the transaction ends; False when it is deleted.

    An update that changes nothing still takes PostgreSQL's row lock: a delete of the
    commit running meanwhile waits for this transaction and then counts the VMs it wrote
    (`services/commits.delete`). SQLite runs one write transaction at a time anyway.
    """
    held = await tx.execute(
        "UPDATE commits SET deleted_at = NULL WHERE commit_id = $1 AND deleted_at IS NULL",
        commit_id,
    )
    return held == 1


async def count_live_vms(tx: Tx, commit_id: str) -> int:
    """How many VMs that are not deleted were started from this commit (dead ones count:
    they still need a delete)."""
    count: int = await tx.fetch_value(
        "SELECT count(*) FROM vms WHERE parent_commit_id = $1 AND deleted_at IS NULL", commit_id
    )
    return count


async def delete_row(tx: Tx, commit_id: str) -> None:
    """Forget a commit entirely: only for undoing a fork that failed, before anyone saw it."""
    await tx.execute("DELETE FROM commits WHERE commit_id = $1", commit_id)
