"""Users' images (`base_images`) and the jobs that build them (`base_image_jobs`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from vers_orchestrator.store.database import Row, Tx, as_datetime, as_id, as_optional_datetime


class JobStatus(StrEnum):
    """The hosted service's strings (upstream-semantics-platform.md §4)."""

    PENDING = "pending"
    CREATING = "creating"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Image:
    base_image_id: str
    org_id: str
    owner_id: str
    image_name: str
    is_public: bool
    source_type: str
    source_config: dict[str, Any]
    size_mib: int
    description: str | None
    storage_key: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    org_id: str
    owner_id: str
    image_name: str
    source_type: str
    source_config: dict[str, Any]
    size_mib: int
    description: str | None
    status: JobStatus
    error_message: str | None
    node: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


_IMAGE = (
    "SELECT base_image_id, org_id, owner_id, image_name, is_public, source_type, source_config,"
    " size_mib, description, storage_key, created_at FROM base_images"
)
_JOB = (
    "SELECT job_id, org_id, owner_id, image_name, source_type, source_config, size_mib,"
    " description, status, error_message, node, created_at, updated_at, completed_at"
    " FROM base_image_jobs"
)


def _image(row: Row) -> Image:
    return Image(
        base_image_id=as_id(row["base_image_id"]),
        org_id=as_id(row["org_id"]),
        owner_id=as_id(row["owner_id"]),
        image_name=row["image_name"],
        is_public=bool(row["is_public"]),
        source_type=row["source_type"],
        source_config=json.loads(row["source_config"]),
        size_mib=row["size_mib"],
        description=row["description"],
        storage_key=row["storage_key"],
        created_at=as_datetime(row["created_at"]),
    )


def _job(row: Row) -> Job:
    return Job(
        job_id=as_id(row["job_id"]),
        org_id=as_id(row["org_id"]),
        owner_id=as_id(row["owner_id"]),
        image_name=row["image_name"],
        source_type=row["source_type"],
        source_config=json.loads(row["source_config"]),
        size_mib=row["size_mib"],
        description=row["description"],
        status=JobStatus(row["status"]),
        error_message=row["error_message"],
        node=row["node"],
        created_at=as_datetime(row["created_at"]),
        updated_at=as_datetime(row["updated_at"]),
        completed_at=as_optional_datetime(row["completed_at"]),
    )


# ---------------------------------------------------------------------- images


async def insert_image(tx: Tx, image: Image) -> None:
    """Raises `UniqueViolation` when the organization has an image of that name."""
    await tx.execute(
        "INSERT INTO base_images (base_image_id, org_id, owner_id, image_name, is_public,"
        " source_type, source_config, size_mib, description, storage_key, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        image.base_image_id,
        image.org_id,
        image.owner_id,
        image.image_name,
        image.is_public,
        image.source_type,
        json.dumps(image.source_config, sort_keys=True),
        image.size_mib,
        image.description,
        image.storage_key,
        image.created_at,
    )


async def get_image(tx: Tx, base_image_id: str) -> Image | None:
    row = await tx.fetch_one(_IMAGE + " WHERE base_image_id = $1", base_image_id)
    return None if row is None else _image(row)


async def image_by_name(tx: Tx, org_id: str, image_name: str) -> Image | None:
    row = await tx.fetch_one(_IMAGE + " WHERE org_id = $1 AND image_name = $2", org_id, image_name)
    return None if row is None else _image(row)


async def public_image_by_name(tx: Tx, image_name: str) -> Image | None:
    """The oldest public image of that name (names are unique per organization only)."""
    row = await tx.fetch_one(
        _IMAGE + " WHERE is_public AND image_name = $1 ORDER BY created_at, base_image_id LIMIT 1",
        image_name,
    )
    return None if row is None else _image(row)


async def list_visible(tx: Tx, org_id: str, limit: int, offset: int) -> tuple[list[Image], int]:
    """The organization's images and public ones, newest first, and how many there are."""
    rows = await tx.fetch_all(
        _IMAGE + " WHERE org_id = $1 OR is_public"
        " ORDER BY created_at DESC, base_image_id LIMIT $2 OFFSET $3",
        org_id,
        limit,
        offset,
    )
    total = await tx.fetch_value(
        "SELECT count(*) FROM base_images WHERE org_id = $1 OR is_public", org_id
    )
    return [_image(row) for row in rows], int(total)


async def delete_image(tx: Tx, base_image_id: str) -> bool:
    deleted = await tx.execute("DELETE FROM base_images WHERE base_image_id = $1", base_image_id)
    return deleted == 1


async def storage_shared(tx: Tx, storage_key: str, *, besides: str) -> bool:
    """Whether an image other than `besides` (of any organization) uses these files."""
    count = await tx.fetch_value(
        "SELECT count(*) FROM base_images WHERE storage_key = $1 AND base_image_id <> $2",
        storage_key,
        besides,
    )
    return int(count) > 0


# ------------------------------------------------------------------------ jobs


async def insert_job(tx: Tx, job: Job) -> None:
    """Raises `UniqueViolation` when the organization has an unfinished job of that name."""
    await tx.execute(
        "INSERT INTO base_image_jobs (job_id, org_id, owner_id, image_name, source_type,"
        " source_config, size_mib, description, status, error_message, node, created_at,"
        " updated_at, completed_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        job.job_id,
        job.org_id,
        job.owner_id,
        job.image_name,
        job.source_type,
        json.dumps(job.source_config, sort_keys=True),
        job.size_mib,
        job.description,
        job.status.value,
        job.error_message,
        job.node,
        job.created_at,
        job.updated_at,
        job.completed_at,
    )


async def newest_job(tx: Tx, org_id: str, image_name: str) -> Job | None:
    row = await tx.fetch_one(
        _JOB + " WHERE org_id = $1 AND image_name = $2 ORDER BY created_at DESC, job_id LIMIT 1",
        org_id,
        image_name,
    )
    return None if row is None else _job(row)


async def set_job_status(
    tx: Tx,
    job_id: str,
    status: JobStatus,
    now: datetime,
    error_message: str | None = None,
) -> bool:
    """Move an unfinished job on; False when it had finished already."""
    finished = status in (JobStatus.COMPLETED, JobStatus.FAILED)
    changed = await tx.execute(
        "UPDATE base_image_jobs SET status = $2, error_message = $3, updated_at = $4,"
        " completed_at = CASE WHEN $5 THEN $4 ELSE completed_at END"
        " WHERE job_id = $1 AND status IN ('pending', 'creating')",
        job_id,
        status.value,
        error_message,
        now,
        finished,
    )
    return changed == 1


async def fail_unfinished_on_node(tx: Tx, node: str, reason: str, now: datetime) -> int:
    """Mark every unfinished job of `node` failed; returns how many."""
    return await tx.execute(
        "UPDATE base_image_jobs SET status = 'failed', error_message = $2, updated_at = $3,"
        " completed_at = $3 WHERE node = $1 AND status IN ('pending', 'creating')",
        node,
        reason,
        now,
    )
