"""Wire models of `/api/v1/env_vars`, named as the upstream OpenAPI components."""

from __future__ import annotations

import msgspec


class EnvVarsResponse(msgspec.Struct):
    """Response body for GET /env_vars and PUT /env_vars."""

    vars: dict[str, str]


class SetEnvVarsRequest(msgspec.Struct, kw_only=True):
    """Request body for PUT /env_vars: sets (upserts) one or more environment variables."""

    vars: dict[str, str]
    replace: bool = False
