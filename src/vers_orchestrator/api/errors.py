"""The one place that turns errors into responses: `{"success": false, "error": "..."}`.

Domain errors, framework errors (bad JSON, unknown route, wrong method, oversized body)
and unexpected exceptions all leave through here, so every non-2xx body has one shape.
"""

from __future__ import annotations

import logging

from litestar import MediaType, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE

from vers_orchestrator.api.runtime import CONTEXT_KEY, AnyRequest, RequestContext
from vers_orchestrator.errors import (
    BodyIncomplete,
    BodyNotJson,
    InternalError,
    InvalidQuery,
    VersError,
)
from vers_orchestrator.schemas.common import error_body

log = logging.getLogger("vers_orchestrator.errors")


def error_response(status_code: int, message: str) -> Response[bytes]:
    headers = None
    if status_code == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif status_code == 413:
        # The body is left unread: the connection cannot carry another request.
        headers = {"Connection": "close"}
    return Response(
        error_body(message), status_code=status_code, media_type=MediaType.JSON, headers=headers
    )


def _request_id(request: AnyRequest) -> str:
    context: RequestContext | None = request.scope.get(CONTEXT_KEY)  # type: ignore[assignment]
    return context.request_id if context else "-"


def handle_vers_error(request: AnyRequest, exc: VersError) -> Response[bytes]:
    return error_response(exc.status_code, exc.message)


def _validation_text(exc: ValidationException) -> tuple[int, str]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    sources = {p.get("source") for p in problems if isinstance(p, dict)}
    details = "; ".join(
        f"{p.get('key')}: {p.get('message')}" for p in problems if isinstance(p, dict)
    )
    if sources == {"body"}:
        # Well-formed JSON of the wrong shape: 422, as the hosted service answers.
        return 422, f"Failed to deserialize the JSON body into the target type: {details}"
    if "query" in sources:
        return 400, InvalidQuery(details).message
    return 400, f"Invalid URL: {details}" if details else "bad request"


def handle_http_exception(request: AnyRequest, exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, ValidationException):
        status_code, message = _validation_text(exc)
    elif isinstance(exc, NotFoundException):
        status_code, message = 404, f"no route for {request.method} {request.url.path}"
    elif isinstance(exc, MethodNotAllowedException):
        status_code, message = 405, f"method {request.method} not allowed here"
    elif exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        status_code, message = 413, "request body is too large"
    elif isinstance(exc.__cause__, SerializationException):
        # Litestar wraps msgspec's decode error of the body: not JSON at all.
        status_code = 400
        detail = exc.detail.removeprefix("JSON is malformed: ")
        message = BodyNotJson(f"{detail[:1].lower()}{detail[1:]}").message
    elif exc.detail == "client disconnected prematurely":
        # Litestar's words for a body cut short (the client left, or `http_server` timed it
        # out): the same as ours, and not a server fault.
        status_code, message = BodyIncomplete.status_code, BodyIncomplete.message
    elif exc.status_code >= 500:
        return handle_unexpected(request, exc)
    else:
        status_code, message = exc.status_code, exc.detail.lower()
    return error_response(status_code, message)


def handle_unexpected(request: AnyRequest, exc: Exception) -> Response[bytes]:
    # The client gets a generic text; the details stay in our log under the request id.
    log.error(
        "unhandled error request_id=%s %s %s",
        _request_id(request),
        request.method,
        request.url.path,
        exc_info=exc,
    )
    return error_response(InternalError.status_code, InternalError.message)


EXCEPTION_HANDLERS = {
    VersError: handle_vers_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
