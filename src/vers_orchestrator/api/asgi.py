"""Raw ASGI: message types and request-body helpers shared by the route middleware and
direct handler calls.

Litestar types ASGI messages as TypedDict unions that mypy cannot narrow by their
"type" key; the code that builds and inspects raw messages uses plain dicts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from vers_orchestrator.errors import BodyIncomplete, PayloadTooLarge

Message = dict[str, Any]
RawReceive = Callable[[], Awaitable[Message]]
RawSend = Callable[[Message], Awaitable[None]]
RawApp = Callable[[Any, RawReceive, RawSend], Awaitable[None]]


def declared_length(headers: dict[bytes, bytes]) -> int | None:
    """The body size `Content-Length` announces, or None when there is none. (An invalid
    one never reaches the app: the HTTP parser answers 400.)"""
    declared = headers.get(b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def read_body(receive: RawReceive, limit: int) -> bytes:
    """The whole request body; `PayloadTooLarge` (413) past `limit` bytes (0: no limit),
    `BodyIncomplete` (400) when the connection ends first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyIncomplete()
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit and size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def body_chunks(receive: RawReceive) -> AsyncIterator[bytes]:
    """The request body as it comes, for routes that stream it to disk or a guest;
    `BodyIncomplete` when the connection ends first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyIncomplete()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def replay(body: bytes, receive: RawReceive) -> RawReceive:
    """A `receive` that gives the body read already, then whatever the connection says."""
    sent = False

    async def replaying() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replaying
