"""Cross-cutting request handling, done once for every route.

`RequestContextMiddleware` wraps the whole application: request id and access log, for
every request including unknown paths. `ApiMiddleware` runs on matched routes only, in
this order, each step before the body is even read:
1. authentication (401 whatever the body), unless the route is marked public;
2. the JSON content type of routes that take a body (415);
3. `X-Idempotency-Key` replay for mutating methods.
Then it calls the handler: directly when the handler is simple enough (`api/direct.py`),
else through Litestar's handler pipeline.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from vers_orchestrator.api.access_log import AccessLog
from vers_orchestrator.api.asgi import (
    Message,
    RawApp,
    RawReceive,
    RawSend,
    declared_length,
    read_body,
    replay,
)
from vers_orchestrator.api.direct import direct_call
from vers_orchestrator.api.paths import routing_path
from vers_orchestrator.api.query import check_integers, integer_parameters
from vers_orchestrator.api.responses import json_reply
from vers_orchestrator.api.runtime import CONTEXT_KEY, RUNTIME_KEY, RequestContext, Runtime
from vers_orchestrator.errors import (
    BodyNotJson,
    InvalidCredentials,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from vers_orchestrator.ids import new_id
from vers_orchestrator.schemas.common import error_body
from vers_orchestrator.services import idempotency

PUBLIC = "public"  # handler opt: no authentication
# Handler opt: the response is a stream, sent as it is made; it is never stored for replay.
STREAMING = "streaming"
# Handler opt: an ASGI app with `wants(headers)`, taking the requests it wants itself, body
# unread (raw file transfers). No JSON content type, no idempotency replay: such a request
# streams, and a PUT of the same bytes again is its own replay.
RAW = "raw"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_REQUEST_ID = 256


def _caller_request_id(headers: dict[bytes, bytes]) -> str | None:
    for name in (b"x-request-id", b"x-operation-id"):
        value = headers.get(name)
        if value and len(value) <= _MAX_REQUEST_ID and all(0x20 < b < 0x7F for b in value):
            return value.decode("ascii")
    return None


class RequestContextMiddleware:
    """Outermost layer: every response carries `X-Request-Id`; every request is logged;
    the path is routed segment by segment (`api/paths.py`)."""

    def __init__(self, app: Any, access_log: AccessLog) -> None:
        self.app: RawApp = app
        self._access_log = access_log

    async def __call__(self, scope: Any, receive: RawReceive, send: RawSend) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        context = RequestContext(_caller_request_id(headers) or new_id(), headers)
        scope[CONTEXT_KEY] = context
        request_id_header = (b"x-request-id", context.request_id.encode("ascii"))
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        try:
            path = routing_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
            if path is None:
                message = f"no route for {scope['method']} {scope['path']}"
                await json_reply(error_body(message), 404)(scope, receive, send_with_request_id)
                return
            scope["path"] = path
            await self.app(scope, receive, send_with_request_id)
        finally:
            self._access_log.write(
                context.request_id,
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                context.api_key_id,
            )


class ApiMiddleware:
    """Route-level middleware; Litestar builds one around each route handler.

    A plain ASGI callable rather than Litestar's `ASGIMiddleware`, whose per-request
    exclusion checks this project does not use.
    """

    def __init__(self, app: Any) -> None:
        self._app: RawApp = app
        # Per handler: its direct call (api/direct.py) or Litestar's path, chosen once.
        self._next_apps: dict[Any, RawApp] = {}
        # Per handler: the names of its integer query parameters (api/query.py).
        self._integers: dict[Any, frozenset[str]] = {}

    def _next_app(self, handler: Any, runtime: Runtime) -> RawApp:
        next_app = self._next_apps.get(handler)
        if next_app is None:
            direct = None
            if runtime.settings.direct_handler_calls:
                direct = direct_call(handler, self._app)
            next_app = self._next_apps[handler] = direct or self._app
        return next_app

    async def __call__(self, scope: Any, receive: RawReceive, send: RawSend) -> None:
        runtime: Runtime = scope["litestar_app"].state[RUNTIME_KEY]
        context: RequestContext = scope[CONTEXT_KEY]
        headers = context.headers
        handler = scope["route_handler"]
        principal = None
        if not handler.opt.get(PUBLIC):
            if sum(name == b"authorization" for name, _ in scope["headers"]) > 1:
                raise InvalidCredentials()  # which one would be the caller's?
            principal = await runtime.authenticator.authenticate(
                headers.get(b"authorization", b"").decode("latin-1")
            )
            scope["auth"] = principal
            context.api_key_id = principal.api_key_id
        integers = self._integers.get(handler)
        if integers is None:
            integers = self._integers[handler] = integer_parameters(handler)
        check_integers(scope["query_string"], integers)
        raw = handler.opt.get(RAW)
        if raw is not None and scope["method"] != "HEAD" and raw.wants(headers):
            await raw(scope, receive, send)
            return
        _check_declared_length(
            headers, handler.resolve_request_max_body_size() or runtime.settings.max_body_bytes
        )
        body_parameter = handler.parsed_fn_signature.parameters.get("data")
        if body_parameter is not None:
            _require_json(headers, body_parameter.has_default)
            if not body_parameter.has_default:
                _require_body(headers)
        next_app = self._app if scope["method"] == "HEAD" else self._next_app(handler, runtime)
        idempotency_key = headers.get(b"x-idempotency-key")
        if (
            principal is None
            or idempotency_key is None
            or scope["method"] not in MUTATING_METHODS
            or handler.opt.get(STREAMING)
        ):
            await next_app(scope, receive, send)
            return
        await _run_idempotently(
            runtime,
            principal.api_key_id,
            idempotency_key.decode("latin-1"),
            scope,
            receive,
            send,
            next_app,
        )


def _check_declared_length(headers: dict[bytes, bytes], limit: int) -> None:
    """413 from the header alone when the body declares more than `limit` bytes: a client
    announcing a terabyte is told so now, not after the server waits for bytes it would
    refuse anyway."""
    declared = declared_length(headers)
    if declared is not None and declared > limit:
        raise PayloadTooLarge()


def _require_json(headers: dict[bytes, bytes], body_optional: bool) -> None:
    content_type = headers.get(b"content-type")
    if content_type is not None:
        media_type = content_type.split(b";", 1)[0].strip().lower()
        if media_type == b"application/json":
            return
    has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
    if has_body or not body_optional:
        raise UnsupportedMediaType()


def _require_body(headers: dict[bytes, bytes]) -> None:
    """An empty JSON body where the route needs one is JSON that ended before it began,
    as a body of one space is (msgspec's words for both), not a body of the wrong shape."""
    if headers.get(b"content-length") == b"0":
        raise BodyNotJson("input data was truncated")


async def _run_idempotently(
    runtime: Runtime,
    api_key_id: str,
    key: str,
    scope: Any,
    receive: RawReceive,
    send: RawSend,
    next_app: RawApp,
) -> None:
    settings = runtime.settings
    body = await read_body(
        receive, scope["route_handler"].resolve_request_max_body_size() or settings.max_body_bytes
    )
    request_hash = idempotency.fingerprint(
        scope["method"], scope["path"], scope.get("query_string", b""), body
    )
    ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
    stored = await idempotency.begin(
        runtime.db, api_key_id, key, request_hash, ttl, settings.idempotency_wait_seconds
    )
    if stored is not None:
        headers = [
            (b"idempotent-replayed", b"true"),
            (b"content-length", str(len(stored.body)).encode("ascii")),
        ]
        if stored.content_type:
            headers.append((b"content-type", stored.content_type.encode("latin-1")))
        await send(
            {"type": "http.response.start", "status": stored.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": stored.body})
        return

    # The response is held back until it is stored: once a client has seen it, a retry
    # must replay it, not run again.
    start: Message | None = None
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
        else:
            await send(message)

    try:
        await next_app(scope, replay(body, receive), capture)
    except BaseException:
        await idempotency.abandon(runtime.db, api_key_id, key)
        raise
    if start is None:
        await idempotency.abandon(runtime.db, api_key_id, key)
        return
    response_body = b"".join(chunks)
    status = start["status"]
    if status >= 500:
        await idempotency.abandon(runtime.db, api_key_id, key)
    else:
        content_type = None
        for name, value in start.get("headers", ()):
            if name.lower() == b"content-type":
                content_type = value.decode("latin-1")
        await idempotency.finish(
            runtime.db,
            api_key_id,
            key,
            idempotency.StoredResponse(status, content_type, response_body),
        )
    await send(start)
    await send({"type": "http.response.body", "body": response_body})
