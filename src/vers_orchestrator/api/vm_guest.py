"""Inside a VM: exec (whole or streamed), its logs, files, SSH. HTTP only.

Beyond the contract, the files routes also move raw bytes, streamed both ways with flat
server memory: `GET …/files?path=…` with `Accept: application/octet-stream`, and
`PUT …/files?path=…[&mode=0644][&create_dirs=true]` with
`Content-Type: application/octet-stream`. The route middleware hands those requests to
`RawFileRoute` before Litestar reads any body; everything else is the JSON contract.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import parse_qs

from litestar import get, post, put
from litestar.params import Parameter
from litestar.response import Stream

from vers_orchestrator.api.asgi import (
    Message,
    RawReceive,
    RawSend,
    body_chunks,
    declared_length,
)
from vers_orchestrator.api.middleware import RAW, STREAMING
from vers_orchestrator.api.openapi import (
    BEARER_AUTH,
    ContractOperation,
    FilesReadOperation,
    FilesWriteOperation,
    NdjsonOperation,
    authenticated_responses,
)
from vers_orchestrator.api.responses import json_reply
from vers_orchestrator.api.runtime import CONTEXT_KEY, RUNTIME_KEY, AnyRequest, Runtime, principal
from vers_orchestrator.api.vms import ERRORS, TAGS, VM_PATH, VmId, vms
from vers_orchestrator.auth import Principal
from vers_orchestrator.errors import BadRequest, BodyIncomplete, InvalidQuery
from vers_orchestrator.schemas.vms import (
    VmExecLogEntry,
    VmExecLogResponse,
    VmExecRequest,
    VmExecResponse,
    VmExecStreamAttachRequest,
    VmReadFileResponse,
    VmSshKeyResponse,
    VmWriteFileRequest,
)
from vers_orchestrator.services.vms.guest import Command

log = logging.getLogger("vers_orchestrator.api")

NDJSON = "application/x-ndjson"
OCTET_STREAM = b"application/octet-stream"
_GUEST_ERRORS = {
    400: "Invalid request",
    409: "VM not running",
    **ERRORS,
    502: "The VM's agent is not answering",
}


# ------------------------------------------------------------------------ exec


def _command(data: VmExecRequest) -> Command:
    return Command(
        argv=data.command,
        env=data.env,
        working_dir=data.working_dir,
        stdin=(data.stdin or "").encode(),
        timeout_seconds=data.timeout_secs,
        exec_id=data.exec_id,
    )


@post(
    VM_PATH + "/exec",
    operation_id="exec_vm",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Command executed successfully",
    responses=authenticated_responses(_GUEST_ERRORS),
)
async def exec_vm(request: AnyRequest, vm_id: VmId, data: VmExecRequest) -> VmExecResponse:
    outcome = await vms(request).guest.exec(principal(request), vm_id, _command(data))
    return VmExecResponse(
        exec_id=outcome.exec_id,
        exit_code=outcome.exit_code,
        stdout=outcome.stdout.decode(errors="replace"),
        stderr=outcome.stderr.decode(errors="replace"),
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        timed_out=outcome.timed_out,
    )


@post(
    VM_PATH + "/exec/stream",
    operation_id="exec_vm_stream",
    operation_class=NdjsonOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    opt={STREAMING: True},
    response_description="NDJSON stream of stdout/stderr chunks",
    responses=authenticated_responses(_GUEST_ERRORS),
)
async def exec_vm_stream(request: AnyRequest, vm_id: VmId, data: VmExecRequest) -> Stream:
    guest = vms(request).guest
    stream = await guest.exec_stream(principal(request), vm_id, _command(data))
    return Stream(
        guest.stream_lines(stream, 0),
        media_type=NDJSON,
        headers={"X-Exec-Id": stream.run.exec_id},
    )


@post(
    VM_PATH + "/exec/stream/attach",
    operation_id="exec_vm_stream_attach",
    operation_class=NdjsonOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    opt={STREAMING: True},
    response_description="NDJSON stream replaying from cursor",
    responses=authenticated_responses({400: "Invalid request", **ERRORS}),
)
async def exec_vm_stream_attach(
    request: AnyRequest, vm_id: VmId, data: VmExecStreamAttachRequest
) -> Stream:
    guest = vms(request).guest
    stream = await guest.attach(principal(request), vm_id, data.exec_id)
    chunks = len(stream.run.entries)
    after = chunks if data.from_latest else min(data.cursor or 0, chunks)
    return Stream(guest.stream_lines(stream, after), media_type=NDJSON)


@get(
    VM_PATH + "/logs",
    operation_id="vm_logs",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Exec logs retrieved",
    responses=authenticated_responses({400: "Invalid request", **ERRORS}),
)
async def vm_logs(
    request: AnyRequest,
    vm_id: VmId,
    offset: Annotated[int | None, Parameter(ge=0, le=2**63 - 1)] = None,
    max_entries: Annotated[int | None, Parameter(ge=0, le=2**31 - 1)] = None,
    stream: str | None = None,
) -> VmExecLogResponse:
    entries, next_offset, eof = await vms(request).guest.logs(
        principal(request), vm_id, offset, max_entries, stream
    )
    return VmExecLogResponse(
        entries=[
            VmExecLogEntry(
                exec_id=entry.exec_id,
                stream=entry.stream,  # type: ignore[arg-type]
                data_b64=entry.data_b64,
                timestamp=entry.timestamp,
            )
            for entry in entries
        ],
        next_offset=next_offset,
        eof=eof,
    )


# ----------------------------------------------------------------------- files


class RawFileRoute:
    """The raw form of a files route: `wants` says whether a request is one."""

    def __init__(self, upload: bool) -> None:
        self._upload = upload

    def wants(self, headers: dict[bytes, bytes]) -> bool:
        if self._upload:
            content_type = headers.get(b"content-type", b"")
            return content_type.split(b";", 1)[0].strip().lower() == OCTET_STREAM
        return OCTET_STREAM in headers.get(b"accept", b"").lower()

    async def __call__(self, scope: Any, receive: RawReceive, send: RawSend) -> None:
        caller: Principal = scope["auth"]
        app_runtime: Runtime = scope["litestar_app"].state[RUNTIME_KEY]
        guest = app_runtime.vms.guest
        vm_id = scope["path_params"]["vm_id"]
        try:
            query = parse_qs(scope.get("query_string", b"").decode("ascii"), errors="strict")
        except UnicodeError:
            raise InvalidQuery("not UTF-8") from None
        path = query.get("path", [None])[-1]
        if self._upload:
            mode = _octal_mode(query.get("mode", [None])[-1])
            create_dirs = _flag(query.get("create_dirs", ["false"])[-1])
            headers = scope[CONTEXT_KEY].headers
            try:
                await guest.upload(
                    caller,
                    vm_id,
                    path,
                    body_chunks(receive),
                    mode,
                    create_dirs,
                    declared_length(headers),
                )
            except BodyIncomplete:
                return  # the guest has dropped the partial file; nobody is left to tell
            await json_reply(None, 200)(scope, receive, send)
            return
        download = await guest.download(caller, vm_id, path)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", OCTET_STREAM),
                    (b"content-length", str(download.size).encode("ascii")),
                ],
            }
        )
        await _send_until_gone(download.chunks, receive, send)


async def _send_until_gone(
    chunks: AsyncIterator[bytes], receive: RawReceive, send: RawSend
) -> None:
    """Send every chunk, unless the client leaves first: then stop reading the file."""

    async def copy() -> None:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def gone() -> None:
        message: Message = {}
        while message.get("type") != "http.disconnect":
            message = await receive()

    copying = asyncio.ensure_future(copy())
    watching = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({copying, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (copying, watching):
            task.cancel()
        await asyncio.wait({copying, watching})
        await chunks.aclose()  # type: ignore[attr-defined]
    failure = None if copying.cancelled() else copying.exception()
    if failure is not None:
        # The status line is out: all that is left is to cut the body short, which the
        # client sees against Content-Length.
        log.error("a file download stopped half-way: %r", failure)


def _octal_mode(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        mode = int(value, 8)
    except ValueError:
        raise InvalidQuery(f"mode must be octal: {value!r}") from None
    if not 0 <= mode <= 0o7777:
        raise BadRequest("mode must be between 0 and 0o7777")
    return mode


def _flag(value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidQuery("create_dirs must be true or false")


@get(
    VM_PATH + "/files",
    operation_id="read_file_vm",
    operation_class=FilesReadOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    opt={RAW: RawFileRoute(upload=False)},
    response_description="File contents",
    responses=authenticated_responses({**_GUEST_ERRORS, 413: "File too large for JSON"}),
)
async def read_file_vm(
    request: AnyRequest, vm_id: VmId, path: str | None = None
) -> VmReadFileResponse:
    data = await vms(request).guest.read_file(principal(request), vm_id, path)
    return VmReadFileResponse(content_b64=base64.b64encode(data).decode("ascii"))


@put(
    VM_PATH + "/files",
    operation_id="write_file_vm",
    operation_class=FilesWriteOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    opt={RAW: RawFileRoute(upload=True)},
    response_description="File written successfully",
    responses=authenticated_responses({**_GUEST_ERRORS, 413: "File too large for JSON"}),
)
async def write_file_vm(request: AnyRequest, vm_id: VmId, data: VmWriteFileRequest) -> None:
    await vms(request).guest.write_file(
        principal(request), vm_id, data.path, data.content_b64, data.mode, data.create_dirs
    )


@get(
    VM_PATH + "/ssh_key",
    operation_id="ssh_key",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="The VM's SSH key and port",
    responses=authenticated_responses({400: "Invalid VM id", 409: "VM not running", **ERRORS}),
)
async def ssh_key(request: AnyRequest, vm_id: VmId) -> VmSshKeyResponse:
    key = await vms(request).guest.ssh_key(principal(request), vm_id)
    return VmSshKeyResponse(ssh_port=key.port, ssh_private_key=key.private_key)
