"""Commits of VMs, VMs from commits, branches and fork. HTTP only.

The branch routes answer errors in the upstream `NewVmsResponse` shape
(`{"vms": [], "error": "…"}`), the others as `ErrorResponse`.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import MediaType, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from vers_orchestrator.api.errors import error_response
from vers_orchestrator.api.openapi import BEARER_AUTH, ContractOperation, authenticated_responses
from vers_orchestrator.api.runtime import AnyRequest, principal
from vers_orchestrator.api.vms import ERRORS, TAGS, VM_PATH, VmId, vms
from vers_orchestrator.errors import CommitNotFound, InvalidQuery, VersError
from vers_orchestrator.schemas.vms import (
    ForkRepositoryRequest,
    ForkRepositoryResponse,
    FromCommitVmRequest,
    NewVmResponse,
    NewVmsResponse,
    VmCommitRequest,
    VmCommitResponse,
)
from vers_orchestrator.store.vms import Vm

# Upstream reads `count` as an 8-bit integer: beyond it is a 400, as a bad query is.
Count = Annotated[int | None, Parameter(ge=0, le=255, description="How many VMs (default 1)")]


def _new_vms(created: list[Vm]) -> NewVmsResponse:
    return NewVmsResponse(vms=[NewVmResponse(vm_id=vm.vm_id) for vm in created])


def _new_vms_error(request: AnyRequest, exc: VersError) -> Response[Any]:
    # The hosted branch routes answer these two in the common error shape; so are query
    # errors, found before the route runs (as Litestar's own checks of `count` are).
    if exc.status_code == 401 or type(exc) is CommitNotFound or isinstance(exc, InvalidQuery):
        return error_response(exc.status_code, exc.message)
    # The hosted branch routes capitalise this one text.
    message = "Forbidden" if exc.message == "forbidden" else exc.message
    return Response(
        {"vms": [], "error": message}, status_code=exc.status_code, media_type=MediaType.JSON
    )


_BRANCH_ERRORS = {
    status: ResponseSpec(data_container=NewVmsResponse, description=text, generate_examples=False)
    for status, text in {
        400: "Invalid request",
        403: "Forbidden",
        404: "Not found",
        429: "Server at capacity",
        500: "Internal server error",
    }.items()
}
_BRANCH: dict[str, Any] = {
    "tags": TAGS,
    "security": BEARER_AUTH,
    "status_code": 201,
    "operation_class": ContractOperation,
    "response_description": "Branch VM(s) created successfully",
    "responses": {
        **_BRANCH_ERRORS,
        401: ResponseSpec(data_container=None, description="Unauthorized"),
    },
    "exception_handlers": {VersError: _new_vms_error},
}


# ------------------------------------------------------------------- snapshots


@post(
    VM_PATH + "/commit",
    operation_id="commit_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="VM committed successfully",
    responses=authenticated_responses({400: "Invalid VM ID", 409: "VM not running", **ERRORS}),
)
async def commit_vm(
    request: AnyRequest,
    vm_id: VmId,
    data: VmCommitRequest,
    keep_paused: bool | None = None,
    skip_wait_boot: bool | None = None,
) -> VmCommitResponse:
    commit = await vms(request).snapshots.commit(
        principal(request), vm_id, bool(keep_paused), data.name, data.description
    )
    return VmCommitResponse(commit_id=commit.commit_id)


@post(
    "/api/v1/vm/from_commit",
    operation_id="restore_from_commit",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="VM restored from commit successfully",
    responses=authenticated_responses(
        {
            400: "Invalid request",
            403: "Forbidden",
            404: "Commit or tag not found",
            429: "Server at capacity",
            500: "Internal server error",
        }
    ),
)
async def restore_from_commit(request: AnyRequest, data: FromCommitVmRequest) -> NewVmResponse:
    vm = await vms(request).snapshots.from_commit(
        principal(request), data.commit_id, data.tag_name, data.ref
    )
    return NewVmResponse(vm_id=vm.vm_id)


@post(
    "/api/v1/vm/{vm_or_commit_id:str}/branch",
    operation_id="branch_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="Branch VM created successfully",
    responses=authenticated_responses({400: "Invalid VM ID", 429: "Server at capacity", **ERRORS}),
)
async def branch_vm(
    request: AnyRequest,
    vm_or_commit_id: str,
    keep_paused: bool | None = None,
    skip_wait_boot: bool | None = None,
    count: Count = None,
) -> NewVmsResponse:
    created = await vms(request).snapshots.branch(
        principal(request), vm_or_commit_id, count, bool(keep_paused)
    )
    return _new_vms(created)


@post("/api/v1/vm/branch/by_vm/{vm_id:str}", operation_id="branch_by_vm", **_BRANCH)
async def branch_by_vm(
    request: AnyRequest,
    vm_id: str,
    keep_paused: bool | None = None,
    skip_wait_boot: bool | None = None,
    count: Count = None,
) -> NewVmsResponse:
    created = await vms(request).snapshots.branch_by_vm(
        principal(request), vm_id, count, bool(keep_paused)
    )
    return _new_vms(created)


@post("/api/v1/vm/branch/by_commit/{commit_id:str}", operation_id="branch_by_commit", **_BRANCH)
async def branch_by_commit(
    request: AnyRequest, commit_id: str, count: Count = None
) -> NewVmsResponse:
    return _new_vms(
        await vms(request).snapshots.branch_by_commit(principal(request), commit_id, count)
    )


@post("/api/v1/vm/branch/by_tag/{tag_name:str}", operation_id="branch_by_tag", **_BRANCH)
async def branch_by_tag(request: AnyRequest, tag_name: str, count: Count = None) -> NewVmsResponse:
    return _new_vms(await vms(request).snapshots.branch_by_tag(principal(request), tag_name, count))


@post(
    "/api/v1/vm/branch/by_ref/{repo_name:str}/{tag_name:str}",
    operation_id="branch_by_ref",
    **_BRANCH,
)
async def branch_by_ref(
    request: AnyRequest, repo_name: str, tag_name: str, count: Count = None
) -> NewVmsResponse:
    created = await vms(request).snapshots.branch_by_ref(
        principal(request), repo_name, tag_name, count
    )
    return _new_vms(created)


# ------------------------------------------------------------------------ fork


@post(
    "/api/v1/repositories/fork",
    operation_id="fork_repository",
    operation_class=ContractOperation,
    tags=["repositories"],
    security=BEARER_AUTH,
    status_code=201,
    response_description="Repository forked successfully",
    responses=authenticated_responses(
        {
            400: "Invalid target name",
            403: "Forbidden",
            404: "Source repository or tag not found",
            409: "Target tag already exists",
            429: "Server at capacity",
            500: "Internal server error",
        }
    ),
)
async def fork_repository(
    request: AnyRequest, data: ForkRepositoryRequest
) -> ForkRepositoryResponse:
    result = await vms(request).fork(
        principal(request),
        data.source_org,
        data.source_repo,
        data.source_tag,
        data.repo_name,
        data.tag_name,
    )
    return ForkRepositoryResponse(
        vm_id=result.vm_id,
        commit_id=result.commit_id,
        repo_name=result.repo_name,
        tag_name=result.tag_name,
        reference=f"{result.repo_name}:{result.tag_name}",
    )
