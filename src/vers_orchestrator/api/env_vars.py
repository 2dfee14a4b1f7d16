"""`/api/v1/env_vars`: the caller's user's environment variables. HTTP only."""

from __future__ import annotations

from litestar import delete, get, put

from vers_orchestrator.api.openapi import BEARER_AUTH, ContractOperation, authenticated_responses
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.schemas.env_vars import EnvVarsResponse, SetEnvVarsRequest
from vers_orchestrator.services import env_vars

TAGS = ["env_vars"]


@get(
    "/api/v1/env_vars",
    operation_id="list_env_vars",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Current environment variables",
    responses=authenticated_responses({500: "Internal server error"}),
)
async def list_env_vars(request: AnyRequest) -> EnvVarsResponse:
    return EnvVarsResponse(vars=await env_vars.of_user(runtime(request).db, principal(request)))


@put(
    "/api/v1/env_vars",
    # 100 values of 8192 bytes are legal, and JSON escaping may make each six times larger.
    request_max_body_size=8 * 1024 * 1024,
    operation_id="set_env_vars",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Environment variables updated",
    responses=authenticated_responses({400: "Validation error", 500: "Internal server error"}),
)
async def set_env_vars(request: AnyRequest, data: SetEnvVarsRequest) -> EnvVarsResponse:
    found = await env_vars.set_vars(
        runtime(request).db, principal(request), data.vars, data.replace
    )
    return EnvVarsResponse(vars=found)


@delete(
    "/api/v1/env_vars/{key:str}",
    operation_id="delete_env_var",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=204,
    response_description="Environment variable deleted",
    responses=authenticated_responses(
        {404: "Environment variable not found", 500: "Internal server error"}
    ),
)
async def delete_env_var(request: AnyRequest, key: str) -> None:
    await env_vars.delete(runtime(request).db, principal(request), key)
