"""`/api/v1/repositories`: HTTP only; the rules live in `services.repositories`."""

from __future__ import annotations

from litestar import post
from litestar.openapi.datastructures import ResponseSpec

from vers_orchestrator.api.openapi import BEARER_AUTH, error_responses
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.schemas.repositories import (
    CreateRepositoryRequest,
    CreateRepositoryResponse,
)
from vers_orchestrator.services import repositories


@post(
    "/api/v1/repositories",
    operation_id="create_repository",
    tags=["repositories"],
    security=BEARER_AUTH,
    status_code=201,
    response_description="Repository created",
    responses={
        **error_responses(
            {
                400: "Invalid name",
                409: "Repository already exists",
                500: "Internal server error",
            }
        ),
        401: ResponseSpec(data_container=None, description="Unauthorized"),
    },
)
async def create_repository(
    request: AnyRequest, data: CreateRepositoryRequest
) -> CreateRepositoryResponse:
    repository = await repositories.create(
        runtime(request).db, principal(request), data.name, data.description
    )
    return CreateRepositoryResponse(repo_id=repository.repo_id, name=repository.name)
