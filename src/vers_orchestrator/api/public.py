"""`/api/v1/public/repositories`: browsing without a key (any Authorization is ignored)."""

from __future__ import annotations

from litestar import get

from vers_orchestrator.api.middleware import PUBLIC
from vers_orchestrator.api.openapi import ContractOperation, error_responses
from vers_orchestrator.api.repositories import repo_tag_info
from vers_orchestrator.api.runtime import AnyRequest, runtime
from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.schemas.public import ListPublicRepositoriesResponse, PublicRepositoryInfo
from vers_orchestrator.schemas.repositories import ListRepoTagsResponse, RepoTagInfo
from vers_orchestrator.services import public
from vers_orchestrator.store.repositories import PublicRepository

TAGS = ["public_repositories"]
_REPOSITORY = "/api/v1/public/repositories/{org_name:str}/{repo_name:str}"


def _info(repository: PublicRepository, org_name: str) -> PublicRepositoryInfo:
    return PublicRepositoryInfo(
        repo_id=repository.repo_id,
        org_name=org_name,
        name=repository.name,
        full_name=f"{org_name}/{repository.name}",
        description=repository.description,
        created_at=rfc3339(repository.created_at),
    )


@get(
    "/api/v1/public/repositories",
    operation_id="list_public_repositories",
    operation_class=ContractOperation,
    tags=TAGS,
    opt={PUBLIC: True},
    response_description="List of public repositories",
    responses=error_responses({500: "Internal server error"}),
)
async def list_public_repositories(request: AnyRequest) -> ListPublicRepositoriesResponse:
    found = await public.list_repositories(runtime(request).db)
    return ListPublicRepositoriesResponse(repositories=[_info(r, r.org_name) for r in found])


# On the single-repository routes `org_name` echoes the path's spelling, as upstream does.


@get(
    _REPOSITORY,
    operation_id="get_public_repository",
    operation_class=ContractOperation,
    tags=TAGS,
    opt={PUBLIC: True},
    response_description="Public repository details",
    responses=error_responses({404: "Repository not found", 500: "Internal server error"}),
)
async def get_public_repository(
    request: AnyRequest, org_name: str, repo_name: str
) -> PublicRepositoryInfo:
    repository = await public.get_repository(runtime(request).db, org_name, repo_name)
    return _info(repository, org_name)


@get(
    _REPOSITORY + "/tags",
    operation_id="list_public_repo_tags",
    operation_class=ContractOperation,
    tags=TAGS,
    opt={PUBLIC: True},
    response_description="List of tags in public repository",
    responses=error_responses({404: "Repository not found", 500: "Internal server error"}),
)
async def list_public_repo_tags(
    request: AnyRequest, org_name: str, repo_name: str
) -> ListRepoTagsResponse:
    found = await public.list_tags(runtime(request).db, org_name, repo_name)
    return ListRepoTagsResponse(
        repository=f"{org_name}/{repo_name}",
        tags=[repo_tag_info(tag, repo_name) for tag in found],
    )


@get(
    _REPOSITORY + "/tags/{tag_name:str}",
    operation_id="get_public_repo_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    opt={PUBLIC: True},
    response_description="Tag details",
    responses=error_responses({404: "Tag not found", 500: "Internal server error"}),
)
async def get_public_repo_tag(
    request: AnyRequest, org_name: str, repo_name: str, tag_name: str
) -> RepoTagInfo:
    tag = await public.get_tag(runtime(request).db, org_name, repo_name, tag_name)
    return repo_tag_info(tag, repo_name)
