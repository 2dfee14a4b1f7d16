"""Who a key belongs to: `GET /api/v1/whoami` and `POST /api/v1/keys/validate`."""

from __future__ import annotations

import msgspec


class WhoamiUser(msgspec.Struct):
    id: str
    email: str
    user_name: str


class WhoamiOrg(msgspec.Struct):
    id: str
    name: str


class WhoamiApiKey(msgspec.Struct, kw_only=True):
    id: str
    label: str
    created_at: str
    expires_at: str | None = None
    max_memory_mib: int | None = None
    max_vcpus: int | None = None


class WhoamiResponse(msgspec.Struct):
    """Response body for `GET /api/v1/whoami`: the user, organization and key behind the
    bearer token."""

    user: WhoamiUser
    org: WhoamiOrg
    api_key: WhoamiApiKey


class ValidateKeyResponse(msgspec.Struct):
    """Response body for POST /api/keys/validate"""

    valid: bool
    message: str
