"""OpenAPI pieces shared by the routes, and the document at `/openapi.json`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar import get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIType

from vers_orchestrator.api.middleware import PUBLIC
from vers_orchestrator.api.runtime import AnyRequest
from vers_orchestrator.schemas.common import ErrorResponse

BEARER_AUTH: list[dict[str, list[str]]] = [{"bearer_auth": []}]
_GENERATED_400 = HTTPStatus.BAD_REQUEST.description


def error_responses(descriptions: Mapping[int, str]) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=ErrorResponse, description=description, generate_examples=False
        )
        for status, description in descriptions.items()
    }


@get("/openapi.json", include_in_schema=False, opt={PUBLIC: True}, sync_to_thread=False)
def openapi_document(request: AnyRequest) -> dict[str, Any]:
    document: dict[str, Any] = request.app.openapi_schema.to_schema()
    return document


def authenticated_responses(descriptions: Mapping[int, str]) -> dict[int, ResponseSpec]:
    """The error responses of a route behind `bearer_auth`; 401 has no body schema upstream."""
    return {
        **error_responses(descriptions),
        401: ResponseSpec(data_container=None, description="Unauthorized"),
    }


@dataclass
class ContractOperation(Operation):
    """An operation documenting exactly the error responses its route lists.

    Litestar adds a 400, in its own error shape, to every route with parameters. Ours
    render every error as `ErrorResponse`, and a route lists 400 where it can answer one,
    so the generated response set matches the upstream contract.
    """

    def __post_init__(self) -> None:
        generated = (self.responses or {}).get("400")
        if isinstance(generated, OpenAPIResponse) and generated.description == _GENERATED_400:
            del self.responses["400"]  # type: ignore[union-attr]


_BINARY = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format="binary"))  # type: ignore[arg-type]


@dataclass
class NdjsonOperation(ContractOperation):
    """exec/stream and its attach: the 200 is `application/x-ndjson`, a JSON object a line
    (`{"type": "chunk", …}` as chunks come, then `{"type": "exit", …}`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                "application/x-ndjson": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.STRING,
                        description="One JSON object per line: chunks, then the exit",
                    )
                )
            }


@dataclass
class FilesReadOperation(ContractOperation):
    """GET …/files: JSON by the contract, or the raw bytes with
    `Accept: application/octet-stream` (any size, streamed)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse) and ok.content is not None:
            ok.content["application/octet-stream"] = _BINARY


@dataclass
class FilesWriteOperation(ContractOperation):
    """PUT …/files: JSON by the contract, or the raw bytes as
    `Content-Type: application/octet-stream`, with `path`, `mode` (octal) and `create_dirs`
    in the query (any size, streamed)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.request_body, RequestBody):
            self.request_body.content["application/octet-stream"] = _BINARY
        raw_only = "with Content-Type: application/octet-stream only"
        self.parameters = [
            *(self.parameters or []),
            Parameter(
                name="path",
                param_in="query",
                required=False,
                schema=Schema(type=OpenAPIType.STRING),
                description=f"Destination path on the VM, {raw_only}",
            ),
            Parameter(
                name="mode",
                param_in="query",
                required=False,
                schema=Schema(type=OpenAPIType.STRING, pattern="^[0-7]{1,4}$"),
                description=f"File mode in octal (e.g. 0755), {raw_only}",
            ),
            Parameter(
                name="create_dirs",
                param_in="query",
                required=False,
                schema=Schema(type=OpenAPIType.BOOLEAN),
                description=f"Create missing parent directories, {raw_only}",
            ),
        ]


@dataclass
class ImageUploadOperation(ContractOperation):
    """POST /images/upload: the tar of a root filesystem as the multipart part `file` (or
    `tarball`), or as the whole body; `image_name` and `size_mib` in the query."""

    def __post_init__(self) -> None:
        super().__post_init__()
        form = Schema(
            type=OpenAPIType.OBJECT,
            properties={"file": Schema(type=OpenAPIType.STRING, format="binary")},  # type: ignore[arg-type]
            required=["file"],
        )
        self.request_body = RequestBody(
            required=True,
            description="A tar of a whole root filesystem, optionally gzip, xz or zstd"
            " compressed: as the multipart part `file` (or `tarball`), or as the body",
            content={
                "multipart/form-data": OpenAPIMediaType(schema=form),
                "application/x-tar": _BINARY,
            },
        )
