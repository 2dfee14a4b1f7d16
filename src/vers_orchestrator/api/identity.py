"""Who a key belongs to: `GET /api/v1/whoami` and `POST /api/v1/keys/validate`.

Both answer from the authenticated principal alone; the middleware has already refused
a missing or bad key with 401.
"""

from __future__ import annotations

from litestar import get, post

from vers_orchestrator.api.openapi import (
    BEARER_AUTH,
    ContractOperation,
    authenticated_responses,
    error_responses,
)
from vers_orchestrator.api.runtime import AnyRequest, principal
from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.schemas.identity import (
    ValidateKeyResponse,
    WhoamiApiKey,
    WhoamiOrg,
    WhoamiResponse,
    WhoamiUser,
)


@get(
    "/api/v1/whoami",
    operation_id="whoami_handler",
    operation_class=ContractOperation,
    tags=["whoami"],
    security=BEARER_AUTH,
    response_description="The user, organization and API key behind the bearer token",
    responses=authenticated_responses({500: "Internal server error"}),
)
async def whoami_handler(request: AnyRequest) -> WhoamiResponse:
    caller = principal(request)
    # The SDK types `email` and `label` as strings: absent ones are empty, not null.
    return WhoamiResponse(
        user=WhoamiUser(id=caller.user_id, email=caller.email or "", user_name=caller.user_name),
        org=WhoamiOrg(id=caller.org_id, name=caller.org_name),
        api_key=WhoamiApiKey(
            id=caller.api_key_id,
            label=caller.label or "",
            created_at=rfc3339(caller.created_at),
            expires_at=None if caller.expires_at is None else rfc3339(caller.expires_at),
            max_memory_mib=caller.max_memory_mib,
            max_vcpus=caller.max_vcpus,
        ),
    )


@post(
    "/api/v1/keys/validate",
    operation_id="validate_key",
    operation_class=ContractOperation,
    tags=["keys"],
    security=BEARER_AUTH,
    status_code=200,
    response_description="API key is valid",
    responses={
        **error_responses({401: "API key is invalid", 500: "Internal server error"}),
    },
)
async def validate_key(request: AnyRequest) -> ValidateKeyResponse:
    # Any body is ignored: reaching here means the middleware accepted the key.
    return ValidateKeyResponse(valid=True, message="API key is valid")
