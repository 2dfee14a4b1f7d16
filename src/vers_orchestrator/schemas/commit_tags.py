"""Organization-wide tag wire models, named and shaped as the upstream OpenAPI components."""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec

from vers_orchestrator.schemas.common import timestamp_field, uuid_field


class CreateTagRequest(msgspec.Struct, kw_only=True):
    """Request body for POST /api/v1/commit_tags"""

    tag_name: Annotated[
        str,
        msgspec.Meta(
            description="The name of the tag (alphanumeric, hyphens, underscores, dots, 1-64 chars)"
        ),
    ]
    commit_id: Annotated[
        uuid.UUID, msgspec.Meta(description="The commit ID this tag should point to")
    ]
    description: Annotated[
        str | None,
        msgspec.Meta(description="Optional description of what this tag represents"),
    ] = None


class CreateTagResponse(msgspec.Struct):
    """Response body for POST /api/v1/commit_tags"""

    tag_id: Annotated[str, uuid_field("The ID of the newly created tag")]
    tag_name: Annotated[str, msgspec.Meta(description="The name of the tag")]
    commit_id: Annotated[str, uuid_field("The commit ID this tag points to")]


class TagInfo(msgspec.Struct, kw_only=True):
    """Tag information returned in list and get operations"""

    tag_id: Annotated[str, uuid_field("The tag's unique identifier")]
    tag_name: Annotated[str, msgspec.Meta(description="The name of the tag")]
    commit_id: Annotated[str, uuid_field("The commit ID this tag currently points to")]
    description: Annotated[
        str | None,
        msgspec.Meta(description="Optional description of what this tag represents"),
    ] = None
    created_at: Annotated[str, timestamp_field("When the tag was created")]
    updated_at: Annotated[
        str,
        timestamp_field(
            "When the tag was last updated (moved to different commit or description changed)"
        ),
    ]


class ListTagsResponse(msgspec.Struct):
    """Response body for GET /api/v1/commit_tags"""

    tags: Annotated[
        list[TagInfo], msgspec.Meta(description="List of all tags in the user's organization")
    ]


class UpdateTagRequest(msgspec.Struct, kw_only=True):
    """Request body for PATCH /api/v1/commit_tags/{tag_name}

    For `description`:
    - Field absent from JSON → don't change the description
    - Field present as `null` → clear the description
    - Field present as `"text"` → set the description to "text"
    """

    commit_id: Annotated[
        uuid.UUID | None, msgspec.Meta(description="Optional new commit ID to move the tag to")
    ] = None
    description: Annotated[
        str | msgspec.UnsetType | None,
        msgspec.Meta(
            description="Optional new description for the tag. Send `null` to clear an"
            " existing description."
        ),
    ] = msgspec.UNSET
