"""OpenAPI pieces shared by the routes, and the document at `/openapi.json`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import get
from litestar.openapi.datastructures import ResponseSpec

from vers_orchestrator.api.middleware import PUBLIC
from vers_orchestrator.api.runtime import AnyRequest
from vers_orchestrator.schemas.common import ErrorResponse

BEARER_AUTH: list[dict[str, list[str]]] = [{"bearer_auth": []}]


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
