"""Wire models shared by every resource, named as the upstream OpenAPI components."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec


def uuid_field(description: str) -> msgspec.Meta:
    """A UUID carried as text; documented with `format: uuid` as upstream does."""
    return msgspec.Meta(description=description, extra_json_schema={"extra": {"format": "uuid"}})


class ErrorResponse(msgspec.Struct):
    success: Annotated[bool, msgspec.Meta(description="Is always: false")]
    error: Annotated[str, msgspec.Meta(description="Reason of error")]


_encode = msgspec.json.Encoder().encode


def error_body(message: str) -> bytes:
    """Every error's body, the API's and the edge's: `{"success":false,"error":"..."}`."""
    return _encode(ErrorResponse(success=False, error=message))


def timestamp_field(description: str | None = None) -> msgspec.Meta:
    """A timestamp carried as text (see `rfc3339`), documented as `format: date-time`."""
    return msgspec.Meta(
        description=description, extra_json_schema={"extra": {"format": "date-time"}}
    )


def rfc3339(value: datetime) -> str:
    """UTC with microseconds and `Z`, e.g. `2026-04-10T12:34:56.123456Z` (decisions.md)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_offset(value: datetime) -> str:
    """The `+00:00` form the hosted service writes in `CommitInfo.created_at` only."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
