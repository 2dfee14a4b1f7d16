"""`/api/v1/domains`: custom domain names of VMs. HTTP only."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import delete, get, post
from litestar.params import Parameter

from vers_orchestrator.api.openapi import BEARER_AUTH, ContractOperation, authenticated_responses
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.errors import BadRequest, InvalidQuery
from vers_orchestrator.schemas.common import rfc3339
from vers_orchestrator.schemas.domains import (
    CreateDomainRequest,
    DeleteDomainResponse,
    DomainResponse,
)
from vers_orchestrator.store.domains import Domain

TAGS = ["domains"]
DomainId = Annotated[str, Parameter(schema_extra={"format": "uuid"})]
VmIdQuery = Annotated[str | None, Parameter(schema_extra={"format": "uuid"})]


def domain_response(domain: Domain) -> DomainResponse:
    return DomainResponse(
        domain_id=domain.domain_id,
        vm_id=domain.vm_id,
        domain=domain.domain,
        created_at=rfc3339(domain.created_at),
    )


def _uuid(value: str, name: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(f"Invalid URL: {name} is not a UUID: {value}") from None


@post(
    "/api/v1/domains",
    operation_id="create_domain",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=201,
    response_description="Domain created",
    responses=authenticated_responses(
        {
            400: "Invalid domain",
            404: "VM not found",
            409: "Domain already exists",
            422: "DNS not ready",
            500: "Internal server error",
        }
    ),
)
async def create_domain(request: AnyRequest, data: CreateDomainRequest) -> DomainResponse:
    created = await runtime(request).domains.create(
        principal(request), str(data.vm_id), data.domain
    )
    return domain_response(created)


@get(
    "/api/v1/domains",
    operation_id="list_domains",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="The organization's domains, or a VM's",
    responses=authenticated_responses(
        {400: "Invalid query", 404: "VM not found", 500: "Internal server error"}
    ),
)
async def list_domains(request: AnyRequest, vm_id: VmIdQuery = None) -> list[DomainResponse]:
    if vm_id is not None:
        try:
            vm_id = str(uuid.UUID(vm_id))
        except ValueError:
            raise InvalidQuery(f"vm_id: UUID parsing failed: {vm_id}") from None
    found = await runtime(request).domains.list(principal(request), vm_id)
    return [domain_response(domain) for domain in found]


@get(
    "/api/v1/domains/{domain_id:str}",
    operation_id="get_domain",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    response_description="The domain",
    responses=authenticated_responses(
        {400: "Invalid domain id", 404: "Domain not found", 500: "Internal server error"}
    ),
)
async def get_domain(request: AnyRequest, domain_id: DomainId) -> DomainResponse:
    found = await runtime(request).domains.get(principal(request), _uuid(domain_id, "domain_id"))
    return domain_response(found)


@delete(
    "/api/v1/domains/{domain_id:str}",
    operation_id="delete_domain",
    operation_class=ContractOperation,
    tags=TAGS,
    security=BEARER_AUTH,
    status_code=200,
    response_description="Domain deleted",
    responses=authenticated_responses(
        {400: "Invalid domain id", 404: "Domain not found", 500: "Internal server error"}
    ),
)
async def delete_domain(request: AnyRequest, domain_id: DomainId) -> DeleteDomainResponse:
    deleted = await runtime(request).domains.delete(
        principal(request), _uuid(domain_id, "domain_id")
    )
    return DeleteDomainResponse(domain_id=deleted)
