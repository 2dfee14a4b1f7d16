"""`/api/v1/deploy`: an application from a git repository in a new VM. HTTP only."""

from __future__ import annotations

from typing import Annotated

from litestar import get, post
from litestar.params import Parameter

from vers_orchestrator.api.openapi import BEARER_AUTH, ContractOperation, authenticated_responses
from vers_orchestrator.api.runtime import AnyRequest, principal, runtime
from vers_orchestrator.schemas.deploy import DeployRequest, DeployResponse, DeployStatusResponse
from vers_orchestrator.services import deploy as deploy_service
from vers_orchestrator.services.edge import edge_url
from vers_orchestrator.store.deploy import DeploySettings

TAGS = ["deploy"]
ProjectId = Annotated[str, Parameter(schema_extra={"format": "uuid"})]


@post(
    "/api/v1/deploy",
    operation_id="deploy_handler",
    operation_class=ContractOperation,
    tags=TAGS,
    summary="Deploy a GitHub repository to a new Vers project.",
    security=BEARER_AUTH,
    status_code=202,
    response_description="Deploy initiated",
    responses=authenticated_responses(
        {
            400: "Invalid request",
            403: "Forbidden",
            404: "Repository not found",
            409: "Project name conflict",
            429: "Server at capacity",
            500: "Internal server error",
            501: "Deploy turned off",
            502: "The git host did not answer",
        }
    ),
)
async def deploy_handler(request: AnyRequest, data: DeployRequest) -> DeployResponse:
    settings = data.settings or DeploySettings()
    project = await runtime(request).deploys.create(
        principal(request),
        deploy_service.DeployRequest(
            repo=data.repo,
            name=data.name,
            branch=data.branch,
            settings=DeploySettings(
                install_command=settings.install_command,
                build_command=settings.build_command,
                run_command=settings.run_command,
                working_directory=settings.working_directory,
            ),
        ),
    )
    assert project.vm_id is not None
    return DeployResponse(project_id=project.project_id, vm_id=project.vm_id, status="deploying")


@get(
    "/api/v1/deploy/{project_id:str}",
    operation_id="get_deploy_status",
    tags=TAGS,
    summary="A deploy's progress: its status, the step under way, its error, its URL.",
    security=BEARER_AUTH,
    response_description="The project",
    responses=authenticated_responses({404: "Project not found", 500: "Internal server error"}),
)
async def get_deploy_status(request: AnyRequest, project_id: ProjectId) -> DeployStatusResponse:
    state = runtime(request)
    project = await state.deploys.get(principal(request), project_id)
    return DeployStatusResponse(
        project_id=project.project_id,
        vm_id=project.vm_id,
        status=project.status.value,
        step=project.step,
        error=project.error,
        url=None if project.vm_id is None else edge_url(state.settings, project.vm_id),
    )
