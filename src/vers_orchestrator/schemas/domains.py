"""Wire models of `/api/v1/domains`, named as the upstream OpenAPI components."""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec

from vers_orchestrator.schemas.common import timestamp_field, uuid_field


class CreateDomainRequest(msgspec.Struct, kw_only=True):
    """Request body for POST /api/v1/domains"""

    vm_id: uuid.UUID
    domain: str


class DomainResponse(msgspec.Struct):
    """Response type for domain operations."""

    domain_id: Annotated[str, uuid_field("The domain's id")]
    vm_id: Annotated[str, uuid_field("The VM it routes to")]
    domain: str
    created_at: Annotated[str, timestamp_field()]


class DeleteDomainResponse(msgspec.Struct):
    """Response body for DELETE /api/v1/domains/{domain_id}"""

    domain_id: Annotated[str, uuid_field("The deleted domain's id")]
