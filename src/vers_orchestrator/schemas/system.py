"""System wire models."""

from __future__ import annotations

from typing import Annotated

import msgspec


class OrchestratorVersion(msgspec.Struct):
    """Response struct for GET api/v1/system/version"""

    executable_name: Annotated[
        str, msgspec.Meta(description='Executable identifier; should be "orchestrator"')
    ]
    workspace_version: Annotated[str, msgspec.Meta(description="Current workspace version")]
    git_hash: Annotated[str, msgspec.Meta(description="Current git hash used for the build")]


class HealthResponse(msgspec.Struct):
    """Response body for GET /health: the server is up and its database answers."""

    status: str
