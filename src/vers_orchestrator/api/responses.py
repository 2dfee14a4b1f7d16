"""The response class of every route: Litestar's `Response`, sent more directly.

Litestar turns what a handler returns into a `Response` and then into an `ASGIResponse`,
whose general header handling (a mutable header view, defaults set one by one, cookie
encoding) is a tenth of this server's own work on `POST /api/v1/repositories`. Handlers
here return plain JSON with no cookies, extra headers or background tasks; such a reply
is two ASGI messages built at once. Anything else takes Litestar's path unchanged, and
either way the bytes on the wire are the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar import Request, Response
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.response.base import ASGIResponse
from litestar.serialization import encode_json, get_serializer
from litestar.types import TypeEncodersMap

_JSON = MediaType.JSON.value
_NO_BODY_STATUSES = frozenset({204, 304})
_JSON_CONTENT_TYPE = (b"content-type", _JSON.encode("latin-1"))
_SERIALIZER = get_serializer()


class JsonReply:
    """A finished response: status, header lines and body, sent as two ASGI messages."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.body = body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.headers}
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


class JsonResponse(Response[Any]):
    def to_asgi_response(  # type: ignore[override]
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse | JsonReply:
        status = self.status_code or status_code or 200
        if (
            headers
            or self.headers
            or cookies
            or self.cookies
            or background
            or self.background
            or encoded_headers
            or is_head_response
            or type_encoders
            or self.response_type_encoders
            or (self.media_type or media_type or _JSON) != _JSON
            or status < 200
        ):
            return super().to_asgi_response(
                app,
                request,
                background=background,
                cookies=cookies,
                encoded_headers=encoded_headers,
                headers=headers,
                is_head_response=is_head_response,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
            )
        return json_reply(self.content, status)


def json_reply(content: Any, status_code: int) -> JsonReply:
    """What Litestar sends for `content` returned with `status_code`, JSON with no extras."""
    if status_code in _NO_BODY_STATUSES:
        return JsonReply(status_code, [], b"")
    if isinstance(content, bytes):
        body = content
    elif isinstance(content, str):  # as `Response.render`: a string is sent as it is
        body = content.encode()
    else:
        body = encode_json(content, _SERIALIZER)
    return JsonReply(
        status_code,
        [_JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode("ascii"))],
        body,
    )
