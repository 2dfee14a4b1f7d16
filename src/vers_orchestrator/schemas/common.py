"""Wire models shared by every resource, named as the upstream OpenAPI components."""

from __future__ import annotations

import msgspec


class ErrorResponse(msgspec.Struct):
    success: bool
    """Is always: false"""
    error: str
    """Reason of error"""
