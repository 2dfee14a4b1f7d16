"""Wire models of `/api/v1/deploy`, named as the upstream OpenAPI components."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vers_orchestrator.schemas.common import uuid_field


class DeploySettings(msgspec.Struct, kw_only=True):
    """Settings for the deploy build pipeline."""

    install_command: str | None = None
    build_command: str | None = None
    run_command: str | None = None
    working_directory: str | None = None


class DeployRequest(msgspec.Struct, kw_only=True):
    """Request body for `POST /api/v1/deploy`."""

    repo: Annotated[str, msgspec.Meta(description="Repository in `owner/repo` format.")]
    name: Annotated[
        str | None, msgspec.Meta(description="Optional project name (defaults to repo name).")
    ] = None
    branch: Annotated[
        str | None,
        msgspec.Meta(description="Git branch to clone (defaults to repo default branch)."),
    ] = None
    settings: Annotated[DeploySettings | None, msgspec.Meta(description="Build/run settings.")] = (
        None
    )


class DeployResponse(msgspec.Struct):
    """Response body for `POST /api/v1/deploy`."""

    project_id: Annotated[str, uuid_field("The project's id")]
    vm_id: Annotated[str, uuid_field("The VM the application runs in")]
    status: str


class DeployStatusResponse(msgspec.Struct):
    """Response body for `GET /api/v1/deploy/{project_id}` (not in the hosted API)."""

    project_id: Annotated[str, uuid_field("The project's id")]
    vm_id: Annotated[str | None, uuid_field("The VM the application runs in")]
    status: Annotated[str, msgspec.Meta(description="deploying, running or failed")]
    step: Annotated[
        str,
        msgspec.Meta(
            description="The step under way, or the last one: creating the VM, cloning,"
            " copying, installing, building, starting, waiting for a port, serving"
        ),
    ]
    error: Annotated[str | None, msgspec.Meta(description="Why the deploy failed")]
    url: Annotated[
        str | None,
        msgspec.Meta(description="Where the application answers through the edge, if it is on"),
    ]
