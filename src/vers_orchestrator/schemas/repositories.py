"""Repository wire models, named and shaped as the upstream OpenAPI components."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vers_orchestrator.schemas.common import uuid_field


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
