"""`/api/v1/commits` and `/api/v1/vm/commits/{commit_id}/parents`. HTTP only.

The parents route lives under `/vm` upstream but is a commits operation (tag `commits`).
"""

from __future__ import annotations

from typing import Annotated

from litestar import delete, get, patch
from litestar.params import Parameter

from vers_orchestrator.api.openapi import BEARER_AUTH, ContractOperation, authenticated_responses
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.schemas.commits import (
    CommitInfo,
    ListCommitsResponse,
    UpdateCommitRequest,
    VmCommitEntity,
)
from vers_orchestrator.schemas.common import rfc3339, rfc3339_offset
from vers_orchestrator.services import commits
from vers_orchestrator.store.commits import Commit

TAGS = ["commits"]
# Upstream reads these as 64-bit integers: anything else is a 400, never a 500.
_INT64 = {"ge": -(2**63), "le": 2**63 - 1}
Limit = Annotated[
    int | None, Parameter(description="1-100, default 50; clamped into range", **_INT64)
]
Offset = Annotated[int | None, Parameter(description="default 0; clamped to >= 0", **_INT64)]
CommitId = Annotated[str, Parameter(schema_extra={"format": "uuid"})]


def commit_info(commit: Commit) -> CommitInfo:
    return CommitInfo(
        commit_id=commit.commit_id,
        parent_vm_id=commit.parent_vm_id,
        grandparent_commit_id=commit.grandparent_commit_id,
        owner_id=commit.owner_id,
        name=commit.name,
        description=commit.description,
        created_at=rfc3339_offset(commit.created_at),
        is_public=commit.is_public,
    )


def _page(page: commits.Page) -> ListCommitsResponse:
    return ListCommitsResponse(
        commits=[commit_info(c) for c in page.commits],
        total=page.total,
        limit=page.limit,
        offset=page.offset,
    )


@get(
    "/api/v1/commits",
    operation_id="list_commits",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="List of commits",
    responses=authenticated_responses({400: "Invalid query", 500: "Internal server error"}),
)
async def list_commits(
    request: AnyRequest, limit: Limit = None, offset: Offset = None
) -> ListCommitsResponse:
    page = await commits.list_own(runtime(request).db, principal(request), limit, offset)
    return _page(page)


@get(
    "/api/v1/commits/public",
    operation_id="list_public_commits",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="List of public commits",
    responses=authenticated_responses({400: "Invalid query", 500: "Internal server error"}),
)
async def list_public_commits(
    request: AnyRequest, limit: Limit = None, offset: Offset = None
) -> ListCommitsResponse:
    return _page(await commits.list_public(runtime(request).db, limit, offset))


@patch(
    "/api/v1/commits/{commit_id:str}",
    operation_id="update_commit",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Commit updated",
    responses=authenticated_responses(
        {
            400: "Invalid commit id or body",
            403: "Forbidden",
            404: "Commit not found",
            500: "Internal server error",
        }
    ),
)
async def update_commit(
    request: AnyRequest, commit_id: CommitId, data: UpdateCommitRequest
) -> CommitInfo:
    commit = await commits.update(
        runtime(request).db,
        principal(request),
        commit_id,
        data.is_public,
        data.name,
        data.description,
    )
    return commit_info(commit)


@delete(
    "/api/v1/commits/{commit_id:str}",
    operation_id="delete_commit",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Commit deleted",
    responses=authenticated_responses(
        {
            400: "Invalid commit id",
            403: "Forbidden",
            404: "Commit not found",
            409: "Commit in use",
            500: "Internal server error",
        }
    ),
)
async def delete_commit(request: AnyRequest, commit_id: CommitId) -> None:
    # Through the VM service: the snapshot's data on the host goes with the commit.
    await runtime(request).vms.snapshots.delete_commit(principal(request), commit_id)


@get(
    "/api/v1/vm/commits/{commit_id:str}/parents",
    operation_id="list_parent_commits",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="List of commits from the specified commit to the root",
    responses=authenticated_responses(
        {
            400: "Invalid commit id",
            403: "Forbidden",
            404: "Commit not found",
            500: "Internal server error",
        }
    ),
)
async def list_parent_commits(request: AnyRequest, commit_id: CommitId) -> list[VmCommitEntity]:
    chain = await commits.parents(runtime(request).db, principal(request), commit_id)
    return [
        VmCommitEntity(
            id=commit.commit_id,
            parent_vm_id=commit.parent_vm_id,
            grandparent_commit_id=commit.grandparent_commit_id,
            owner_id=commit.owner_id,
            name=commit.name,
            description=commit.description,
            created_at=rfc3339(commit.created_at),
            is_public=commit.is_public,
        )
        for commit in chain
    ]
