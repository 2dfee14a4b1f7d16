"""Deploy projects: the steps of putting a git repository's application in a VM."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from vers_orchestrator.store.database import Row, Tx, as_datetime, as_id


class ProjectStatus(StrEnum):
    DEPLOYING = "deploying"
    RUNNING = "running"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DeploySettings:
    install_command: str | None = None
    build_command: str | None = None
    run_command: str | None = None
    working_directory: str | None = None


@dataclass(frozen=True, slots=True)
class Project:
    project_id: str
    org_id: str
    owner_id: str
    name: str
    repo: str
    branch: str | None
    settings: DeploySettings
    vm_id: str | None
    status: ProjectStatus
    # The step under way, or the last one (a failed project's failed step).
    step: str
    error: str | None
    # The guest port the application listens on, once known.
    guest_port: int | None
    node: str
    created_at: datetime
    updated_at: datetime


_COLUMNS = (
    "SELECT project_id, org_id, owner_id, name, repo, branch, settings, vm_id, status, step,"
    " error, guest_port, node, created_at, updated_at FROM deploy_projects"
)


def _project(row: Row) -> Project:
    return Project(
        project_id=as_id(row["project_id"]),
        org_id=as_id(row["org_id"]),
        owner_id=as_id(row["owner_id"]),
        name=row["name"],
        repo=row["repo"],
        branch=row["branch"],
        settings=DeploySettings(**json.loads(row["settings"])),
        vm_id=None if row["vm_id"] is None else as_id(row["vm_id"]),
        status=ProjectStatus(row["status"]),
        step=row["step"],
        error=row["error"],
        guest_port=row["guest_port"],
        node=row["node"],
        created_at=as_datetime(row["created_at"]),
        updated_at=as_datetime(row["updated_at"]),
    )


async def insert(tx: Tx, project: Project) -> None:
    """Raises `UniqueViolation` when the organization has a project of that name."""
    settings = project.settings
    await tx.execute(
        "INSERT INTO deploy_projects (project_id, org_id, owner_id, name, repo, branch,"
        " settings, vm_id, status, step, error, guest_port, node, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        project.project_id,
        project.org_id,
        project.owner_id,
        project.name,
        project.repo,
        project.branch,
        json.dumps(
            {
                "install_command": settings.install_command,
                "build_command": settings.build_command,
                "run_command": settings.run_command,
                "working_directory": settings.working_directory,
            }
        ),
        project.vm_id,
        project.status.value,
        project.step,
        project.error,
        project.guest_port,
        project.node,
        project.created_at,
        project.updated_at,
    )


async def get_in_org(tx: Tx, org_id: str, project_id: str) -> Project | None:
    row = await tx.fetch_one(
        _COLUMNS + " WHERE project_id = $1 AND org_id = $2", project_id, org_id
    )
    return None if row is None else _project(row)


async def set_vm(tx: Tx, project_id: str, vm_id: str, now: datetime) -> None:
    await tx.execute(
        "UPDATE deploy_projects SET vm_id = $2, updated_at = $3 WHERE project_id = $1",
        project_id,
        vm_id,
        now,
    )


async def set_step(
    tx: Tx,
    project_id: str,
    status: ProjectStatus,
    step: str,
    now: datetime,
    *,
    error: str | None = None,
    guest_port: int | None = None,
) -> None:
    """Record a step (a failed one with its error); the port once the app listens."""
    await tx.execute(
        "UPDATE deploy_projects SET status = $2, step = $3, error = $4,"
        " guest_port = COALESCE($5, guest_port), updated_at = $6 WHERE project_id = $1",
        project_id,
        status.value,
        step,
        error,
        guest_port,
        now,
    )


async def delete(tx: Tx, project_id: str) -> None:
    await tx.execute("DELETE FROM deploy_projects WHERE project_id = $1", project_id)


async def fail_unfinished(tx: Tx, node: str, error: str, now: datetime) -> int:
    """Mark the projects this server was deploying failed; returns how many."""
    return await tx.execute(
        "UPDATE deploy_projects SET status = $2, error = $3, updated_at = $4"
        " WHERE node = $1 AND status = $5",
        node,
        ProjectStatus.FAILED.value,
        error,
        now,
        ProjectStatus.DEPLOYING.value,
    )
