"""Wire models shared by every resource, named as the upstream OpenAPI components."""

from __future__ import annotations

from typing import Annotated

import msgspec


def uuid_field(description: str) -> msgspec.Meta:
    """A UUID carried as text; documented with `format: uuid` as upstream does."""
    return msgspec.Meta(description=description, extra_json_schema={"extra": {"format": "uuid"}})


class ErrorResponse(msgspec.Struct):
    success: Annotated[bool, msgspec.Meta(description="Is always: false")]
    error: Annotated[str, msgspec.Meta(description="Reason of error")]
