"""`GET /api/v1/system/version` and `GET /health`: no key needed."""

from __future__ import annotations

from litestar import get

from vers_orchestrator import __version__
from vers_orchestrator.api.middleware import PUBLIC
from vers_orchestrator.api.openapi import ContractOperation, error_responses
from vers_orchestrator.api.runtime import AnyRequest, runtime
from vers_orchestrator.schemas.system import HealthResponse, OrchestratorVersion
from vers_orchestrator.services import system


@get(
    "/api/v1/system/version",
    operation_id="version_handler",
    operation_class=ContractOperation,
    opt={PUBLIC: True},
    response_description="Version information",
    sync_to_thread=False,
)
def version_handler() -> OrchestratorVersion:
    return OrchestratorVersion(
        executable_name=system.EXECUTABLE_NAME,
        workspace_version=__version__,
        git_hash=system.git_hash(),
    )


@get(
    "/health",
    operation_id="health",
    operation_class=ContractOperation,
    tags=["system"],
    opt={PUBLIC: True},
    response_description="The server is up and its database answers",
    responses=error_responses({503: "The database does not answer"}),
)
async def health(request: AnyRequest) -> HealthResponse:
    """For load balancers: 200 while this process can serve requests."""
    await system.check_health(runtime(request).db)
    return HealthResponse(status="ok")
