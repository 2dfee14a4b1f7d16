"""`/api/v1/repositories` and their tags: HTTP only; the rules live in `services`."""

from __future__ import annotations

from litestar import delete, get, patch, post
from litestar.openapi.datastructures import ResponseSpec

from vers_orchestrator.api.openapi import (
    BEARER_AUTH,
    ContractOperation,
    authenticated_responses,
    error_responses,
)
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.schemas.repositories import (
    CreateRepositoryRequest,
    CreateRepositoryResponse,
    CreateRepoTagRequest,
    CreateRepoTagResponse,
    ListRepositoriesResponse,
    ListRepoTagsResponse,
    RepositoryInfo,
    RepoTagInfo,
    SetRepositoryVisibilityRequest,
    UpdateRepoTagRequest,
)
from vers_orchestrator.services import repositories, tags
from vers_orchestrator.store.repositories import Repository
from vers_orchestrator.store.tags import Tag

TAGS = ["repositories"]
_REPOSITORY = "/api/v1/repositories/{repo_name:str}"
_TAG = _REPOSITORY + "/tags/{tag_name:str}"


def repository_info(repository: Repository) -> RepositoryInfo:
    return RepositoryInfo(
        repo_id=repository.repo_id,
        name=repository.name,
        description=repository.description,
        is_public=repository.is_public,
        created_at=rfc3339(repository.created_at),
    )


def repo_tag_info(tag: Tag, repo_name: str) -> RepoTagInfo:
    return RepoTagInfo(
        tag_id=tag.tag_id,
        tag_name=tag.tag_name,
        reference=f"{repo_name}:{tag.tag_name}",
        commit_id=tag.commit_id,
        description=tag.description,
        created_at=rfc3339(tag.created_at),
        updated_at=rfc3339(tag.updated_at),
    )


@post(
    "/api/v1/repositories",
    operation_id="create_repository",
    tags=TAGS,
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


@get(
    "/api/v1/repositories",
    operation_id="list_repositories",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="List of repositories",
    responses=authenticated_responses({500: "Internal server error"}),
)
async def list_repositories(request: AnyRequest) -> ListRepositoriesResponse:
    found = await repositories.list_in_org(runtime(request).db, principal(request))
    return ListRepositoriesResponse(repositories=[repository_info(r) for r in found])


@get(
    _REPOSITORY,
    operation_id="get_repository",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Repository details",
    responses=authenticated_responses({404: "Repository not found", 500: "Internal server error"}),
)
async def get_repository(request: AnyRequest, repo_name: str) -> RepositoryInfo:
    return repository_info(
        await repositories.get(runtime(request).db, principal(request), repo_name)
    )


@delete(
    _REPOSITORY,
    operation_id="delete_repository",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Repository deleted",
    responses=authenticated_responses(
        {403: "Forbidden", 404: "Repository not found", 500: "Internal server error"}
    ),
)
async def delete_repository(request: AnyRequest, repo_name: str) -> None:
    await repositories.delete(runtime(request).db, principal(request), repo_name)


@patch(
    _REPOSITORY + "/visibility",
    operation_id="set_repository_visibility",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=204,
    response_description="Visibility updated",
    responses=authenticated_responses(
        {403: "Forbidden", 404: "Repository not found", 500: "Internal server error"}
    ),
)
async def set_repository_visibility(
    request: AnyRequest, repo_name: str, data: SetRepositoryVisibilityRequest
) -> None:
    await repositories.set_visibility(
        runtime(request).db, principal(request), repo_name, data.is_public
    )


@get(
    _REPOSITORY + "/tags",
    operation_id="list_repo_tags",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="List of tags in repository",
    responses=authenticated_responses({404: "Repository not found", 500: "Internal server error"}),
)
async def list_repo_tags(request: AnyRequest, repo_name: str) -> ListRepoTagsResponse:
    found = await tags.list_repo_tags(runtime(request).db, principal(request), repo_name)
    return ListRepoTagsResponse(
        repository=repo_name, tags=[repo_tag_info(tag, repo_name) for tag in found]
    )


@post(
    _REPOSITORY + "/tags",
    operation_id="create_repo_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="Tag created",
    responses=authenticated_responses(
        {
            400: "Invalid tag name",
            403: "Forbidden",
            404: "Repository or commit not found",
            409: "Tag already exists",
            500: "Internal server error",
        }
    ),
)
async def create_repo_tag(
    request: AnyRequest, repo_name: str, data: CreateRepoTagRequest
) -> CreateRepoTagResponse:
    tag = await tags.create_repo_tag(
        runtime(request).db,
        principal(request),
        repo_name,
        data.tag_name,
        str(data.commit_id),
        data.description,
    )
    return CreateRepoTagResponse(
        tag_id=tag.tag_id, reference=f"{repo_name}:{tag.tag_name}", commit_id=tag.commit_id
    )


@get(
    _TAG,
    operation_id="get_repo_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Tag details",
    responses=authenticated_responses(
        {404: "Repository or tag not found", 500: "Internal server error"}
    ),
)
async def get_repo_tag(request: AnyRequest, repo_name: str, tag_name: str) -> RepoTagInfo:
    tag = await tags.get_repo_tag(runtime(request).db, principal(request), repo_name, tag_name)
    return repo_tag_info(tag, repo_name)


@patch(
    _TAG,
    operation_id="update_repo_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=204,
    response_description="Tag updated",
    responses=authenticated_responses(
        {
            400: "No updates provided",
            403: "Forbidden",
            404: "Repository, tag, or commit not found",
            500: "Internal server error",
        }
    ),
)
async def update_repo_tag(
    request: AnyRequest, repo_name: str, tag_name: str, data: UpdateRepoTagRequest
) -> None:
    await tags.update_repo_tag(
        runtime(request).db,
        principal(request),
        repo_name,
        tag_name,
        None if data.commit_id is None else str(data.commit_id),
        data.description,
    )


@delete(
    _TAG,
    operation_id="delete_repo_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Tag deleted",
    responses=authenticated_responses(
        {403: "Forbidden", 404: "Repository or tag not found", 500: "Internal server error"}
    ),
)
async def delete_repo_tag(request: AnyRequest, repo_name: str, tag_name: str) -> None:
    await tags.delete_repo_tag(runtime(request).db, principal(request), repo_name, tag_name)
