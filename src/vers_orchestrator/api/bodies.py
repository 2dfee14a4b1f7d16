"""JSON request bodies that do not decode: one error, whatever the reason.

msgspec (0.22) reports a body that is not UTF-8 as UnicodeDecodeError and one nested too
deep for its decoder as RecursionError, neither of them one of its own errors; Litestar passes
both on as unexpected (500). Every JSON-body route, direct call or not, answers them as it
answers malformed JSON: 400 `Failed to parse the request body as JSON: …`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException

# What decoding a body may raise when the body, not the server, is at fault.
UNDECODABLE: tuple[type[Exception], ...] = (
    msgspec.MsgspecError,
    UnicodeDecodeError,
    RecursionError,
)


def undecodable_reason(exc: Exception) -> str:
    """Why a body did not decode, in the words msgspec uses for malformed JSON. (msgspec
    0.23 reports invalid UTF-8 itself, as `Invalid UTF-8 encoded string`; 0.22 let
    UnicodeDecodeError out: both say the same.)"""
    if isinstance(exc, UnicodeDecodeError):
        return "Invalid UTF-8 encoded string"
    if isinstance(exc, RecursionError):
        return "JSON is malformed: nested too deeply"
    return str(exc)


class BodyRequest(Request[Any, Any, Any]):
    """Litestar's request, whose `json()` raises SerializationException for every body that
    does not decode (Litestar then answers 400 through `api.errors`)."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except (UnicodeDecodeError, RecursionError) as exc:
            raise SerializationException(undecodable_reason(exc)) from exc
