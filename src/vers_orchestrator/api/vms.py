"""`/api/v1/vm…` and `/api/v1/vms`: a VM's lifecycle and labels. HTTP only.

The rules live in `services.vms`. What runs inside a VM is in `api/vm_guest.py`; commits,
branches and fork in `api/vm_snapshots.py`. Errors are `ErrorResponse`.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import delete, get, patch, post, put
from litestar.params import Parameter

from vers_orchestrator.api.openapi import BEARER_AUTH, ContractOperation, authenticated_responses
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.schemas.vms import (
    VM,
    LabelVmRequest,
    NewRootRequest,
    NewVmResponse,
    VmDeleteResponse,
    VmMetadataResponse,
    VmResizeDiskRequest,
    VmUpdateStateRequest,
)
from vers_orchestrator.services.vms import GUEST_IP, RootConfig, Vms, wire_state
from vers_orchestrator.store.vms import Vm

TAGS = ["vm"]
VM_PATH = "/api/v1/vm/{vm_id:str}"
VmId = Annotated[str, Parameter(schema_extra={"format": "uuid"})]
ERRORS = {403: "Forbidden", 404: "VM not found", 500: "Internal server error"}


def vms(request: AnyRequest) -> Vms:
    return runtime(request).vms


def vm_info(vm: Vm) -> VM:
    return VM(
        vm_id=vm.vm_id,
        owner_id=vm.owner_id,
        created_at=rfc3339(vm.created_at),
        state=wire_state(vm.state),  # type: ignore[arg-type]
        labels=vm.labels,
    )


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
    vm = await vms(request).lifecycle.new_root(
        principal(request),
        RootConfig(
            vcpus=config.vcpu_count,
            mem_mib=config.mem_size_mib,
            disk_mib=config.fs_size_mib,
            image_name=config.image_name,
            kernel_name=config.kernel_name,
            labels=config.labels,
        ),
        wait_boot=wait_boot is True,
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
    return [vm_info(vm) for vm in await vms(request).lifecycle.list_vms(principal(request))]


@get("/api/v1/vms", include_in_schema=False, **_LIST)
async def list_vms_plural(request: AnyRequest) -> list[VM]:
    return [vm_info(vm) for vm in await vms(request).lifecycle.list_vms(principal(request))]


@get(
    VM_PATH + "/status",
    operation_id="vm_status",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Get status of a specific VM",
    responses=authenticated_responses({400: "Invalid VM id", **ERRORS}),
)
async def vm_status(request: AnyRequest, vm_id: VmId) -> VM:
    return vm_info(await vms(request).lifecycle.get(principal(request), vm_id))


@get(
    VM_PATH + "/metadata",
    operation_id="get_vm_metadata",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="VM metadata",
    responses=authenticated_responses({400: "Invalid VM id", **ERRORS}),
)
async def get_vm_metadata(request: AnyRequest, vm_id: VmId) -> VmMetadataResponse:
    found = await vms(request).lifecycle.metadata(principal(request), vm_id)
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
    VM_PATH + "/state",
    operation_id="update_vm_state",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="VM state updated successfully",
    responses=authenticated_responses({400: "Invalid request", 409: "VM not running", **ERRORS}),
)
async def update_vm_state(
    request: AnyRequest,
    vm_id: VmId,
    data: VmUpdateStateRequest,
    skip_wait_boot: bool | None = None,
) -> None:
    await vms(request).lifecycle.set_running(principal(request), vm_id, data.state == "Running")


@delete(
    VM_PATH,
    operation_id="delete_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="VM deleted successfully",
    responses=authenticated_responses({400: "Invalid VM ID", **ERRORS}),
)
async def delete_vm(
    request: AnyRequest, vm_id: VmId, skip_wait_boot: bool | None = None
) -> VmDeleteResponse:
    return VmDeleteResponse(vm_id=await vms(request).lifecycle.delete(principal(request), vm_id))


@patch(
    VM_PATH + "/disk",
    operation_id="resize_vm_disk",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="VM disk resized successfully",
    responses=authenticated_responses(
        {400: "Invalid request (e.g. new size not larger than current)", **ERRORS}
    ),
)
async def resize_vm_disk(
    request: AnyRequest,
    vm_id: VmId,
    data: VmResizeDiskRequest,
    skip_wait_boot: bool | None = None,
) -> None:
    await vms(request).lifecycle.resize_disk(principal(request), vm_id, data.fs_size_mib)


# ---------------------------------------------------------------------- labels


@patch(
    VM_PATH + "/label",
    operation_id="label_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Labels set successfully",
    responses=authenticated_responses({400: "Invalid request", **ERRORS}),
)
async def label_vm(request: AnyRequest, vm_id: VmId, data: LabelVmRequest) -> None:
    await vms(request).lifecycle.set_labels(
        principal(request), vm_id, data.labels, replace_all=False
    )


@put(
    VM_PATH + "/labels",
    operation_id="replace_vm_labels",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Labels replaced",
    responses=authenticated_responses({400: "Invalid request", **ERRORS}),
)
async def replace_vm_labels(request: AnyRequest, vm_id: VmId, data: LabelVmRequest) -> None:
    await vms(request).lifecycle.set_labels(
        principal(request), vm_id, data.labels, replace_all=True
    )


@delete(
    VM_PATH + "/label/{label_name:str}",
    operation_id="delete_vm_label",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Label removed",
    responses=authenticated_responses({400: "Invalid VM id", **ERRORS}),
)
async def delete_vm_label(request: AnyRequest, vm_id: VmId, label_name: str) -> None:
    await vms(request).lifecycle.delete_label(principal(request), vm_id, label_name)
