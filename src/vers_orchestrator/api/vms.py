"""`/api/v1/vm…`, `/api/v1/vms` and `/api/v1/repositories/fork`: HTTP only.

The rules live in `services.vms`. The branch routes answer errors in the upstream
`NewVmsResponse` shape (`{"vms": [], "error": "…"}`), the others as `ErrorResponse`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import MediaType, Response, delete, get, patch, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from vers_orchestrator.api.errors import error_response
from vers_orchestrator.api.middleware import STREAMING
from vers_orchestrator.api.openapi import BEARER_AUTH, ContractOperation, authenticated_responses
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.errors import VersError
from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.schemas.vms import (
    VM,
    ForkRepositoryRequest,
    ForkRepositoryResponse,
    FromCommitVmRequest,
    LabelVmRequest,
    NewRootRequest,
    NewVmResponse,
    NewVmsResponse,
    VmCommitRequest,
    VmCommitResponse,
    VmDeleteResponse,
    VmExecLogEntry,
    VmExecLogResponse,
    VmExecRequest,
    VmExecResponse,
    VmExecStreamAttachRequest,
    VmMetadataResponse,
    VmReadFileResponse,
    VmResizeDiskRequest,
    VmSshKeyResponse,
    VmUpdateStateRequest,
    VmWriteFileRequest,
)
from vers_orchestrator.services.exec_logs import ExecRun
from vers_orchestrator.services.vms import GUEST_IP, RootConfig, Vms, wire_state
from vers_orchestrator.store.vms import Vm

TAGS = ["vm"]
NDJSON = "application/x-ndjson"
_VM = "/api/v1/vm/{vm_id:str}"
VmId = Annotated[str, Parameter(schema_extra={"format": "uuid"})]
# Upstream reads `count` as an 8-bit integer: beyond it is a 400, as a bad query is.
Count = Annotated[int | None, Parameter(ge=0, le=255, description="How many VMs (default 1)")]
_ERRORS = {403: "Forbidden", 404: "VM not found", 500: "Internal server error"}


def _vms(request: AnyRequest) -> Vms:
    return runtime(request).vms


def vm_info(vm: Vm) -> VM:
    return VM(
        vm_id=vm.vm_id,
        owner_id=vm.owner_id,
        created_at=rfc3339(vm.created_at),
        state=wire_state(vm.state),  # type: ignore[arg-type]
        labels=vm.labels,
    )


def _new_vms(created: list[Vm]) -> NewVmsResponse:
    return NewVmsResponse(vms=[NewVmResponse(vm_id=vm.vm_id) for vm in created])


def _new_vms_error(request: AnyRequest, exc: VersError) -> Response[Any]:
    if exc.status_code == 401:
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


# ------------------------------------------------------------------- lifecycle


@post(
    "/api/v1/vm/new_root",
    operation_id="create_new_root_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="VM created successfully",
    responses=authenticated_responses(
        {
            400: "Invalid request",
            403: "Forbidden",
            429: "Server at capacity",
            500: "Internal server error",
        }
    ),
)
async def create_new_root_vm(
    request: AnyRequest, data: NewRootRequest, wait_boot: bool | None = None
) -> NewVmResponse:
    config = data.vm_config
    vm = await _vms(request).new_root(
        principal(request),
        RootConfig(
            vcpus=config.vcpu_count,
            mem_mib=config.mem_size_mib,
            disk_mib=config.fs_size_mib,
            image_name=config.image_name,
            kernel_name=config.kernel_name,
            labels=config.labels,
        ),
        wait_boot=wait_boot is not False,
    )
    return NewVmResponse(vm_id=vm.vm_id)


_LIST: dict[str, Any] = {
    "operation_id": "list_vms",
    "operation_class": ContractOperation,
    "tags": TAGS,
    "security": BEARER_AUTH,
    "response_description": "List all VMs accessible to the API key",
    "responses": authenticated_responses({403: "Forbidden", 500: "Internal server error"}),
}


@get("/api/v1/vm", **_LIST)
async def list_vms(request: AnyRequest) -> list[VM]:
    return [vm_info(vm) for vm in await _vms(request).list_vms(principal(request))]


@get("/api/v1/vms", include_in_schema=False, **_LIST)
async def list_vms_plural(request: AnyRequest) -> list[VM]:
    return [vm_info(vm) for vm in await _vms(request).list_vms(principal(request))]


@get(
    _VM + "/status",
    operation_id="vm_status",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Get status of a specific VM",
    responses=authenticated_responses({400: "Invalid VM id", **_ERRORS}),
)
async def vm_status(request: AnyRequest, vm_id: VmId) -> VM:
    return vm_info(await _vms(request).get(principal(request), vm_id))


@get(
    _VM + "/metadata",
    operation_id="get_vm_metadata",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="VM metadata",
    responses=authenticated_responses({400: "Invalid VM id", **_ERRORS}),
)
async def get_vm_metadata(request: AnyRequest, vm_id: VmId) -> VmMetadataResponse:
    found = await _vms(request).metadata(principal(request), vm_id)
    vm = found.vm
    return VmMetadataResponse(
        vm_id=vm.vm_id,
        owner_id=vm.owner_id,
        created_at=rfc3339(vm.created_at),
        deleted_at=None if vm.deleted_at is None else rfc3339(vm.deleted_at),
        state=wire_state(vm.state),  # type: ignore[arg-type]
        ip=GUEST_IP,
        parent_commit_id=vm.parent_commit_id,
        grandparent_vm_id=found.grandparent_vm_id,
        mem_size_mib=vm.mem_mib,
        vcpu_count=vm.vcpus,
    )


@patch(
    _VM + "/state",
    operation_id="update_vm_state",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="VM state updated successfully",
    responses=authenticated_responses({400: "Invalid request", 409: "VM not running", **_ERRORS}),
)
async def update_vm_state(
    request: AnyRequest,
    vm_id: VmId,
    data: VmUpdateStateRequest,
    skip_wait_boot: bool | None = None,
) -> None:
    await _vms(request).set_running(principal(request), vm_id, data.state == "Running")


@delete(
    _VM,
    operation_id="delete_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="VM deleted successfully",
    responses=authenticated_responses({400: "Invalid VM ID", **_ERRORS}),
)
async def delete_vm(
    request: AnyRequest, vm_id: VmId, skip_wait_boot: bool | None = None
) -> VmDeleteResponse:
    return VmDeleteResponse(vm_id=await _vms(request).delete(principal(request), vm_id))


@patch(
    _VM + "/disk",
    operation_id="resize_vm_disk",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="VM disk resized successfully",
    responses=authenticated_responses(
        {400: "Invalid request (e.g. new size not larger than current)", **_ERRORS}
    ),
)
async def resize_vm_disk(
    request: AnyRequest,
    vm_id: VmId,
    data: VmResizeDiskRequest,
    skip_wait_boot: bool | None = None,
) -> None:
    await _vms(request).resize_disk(principal(request), vm_id, data.fs_size_mib)


# ---------------------------------------------------------------- in the guest


@post(
    _VM + "/exec",
    operation_id="exec_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Command executed successfully",
    responses=authenticated_responses({400: "Invalid request", 409: "VM not running", **_ERRORS}),
)
async def exec_vm(request: AnyRequest, vm_id: VmId, data: VmExecRequest) -> VmExecResponse:
    outcome = await _vms(request).exec(
        principal(request),
        vm_id,
        data.command,
        data.env,
        data.working_dir,
        (data.stdin or "").encode(),
        data.timeout_secs,
        data.exec_id,
    )
    return VmExecResponse(
        exec_id=outcome.exec_id,
        exit_code=outcome.exit_code,
        stdout=outcome.stdout.decode(errors="replace"),
        stderr=outcome.stderr.decode(errors="replace"),
    )


@get(
    _VM + "/files",
    operation_id="read_file_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="File contents",
    responses=authenticated_responses({400: "Invalid request", 409: "VM not running", **_ERRORS}),
)
async def read_file_vm(
    request: AnyRequest, vm_id: VmId, path: str | None = None
) -> VmReadFileResponse:
    data = await _vms(request).read_file(principal(request), vm_id, path)
    return VmReadFileResponse(content_b64=base64.b64encode(data).decode("ascii"))


@put(
    _VM + "/files",
    operation_id="write_file_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="File written successfully",
    responses=authenticated_responses({400: "Invalid request", 409: "VM not running", **_ERRORS}),
)
async def write_file_vm(request: AnyRequest, vm_id: VmId, data: VmWriteFileRequest) -> None:
    await _vms(request).write_file(
        principal(request), vm_id, data.path, data.content_b64, data.mode, data.create_dirs
    )


@get(
    _VM + "/ssh_key",
    operation_id="ssh_key",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="The VM's SSH key and port",
    responses=authenticated_responses({400: "Invalid VM id", 409: "VM not running", **_ERRORS}),
)
async def ssh_key(request: AnyRequest, vm_id: VmId) -> VmSshKeyResponse:
    key = await _vms(request).ssh_key(principal(request), vm_id)
    return VmSshKeyResponse(ssh_port=key.port, ssh_private_key=key.private_key)


def _ndjson_line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


async def _ndjson(run: ExecRun, after: int) -> AsyncIterator[bytes]:
    """Chunks with a cursor above `after`, as they come, then the exit line."""
    position = after
    while True:
        changed = run.changed
        while position < len(run.chunks):
            chunk = run.chunks[position]
            position += 1
            yield _ndjson_line(
                {
                    "type": "chunk",
                    "exec_id": run.exec_id,
                    "cursor": chunk.cursor,
                    "stream": chunk.stream,
                    "data_b64": base64.b64encode(chunk.data).decode("ascii"),
                    "timestamp": rfc3339(chunk.timestamp),
                }
            )
        if run.exit_code is not None:
            yield _ndjson_line({"type": "exit", "exec_id": run.exec_id, "exit_code": run.exit_code})
            return
        await changed.wait()


@post(
    _VM + "/exec/stream",
    operation_id="exec_vm_stream",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    opt={STREAMING: True},
    response_description="NDJSON stream of stdout/stderr chunks",
    responses=authenticated_responses({400: "Invalid request", 409: "VM not running", **_ERRORS}),
)
async def exec_vm_stream(request: AnyRequest, vm_id: VmId, data: VmExecRequest) -> Stream:
    run = await _vms(request).exec_stream(
        principal(request),
        vm_id,
        data.command,
        data.env,
        data.working_dir,
        (data.stdin or "").encode(),
        data.timeout_secs,
        data.exec_id,
    )
    return Stream(_ndjson(run, 0), media_type=NDJSON, headers={"X-Exec-Id": run.exec_id})


@post(
    _VM + "/exec/stream/attach",
    operation_id="exec_vm_stream_attach",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    opt={STREAMING: True},
    response_description="NDJSON stream replaying from cursor",
    responses=authenticated_responses({400: "Invalid request", **_ERRORS}),
)
async def exec_vm_stream_attach(
    request: AnyRequest, vm_id: VmId, data: VmExecStreamAttachRequest
) -> Stream:
    run = _vms(request).attach(principal(request), vm_id, data.exec_id)
    after = len(run.chunks) if data.from_latest else min(data.cursor or 0, len(run.chunks))
    return Stream(_ndjson(run, after), media_type=NDJSON)


@get(
    _VM + "/logs",
    operation_id="vm_logs",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Exec logs retrieved",
    responses=authenticated_responses({400: "Invalid request", **_ERRORS}),
)
async def vm_logs(
    request: AnyRequest,
    vm_id: VmId,
    offset: Annotated[int | None, Parameter(ge=0, le=2**63 - 1)] = None,
    max_entries: Annotated[int | None, Parameter(ge=0, le=2**31 - 1)] = None,
    stream: str | None = None,
) -> VmExecLogResponse:
    entries, next_offset, eof = await _vms(request).logs(
        principal(request), vm_id, offset, max_entries, stream
    )
    return VmExecLogResponse(
        entries=[
            VmExecLogEntry(
                exec_id=entry.exec_id,
                stream=entry.stream,  # type: ignore[arg-type]
                data_b64=base64.b64encode(entry.data).decode("ascii"),
                timestamp=rfc3339(entry.timestamp),
            )
            for entry in entries
        ],
        next_offset=next_offset,
        eof=eof,
    )


# ---------------------------------------------------------------------- labels


@patch(
    _VM + "/label",
    operation_id="label_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Labels set successfully",
    responses=authenticated_responses({400: "Invalid request", **_ERRORS}),
)
async def label_vm(request: AnyRequest, vm_id: VmId, data: LabelVmRequest) -> None:
    await _vms(request).set_labels(principal(request), vm_id, data.labels, replace_all=False)


@put(
    _VM + "/labels",
    operation_id="replace_vm_labels",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Labels replaced",
    responses=authenticated_responses({400: "Invalid request", **_ERRORS}),
)
async def replace_vm_labels(request: AnyRequest, vm_id: VmId, data: LabelVmRequest) -> None:
    await _vms(request).set_labels(principal(request), vm_id, data.labels, replace_all=True)


@delete(
    _VM + "/label/{label_name:str}",
    operation_id="delete_vm_label",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Label removed",
    responses=authenticated_responses({400: "Invalid VM id", **_ERRORS}),
)
async def delete_vm_label(request: AnyRequest, vm_id: VmId, label_name: str) -> None:
    await _vms(request).delete_label(principal(request), vm_id, label_name)


# ------------------------------------------------------------------- snapshots


@post(
    _VM + "/commit",
    operation_id="commit_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="VM committed successfully",
    responses=authenticated_responses({400: "Invalid VM ID", 409: "VM not running", **_ERRORS}),
)
async def commit_vm(
    request: AnyRequest,
    vm_id: VmId,
    data: VmCommitRequest,
    keep_paused: bool | None = None,
    skip_wait_boot: bool | None = None,
) -> VmCommitResponse:
    commit = await _vms(request).commit(
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
    vm = await _vms(request).from_commit(
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
    responses=authenticated_responses({400: "Invalid VM ID", 429: "Server at capacity", **_ERRORS}),
)
async def branch_vm(
    request: AnyRequest,
    vm_or_commit_id: str,
    keep_paused: bool | None = None,
    skip_wait_boot: bool | None = None,
    count: Count = None,
) -> NewVmsResponse:
    created = await _vms(request).branch(
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
    created = await _vms(request).branch_by_vm(principal(request), vm_id, count, bool(keep_paused))
    return _new_vms(created)


@post("/api/v1/vm/branch/by_commit/{commit_id:str}", operation_id="branch_by_commit", **_BRANCH)
async def branch_by_commit(
    request: AnyRequest, commit_id: str, count: Count = None
) -> NewVmsResponse:
    return _new_vms(await _vms(request).branch_by_commit(principal(request), commit_id, count))


@post("/api/v1/vm/branch/by_tag/{tag_name:str}", operation_id="branch_by_tag", **_BRANCH)
async def branch_by_tag(request: AnyRequest, tag_name: str, count: Count = None) -> NewVmsResponse:
    return _new_vms(await _vms(request).branch_by_tag(principal(request), tag_name, count))


@post(
    "/api/v1/vm/branch/by_ref/{repo_name:str}/{tag_name:str}",
    operation_id="branch_by_ref",
    **_BRANCH,
)
async def branch_by_ref(
    request: AnyRequest, repo_name: str, tag_name: str, count: Count = None
) -> NewVmsResponse:
    created = await _vms(request).branch_by_ref(principal(request), repo_name, tag_name, count)
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
    result = await _vms(request).fork(
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
