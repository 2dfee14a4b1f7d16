"""VM wire models, named and shaped as the upstream OpenAPI components (SDK 1.20.0)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from vers_orchestrator.schemas.common import timestamp_field, uuid_field

VmState = Literal["booting", "running", "paused", "sleeping", "dead"]
Labels = dict[str, str]


class VmCreateVmConfig(msgspec.Struct, kw_only=True):
    """Struct representing configuration options common to all VMs"""

    fs_size_mib: (
        Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1, description="The disk size, in MiB.")]
        | None
    ) = None
    image_name: Annotated[
        str | None,
        msgspec.Meta(
            description="The filesystem base image: 'default' (the built-in image), or the"
            " name of an image of the caller's organization (POST /api/v1/images/create or"
            " /upload)"
        ),
    ] = None
    kernel_name: Annotated[
        str | None,
        msgspec.Meta(description="The kernel name. Currently, must be 'default.bin'"),
    ] = None
    labels: Labels | None = None
    mem_size_mib: (
        Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1, description="The RAM size, in MiB.")] | None
    ) = None
    vcpu_count: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=2**31 - 1,
                description="How many vCPUs to allocate to this VM (and its children)",
            ),
        ]
        | None
    ) = None


class NewRootRequest(msgspec.Struct):
    vm_config: VmCreateVmConfig


class NewVmResponse(msgspec.Struct):
    """Response body for new VM requests (new_root, from_commit, branch)"""

    vm_id: str


class NewVmsResponse(msgspec.Struct):
    vms: list[NewVmResponse]


class VM(msgspec.Struct, kw_only=True):
    vm_id: Annotated[str, uuid_field("The VM's id")]
    owner_id: Annotated[str, uuid_field("The API key that made the VM")]
    created_at: Annotated[str, timestamp_field()]
    state: VmState
    labels: Labels | None = None


class VmMetadataResponse(msgspec.Struct, kw_only=True):
    """Response for GET /api/v1/vm/{vm_id}/metadata"""

    vm_id: Annotated[str, uuid_field("The VM's id")]
    owner_id: Annotated[str, uuid_field("The API key that made the VM")]
    created_at: Annotated[str, timestamp_field()]
    deleted_at: Annotated[str | None, timestamp_field()] = None
    state: VmState
    ip: str
    parent_commit_id: Annotated[str | None, uuid_field("The commit it was started from")] = None
    grandparent_vm_id: Annotated[str | None, uuid_field("The VM that commit was taken of")] = None
    mem_size_mib: int
    vcpu_count: int


class VmDeleteResponse(msgspec.Struct):
    """Response body for DELETE /api/vm/{vm_id}"""

    vm_id: str


class VmUpdateStateRequest(msgspec.Struct):
    """Request body for PATCH /api/vm/{vm_id}/state"""

    # `Sleeping` is the SDK's name, `Paused` the older spec's; both pause the vCPUs.
    state: Literal["Sleeping", "Paused", "Running"]


class VmResizeDiskRequest(msgspec.Struct):
    """Request body for PATCH /api/vm/{vm_id}/disk"""

    fs_size_mib: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=2**31 - 1,
            description="The new disk size in MiB. Must be strictly greater than the current size.",
        ),
    ]


class VmExecRequest(msgspec.Struct, kw_only=True):
    """Request body for POST /api/vm/{vm_id}/exec"""

    command: Annotated[list[str], msgspec.Meta(description="Command and arguments to execute.")]
    env: Labels | None = None
    exec_id: Annotated[str | None, uuid_field("Optional exec identifier for tracking.")] = None
    stdin: str | None = None
    timeout_secs: (
        Annotated[
            int,
            msgspec.Meta(ge=0, le=2**63 - 1, description="Timeout in seconds (0 = no timeout)."),
        ]
        | None
    ) = None
    working_dir: str | None = None


class VmExecResponse(msgspec.Struct, kw_only=True):
    """Response body for POST /api/vm/{vm_id}/exec"""

    exec_id: str | None = None
    exit_code: int
    stdout: Annotated[str, msgspec.Meta(description="UTF-8 decoded stdout (lossy).")]
    stderr: Annotated[str, msgspec.Meta(description="UTF-8 decoded stderr (lossy).")]
    # Beyond the contract: what the reply does not carry, said outright.
    stdout_truncated: Annotated[
        bool,
        msgspec.Meta(
            description="The command wrote more stdout than a plain exec keeps (16 MiB); the"
            " rest was dropped. exec/stream has no limit."
        ),
    ] = False
    stderr_truncated: Annotated[
        bool, msgspec.Meta(description="As stdout_truncated, for stderr.")
    ] = False
    timed_out: Annotated[
        bool,
        msgspec.Meta(
            description="The command outlived timeout_secs and was killed with every process"
            " it started (exit_code is then 124)."
        ),
    ] = False


class VmExecStreamAttachRequest(msgspec.Struct, kw_only=True):
    """Request body for POST /api/vm/{vm_id}/exec/stream/attach"""

    exec_id: Annotated[str, uuid_field("Identifier of the exec stream session to reattach to.")]
    cursor: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=2**63 - 1,
                description="Optional cursor to resume from (exclusive). If omitted, the full"
                " retained backlog is replayed.",
            ),
        ]
        | None
    ) = None
    from_latest: Annotated[
        bool | None,
        msgspec.Meta(description="Start streaming after the latest retained chunk."),
    ] = None


class VmExecLogEntry(msgspec.Struct, kw_only=True):
    """Individual log entry describing emitted stdout/stderr chunk."""

    exec_id: str | None = None
    stream: Literal["stdout", "stderr"]
    data_b64: Annotated[str, msgspec.Meta(description="Base64-encoded bytes of the chunk.")]
    timestamp: str


class VmExecLogResponse(msgspec.Struct, kw_only=True):
    """Response for exec log tail requests."""

    entries: list[VmExecLogEntry]
    next_offset: Annotated[int, msgspec.Meta(description="Next offset to continue from.")]
    eof: Annotated[bool, msgspec.Meta(description="True when the end was reached.")]


class VmReadFileResponse(msgspec.Struct):
    """Response body for GET /api/vm/{vm_id}/files"""

    content_b64: Annotated[str, msgspec.Meta(description="File contents, base64-encoded.")]


class VmWriteFileRequest(msgspec.Struct, kw_only=True):
    """Request body for PUT /api/vm/{vm_id}/files"""

    path: Annotated[str, msgspec.Meta(description="Destination path on the VM.")]
    content_b64: Annotated[str, msgspec.Meta(description="File contents, base64-encoded.")]
    create_dirs: bool = False
    mode: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None


class VmSshKeyResponse(msgspec.Struct):
    """Response body for GET /api/vm/{vm_id}/ssh_key"""

    ssh_port: int
    ssh_private_key: Annotated[
        str, msgspec.Meta(description="Private SSH key in stringified OpenSSH format")
    ]


class VmCommitRequest(msgspec.Struct, kw_only=True):
    """The request body for POST /api/vm/{vm_id}/commit"""

    name: str | None = None
    description: str | None = None


class VmCommitResponse(msgspec.Struct):
    """The response body for POST /api/vm/{vm_id}/commit"""

    commit_id: Annotated[str, uuid_field("The UUID of the newly-created commit")]


class FromCommitVmRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Request body for POST /api/v1/vm/from_commit: exactly one of the three keys."""

    commit_id: str | None = None
    tag_name: str | None = None
    ref: Annotated[
        str | None,
        msgspec.Meta(
            description='"repo_name:tag_name" in your organization, or'
            ' "org_name/repo_name:tag_name" of a public repository'
        ),
    ] = None


class LabelVmRequest(msgspec.Struct):
    labels: Labels


class ForkRepositoryRequest(msgspec.Struct, kw_only=True):
    """Request body for POST /api/v1/repositories/fork"""

    source_org: str
    source_repo: str
    source_tag: str
    repo_name: str | None = None
    tag_name: str | None = None


class ForkRepositoryResponse(msgspec.Struct, kw_only=True):
    """Response body for POST /api/v1/repositories/fork"""

    vm_id: str
    commit_id: Annotated[str, uuid_field("The new commit in your org")]
    repo_name: str
    tag_name: str
    reference: str
