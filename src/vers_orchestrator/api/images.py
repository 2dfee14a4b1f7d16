"""`/api/v1/images`: users' images and their build jobs. HTTP only.

`POST /api/v1/images/upload?image_name=…[&size_mib=…]` takes the hosted service's
multipart form (the first part named `file` or `tarball`) and, beyond it, the tar itself as
the body (any other Content-Type, e.g. `application/x-tar`). Either way the tar is streamed
to disk as it comes, never held in memory. The official SDK's form (JSON, no query) cannot
carry a file: it gets a 400 that says what to send.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO
from urllib.parse import parse_qs

import multipart
from litestar import delete, get, post
from litestar.params import Parameter

from vers_orchestrator.api.asgi import RawReceive, RawSend, body_chunks, declared_length
from vers_orchestrator.api.commits import Limit, Offset
from vers_orchestrator.api.middleware import RAW
from vers_orchestrator.api.openapi import (
    BEARER_AUTH,
    ContractOperation,
    ImageUploadOperation,
    authenticated_responses,
)
from vers_orchestrator.api.responses import json_reply
from vers_orchestrator.api.runtime import CONTEXT_KEY, RUNTIME_KEY, AnyRequest, Runtime, principal
from vers_orchestrator.api.runtime import runtime as runtime_of
from vers_orchestrator.errors import (
    BadRequest,
    InvalidQuery,
    PayloadTooLarge,
    UploadNotUnderstood,
)
from vers_orchestrator.schemas.common import rfc3339_offset
from vers_orchestrator.schemas.images import (
    BaseImageInfo,
    BaseImageStatusResponse,
    CreateBaseImageRequest,
    CreateBaseImageResponse,
    DeleteBaseImageResponse,
    DockerSource,
    ListBaseImagesResponse,
    UploadBaseImageResponse,
)
from vers_orchestrator.services import images as image_service
from vers_orchestrator.store.images import Image

TAGS = ["images"]
_INT32 = {"ge": -(2**31), "le": 2**31 - 1}
# Written to disk in pieces of about this size, each in a thread.
WRITE_BUFFER = 1024 * 1024
UPLOAD_FIELDS = ("file", "tarball")
HOW_TO_UPLOAD = (
    "upload a tar of a whole root filesystem (optionally gzip, xz or zstd compressed):"
    " POST /api/v1/images/upload?image_name=NAME[&size_mib=N] with a multipart/form-data"
    " body whose part 'file' (or 'tarball') holds the tar, or with the tar itself as the"
    " body (Content-Type: application/x-tar)"
)
SizeMib = Annotated[
    int | None,
    Parameter(description="Extra space in MiB beyond the files (default 512, 0-32768)", **_INT32),
]


def image_info(image: Image) -> BaseImageInfo:
    return BaseImageInfo(
        base_image_id=image.base_image_id,
        image_name=image.image_name,
        owner_id=image.owner_id,
        is_public=image.is_public,
        source_type=image.source_type,
        size_mib=image.size_mib,
        description=image.description,
        created_at=rfc3339_offset(image.created_at),
    )


@get(
    "/api/v1/images",
    operation_id="list_images",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="List of base images",
    responses=authenticated_responses({400: "Invalid query", 500: "Internal server error"}),
)
async def list_images(
    request: AnyRequest, limit: Limit = None, offset: Offset = None
) -> ListBaseImagesResponse:
    page = await runtime_of(request).images.list(principal(request), limit, offset)
    return ListBaseImagesResponse(
        images=[image_info(image) for image in page.images],
        total=page.total,
        limit=page.limit,
        offset=page.offset,
    )


@post(
    "/api/v1/images/create",
    operation_id="create_image",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="Image creation job started",
    responses=authenticated_responses(
        {
            400: "Invalid request",
            409: "Image name already exists",
            500: "Internal server error",
        }
    ),
)
async def create_image(
    request: AnyRequest, data: CreateBaseImageRequest
) -> CreateBaseImageResponse:
    source = data.source
    wire: dict[str, str] = (
        {"type": "docker", "image_ref": source.image_ref}
        if isinstance(source, DockerSource)
        else {"type": "s3", "bucket": source.bucket, "key": source.key}
    )
    job = await runtime_of(request).images.create(
        principal(request), data.image_name, wire, data.size_mib, data.description
    )
    return CreateBaseImageResponse(job_id=job.job_id, image_name=job.image_name, status=job.status)


@get(
    "/api/v1/images/{image_name:str}/status",
    operation_id="get_image_status",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Image status",
    responses=authenticated_responses({404: "Image not found", 500: "Internal server error"}),
)
async def get_image_status(request: AnyRequest, image_name: str) -> BaseImageStatusResponse:
    # Routing keeps an encoded slash as `%2F` inside its segment (api/paths.py); image names
    # may hold `/` but never `%`, so this is exactly the name the client encoded.
    image_name = image_name.replace("%2F", "/")
    found = await runtime_of(request).images.status(principal(request), image_name)
    return BaseImageStatusResponse(
        image_name=found.image_name,
        status=found.status,
        size_mib=found.size_mib,
        error_message=found.error_message,
    )


@delete(
    "/api/v1/images/images/{base_image_id:str}",
    operation_id="delete_image",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Image deleted successfully",
    responses=authenticated_responses(
        {
            400: "Invalid base_image_id",
            404: "Image not found",
            409: "Image is in use by VMs",
            500: "Internal server error",
        }
    ),
)
async def delete_image(request: AnyRequest, base_image_id: str) -> DeleteBaseImageResponse:
    deleted, canonical = await runtime_of(request).images.delete(principal(request), base_image_id)
    return DeleteBaseImageResponse(deleted=deleted, base_image_id=canonical)


class UploadRoute:
    """Every upload is read here, before Litestar would read a body into memory."""

    def wants(self, headers: dict[bytes, bytes]) -> bool:
        return True

    async def __call__(self, scope: Any, receive: RawReceive, send: RawSend) -> None:
        app_runtime: Runtime = scope["litestar_app"].state[RUNTIME_KEY]
        headers: dict[bytes, bytes] = scope[CONTEXT_KEY].headers
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media_type, options = multipart.parse_options_header(content_type)
        if media_type.lower() == "application/json":
            raise UploadNotUnderstood(HOW_TO_UPLOAD)
        image_name, size_mib = _upload_query(scope.get("query_string", b""))
        # Refused before a byte of the body is read: nobody uploads 1 GiB to learn that.
        image_service.check_name(image_name)
        if size_mib is not None:
            image_service.check_extra_size(size_mib)
        limit = app_runtime.settings.max_image_upload_bytes
        declared = declared_length(headers)
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
        images = app_runtime.images
        path = await asyncio.to_thread(images.upload_file)
        try:
            if media_type.lower() == "multipart/form-data":
                boundary = options.get("boundary")
                if not boundary:
                    raise BadRequest("Failed to read upload: no multipart boundary")
                await _save_multipart(body_chunks(receive), boundary, path, limit)
            else:
                await _save(body_chunks(receive), path, limit)
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise
        job = await images.upload(scope["auth"], image_name, size_mib, path)
        reply = UploadBaseImageResponse(
            job_id=job.job_id, image_name=job.image_name, status=job.status
        )
        await json_reply(reply, 201)(scope, receive, send)


def _upload_query(query_string: bytes) -> tuple[str, int | None]:
    try:
        query = parse_qs(query_string.decode("ascii"), errors="strict")
    except UnicodeError:
        raise InvalidQuery("not UTF-8") from None
    names = query.get("image_name")
    if not names:
        raise InvalidQuery("missing field `image_name`")
    sizes = query.get("size_mib")
    if not sizes:
        return names[-1], None
    # The middleware has checked that size_mib is an integer; not that it is a short one.
    try:
        return names[-1], int(sizes[-1])
    except ValueError:
        raise InvalidQuery("size_mib: invalid digit found in string") from None


class _File:
    """Buffered writes of an upload, each flush in a thread; counts against `limit`."""

    def __init__(self, file: BinaryIO, limit: int) -> None:
        self._file = file
        self._limit = limit
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._limit:
            raise PayloadTooLarge(f"the upload is larger than {self._limit} bytes")
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= WRITE_BUFFER:
            await self.flush()

    async def flush(self) -> None:
        data = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        if data:
            await asyncio.to_thread(self._file.write, data)


async def _save(chunks: AsyncIterator[bytes], path: Path, limit: int) -> None:
    with open(path, "wb") as file:  # noqa: ASYNC230 (an empty file just made)
        out = _File(file, limit)
        async for chunk in chunks:
            await out.write(chunk)
        await out.flush()
    if out.size == 0:
        raise UploadNotUnderstood(f"the upload is empty: {HOW_TO_UPLOAD}")


async def _save_multipart(
    chunks: AsyncIterator[bytes], boundary: str, path: Path, limit: int
) -> None:
    """The first part named `file` or `tarball` into `path`; the other parts are skipped
    (but count against `limit`, as the whole body does)."""
    parser = multipart.PushMultipartParser(boundary, max_segment_count=1000)
    found = saving = done = False
    received = 0
    with open(path, "wb") as file:  # noqa: ASYNC230 (an empty file just made)
        out = _File(file, limit)
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        saving = not found and event.name in UPLOAD_FIELDS
                        found = found or saving
                    elif event is None:
                        done = done or saving
                        saving = False
                    elif saving:
                        await out.write(event)
            for _ in parser.parse(b""):
                pass
        except multipart.MultipartError as exc:  # malformed, or past the parser's limits
            raise BadRequest(f"Failed to read upload: {exc}") from None
        await out.flush()
    if not done:
        raise BadRequest("No file field found in upload. Use field name 'file' or 'tarball'.")


@post(
    "/api/v1/images/upload",
    operation_id="upload_image",
    operation_class=ImageUploadOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    opt={RAW: UploadRoute()},
    response_description="Image upload started",
    responses=authenticated_responses(
        {
            400: "Invalid request",
            409: "Image name already exists",
            413: "Upload too large",
            500: "Internal server error",
        }
    ),
)
async def upload_image(
    request: AnyRequest, image_name: str | None = None, size_mib: SizeMib = None
) -> UploadBaseImageResponse:
    raise UploadNotUnderstood(HOW_TO_UPLOAD)  # never reached: UploadRoute reads every upload
