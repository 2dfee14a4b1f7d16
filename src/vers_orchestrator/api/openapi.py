"""OpenAPI pieces shared by the routes, and the document at `/openapi.json`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar import get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIResponse, Operation

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
