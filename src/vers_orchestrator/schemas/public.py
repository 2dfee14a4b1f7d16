"""Public repository wire models, named and shaped as the upstream OpenAPI components."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vers_orchestrator.schemas.common import timestamp_field, uuid_field


class PublicRepositoryInfo(msgspec.Struct, kw_only=True):
    """Public repository information (includes owner org name for namespacing)"""

    repo_id: Annotated[str, uuid_field("The repository's unique identifier")]
    org_name: Annotated[str, msgspec.Meta(description="The owning organization's name (namespace)")]
    name: Annotated[str, msgspec.Meta(description="The repository name")]
    full_name: Annotated[str, msgspec.Meta(description="Full reference: org_name/repo_name")]
    description: Annotated[str | None, msgspec.Meta(description="Optional description")] = None
    created_at: Annotated[str, timestamp_field("When the repository was created")]


class ListPublicRepositoriesResponse(msgspec.Struct):
    """Response body for GET /api/v1/public/repositories"""

    repositories: list[PublicRepositoryInfo]
