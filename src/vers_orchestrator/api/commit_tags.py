"""`/api/v1/commit_tags`: the organization-wide tag namespace. HTTP only."""

from __future__ import annotations

from litestar import delete, get, patch, post

from vers_orchestrator.api.openapi import BEARER_AUTH, ContractOperation, authenticated_responses
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.schemas.commit_tags import (
    CreateTagRequest,
    CreateTagResponse,
    ListTagsResponse,
    TagInfo,
    UpdateTagRequest,
)
from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.services import tags
from vers_orchestrator.store.tags import Tag

TAGS = ["commit_tags"]
_TAG = "/api/v1/commit_tags/{tag_name:str}"


def _info(tag: Tag) -> TagInfo:
    return TagInfo(
        tag_id=tag.tag_id,
        tag_name=tag.tag_name,
        commit_id=tag.commit_id,
        description=tag.description,
        created_at=rfc3339(tag.created_at),
        updated_at=rfc3339(tag.updated_at),
    )


@get(
    "/api/v1/commit_tags",
    operation_id="list_tags",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="List of tags",
    responses=authenticated_responses({500: "Internal server error"}),
)
async def list_tags(request: AnyRequest) -> ListTagsResponse:
    found = await tags.list_org_tags(runtime(request).db, principal(request))
    return ListTagsResponse(tags=[_info(tag) for tag in found])


@post(
    "/api/v1/commit_tags",
    operation_id="create_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="Tag created successfully",
    responses=authenticated_responses(
        {
            400: "Invalid request",
            403: "Forbidden",
            404: "Commit not found",
            409: "Tag already exists",
            500: "Internal server error",
        }
    ),
)
async def create_tag(request: AnyRequest, data: CreateTagRequest) -> CreateTagResponse:
    tag = await tags.create_org_tag(
        runtime(request).db,
        principal(request),
        data.tag_name,
        str(data.commit_id),
        data.description,
    )
    return CreateTagResponse(tag_id=tag.tag_id, tag_name=tag.tag_name, commit_id=tag.commit_id)


@get(
    _TAG,
    operation_id="get_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Tag details",
    responses=authenticated_responses(
        {403: "Forbidden", 404: "Tag not found", 500: "Internal server error"}
    ),
)
async def get_tag(request: AnyRequest, tag_name: str) -> TagInfo:
    return _info(await tags.get_org_tag(runtime(request).db, principal(request), tag_name))


@patch(
    _TAG,
    operation_id="update_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=204,
    response_description="Tag updated",
    responses=authenticated_responses(
        {
            400: "Invalid request",
            403: "Forbidden",
            404: "Tag or commit not found",
            500: "Internal server error",
        }
    ),
)
async def update_tag(request: AnyRequest, tag_name: str, data: UpdateTagRequest) -> None:
    await tags.update_org_tag(
        runtime(request).db,
        principal(request),
        tag_name,
        None if data.commit_id is None else str(data.commit_id),
        data.description,
    )


@delete(
    _TAG,
    operation_id="delete_tag",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="Tag deleted",
    responses=authenticated_responses(
        {403: "Forbidden", 404: "Tag not found", 500: "Internal server error"}
    ),
)
async def delete_tag(request: AnyRequest, tag_name: str) -> None:
    await tags.delete_org_tag(runtime(request).db, principal(request), tag_name)
