"""Simple handlers, called without Litestar's per-request handler pipeline.

For each request Litestar builds a `Request`, runs every parameter through a signature
model, wraps what the handler returns in a `Response` and renders it. On
`POST /api/v1/repositories` that is ~140,000 instructions, a third of the whole request
(callgrind; bench/README.md), and it is what kept the endpoint under its throughput
target. Most handlers here need none of that generality: they take the request, path
parameters that are plain strings and at most a JSON body of one msgspec Struct, and
return a Struct, a list of them, or nothing. For those, `direct_call` gives the route
middleware a callable that decodes the body straight into the Struct and calls the
function. Routing, OpenAPI, and every error stay Litestar's.

The reply must be the one Litestar gives, byte for byte:
- the body is decoded as Litestar converts it: msgspec, not strict;
- a body that does not decode (empty, malformed, wrong shape) goes to Litestar as it
  came, so the 400 and 422 are worded as on every other route;
- the reply is built by `responses.json_reply`, as `JsonResponse` builds it, and an error
  by the route's exception handlers, as Litestar's exception middleware does it;
- a handler with anything more (query or constrained parameters, dependencies, guards,
  hooks, response headers or cookies, a stream) is not called directly.
`tests/api/test_direct_calls.py` compares the replies of both paths.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, cast

import msgspec
from litestar import Request
from litestar.enums import MediaType
from litestar.handlers import HTTPRouteHandler

from vers_orchestrator.api.asgi import RawApp, RawReceive, RawSend, read_body, replay
from vers_orchestrator.api.bodies import UNDECODABLE
from vers_orchestrator.api.responses import JsonResponse, json_reply

_PATH_PARAMETER = re.compile(r"{(\w+):(\w+)}")


class DirectCall:
    """Calls one handler; `litestar_app` is the route's usual path, for bodies that do not
    decode."""

    __slots__ = ("_decoder", "_fn", "_litestar_app", "_max_body", "_status_code", "_with_request")

    def __init__(
        self,
        handler: HTTPRouteHandler,
        data_type: type[msgspec.Struct] | None,
        with_request: bool,
        litestar_app: RawApp,
    ) -> None:
        self._fn = handler.fn
        self._decoder = None if data_type is None else msgspec.json.Decoder(data_type, strict=False)
        self._with_request = with_request
        self._status_code = handler.status_code
        self._max_body = handler.resolve_request_max_body_size() or 0
        self._litestar_app = litestar_app

    async def __call__(self, scope: Any, receive: RawReceive, send: RawSend) -> None:
        try:
            reply = await self._call(scope, receive, send)
        except _Undecodable as undecodable:
            await self._litestar_app(scope, replay(undecodable.body, receive), send)
            return
        except Exception as exc:
            reply = _error_reply(exc, scope, receive, send)
        await reply(scope, receive, send)

    async def _call(self, scope: Any, receive: RawReceive, send: RawSend) -> RawApp:
        kwargs = dict(scope["path_params"])
        if self._decoder is not None:
            body = await read_body(receive, self._max_body)
            try:
                kwargs["data"] = self._decoder.decode(body)
            except UNDECODABLE:
                raise _Undecodable(body) from None
        if self._with_request:
            kwargs["request"] = _request(scope, receive, send)
        return json_reply(await self._fn(**kwargs), self._status_code)


class _Undecodable(Exception):
    def __init__(self, body: bytes) -> None:
        self.body = body


def _request(scope: Any, receive: RawReceive, send: RawSend) -> Request[Any, Any, Any]:
    return Request(scope, cast(Any, receive), cast(Any, send))


def _error_reply(exc: Exception, scope: Any, receive: RawReceive, send: RawSend) -> RawApp:
    """The error response, as Litestar's exception middleware makes it for a route."""
    request = _request(scope, receive, send)
    handlers = scope["route_handler"].resolve_exception_handlers()
    handler = next(handlers[kind] for kind in type(exc).__mro__ if kind in handlers)
    reply: RawApp = handler(request, exc).to_asgi_response(None, request)
    return reply


def direct_call(handler: HTTPRouteHandler, litestar_app: RawApp) -> DirectCall | None:
    """A direct call of `handler` if it is simple enough (see the module), else None."""
    if (
        handler.has_sync_callable
        or handler.resolve_guards()
        or handler.resolve_dependencies()
        or handler.resolve_layered_parameters()
        or handler.resolve_before_request()
        or handler.resolve_after_response()
        or any(layer.after_request for layer in handler.ownership_layers)
        or handler.resolve_response_headers()
        or handler.resolve_response_cookies()
        or handler.resolve_type_encoders()
        or handler.resolve_type_decoders()
        or handler.resolve_data_dto()
        or handler.resolve_return_dto()
        or handler.cache
        or handler.background
        or handler.resolve_response_class() is not JsonResponse
        or handler.media_type not in (MediaType.JSON, MediaType.JSON.value)
        or not _returns_json(handler.parsed_fn_signature.return_type.annotation)
    ):
        return None
    path_parameters = {
        name: kind for path in handler.paths for name, kind in _PATH_PARAMETER.findall(path)
    }
    parameters = handler.parsed_fn_signature.parameters
    if not set(path_parameters) <= set(parameters):
        return None
    data_type = None
    with_request = False
    for name, field in parameters.items():
        annotation = field.annotation
        if name == "request":
            with_request = True
        elif name == "data" and _is_struct(annotation):
            data_type = annotation
        elif not (path_parameters.get(name) == "str" and annotation is str):
            return None
    return DirectCall(handler, data_type, with_request, litestar_app)


def _is_struct(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)


def _returns_json(annotation: Any) -> bool:
    if annotation is None or annotation is types.NoneType or _is_struct(annotation):
        return True
    if typing.get_origin(annotation) is not list:
        return False
    (item,) = typing.get_args(annotation)
    return _is_struct(item)
