"""Repository wire models, named and shaped as the upstream OpenAPI components."""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec

from vers_orchestrator.schemas.common import timestamp_field, uuid_field


class CreateRepositoryRequest(msgspec.Struct):
    """Request body for POST /api/v1/repositories"""

    name: Annotated[
        str,
        msgspec.Meta(
            description="The name of the repository (alphanumeric, hyphens, underscores,"
            " dots, 1-64 chars)"
        ),
    ]
    description: Annotated[
        str | None, msgspec.Meta(description="Optional description of the repository")
    ] = None


class CreateRepositoryResponse(msgspec.Struct):
    """Response body for POST /api/v1/repositories"""

    repo_id: Annotated[str, uuid_field("The ID of the newly created repository")]
    name: Annotated[str, msgspec.Meta(description="The name of the repository")]


class RepositoryInfo(msgspec.Struct, kw_only=True):
    """Repository information returned in list and get operations"""

    repo_id: Annotated[str, uuid_field("The repository's unique identifier")]
    name: Annotated[str, msgspec.Meta(description="The repository name")]
    description: Annotated[str | None, msgspec.Meta(description="Optional description")] = None
    is_public: Annotated[
        bool, msgspec.Meta(description="Whether this repository is publicly visible")
    ]
    created_at: Annotated[str, timestamp_field("When the repository was created")]


class ListRepositoriesResponse(msgspec.Struct):
    """Response body for GET /api/v1/repositories"""

    repositories: Annotated[
        list[RepositoryInfo],
        msgspec.Meta(description="List of all repositories in the user's organization"),
    ]


class SetRepositoryVisibilityRequest(msgspec.Struct):
    """Request body for PATCH /api/v1/repositories/{repo_name}/visibility"""

    is_public: Annotated[
        bool, msgspec.Meta(description="Whether the repository should be publicly visible")
    ]


class CreateRepoTagRequest(msgspec.Struct, kw_only=True):
    """Request body for creating a tag within a repository: POST /api/v1/repositories/{repo_name}/tags"""  # noqa: E501

    tag_name: Annotated[str, msgspec.Meta(description='The tag name (e.g. "latest", "v1.0")')]
    commit_id: Annotated[
        uuid.UUID, msgspec.Meta(description="The commit ID this tag should point to")
    ]
    description: Annotated[
        str | None,
        msgspec.Meta(description="Optional description of what this tag represents"),
    ] = None


class CreateRepoTagResponse(msgspec.Struct):
    """Response body for POST /api/v1/repositories/{repo_name}/tags"""

    tag_id: Annotated[str, uuid_field("The ID of the newly created tag")]
    reference: Annotated[str, msgspec.Meta(description="Full reference in image_name:tag format")]
    commit_id: Annotated[str, uuid_field("The commit ID this tag points to")]


class RepoTagInfo(msgspec.Struct, kw_only=True):
    """Tag information within a repository context"""

    tag_id: Annotated[str, uuid_field("The tag's unique identifier")]
    tag_name: Annotated[str, msgspec.Meta(description="The tag name")]
    reference: Annotated[str, msgspec.Meta(description="Full reference in image_name:tag format")]
    commit_id: Annotated[str, uuid_field("The commit ID this tag currently points to")]
    description: Annotated[str | None, msgspec.Meta(description="Optional description")] = None
    created_at: Annotated[str, timestamp_field("When the tag was created")]
    updated_at: Annotated[str, timestamp_field("When the tag was last updated")]


class ListRepoTagsResponse(msgspec.Struct):
    """Response body for GET /api/v1/repositories/{repo_name}/tags"""

    repository: Annotated[str, msgspec.Meta(description="The repository name")]
    tags: Annotated[list[RepoTagInfo], msgspec.Meta(description="List of tags in this repository")]


class UpdateRepoTagRequest(msgspec.Struct, kw_only=True):
    """Request body for PATCH /api/v1/repositories/{repo_name}/tags/{tag_name}"""

    commit_id: Annotated[
        uuid.UUID | None, msgspec.Meta(description="Optional new commit ID to move the tag to")
    ] = None
    # Absent keeps the description, null clears it, text replaces it.
    description: Annotated[
        str | msgspec.UnsetType | None,
        msgspec.Meta(description="Optional new description for the tag. Send `null` to clear."),
    ] = msgspec.UNSET
