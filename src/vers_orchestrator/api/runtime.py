"""What request handlers reach: opened in the app's lifespan, one per process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request

from vers_orchestrator.auth import Principal
from vers_orchestrator.services.deploy import Deploys
from vers_orchestrator.services.domains import Domains
from vers_orchestrator.services.images import Images
from vers_orchestrator.services.keys import Authenticator
from vers_orchestrator.services.vms import Vms
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.database import Database

AnyRequest = Request[Any, Any, Any]


@dataclass(slots=True)
class Runtime:
    settings: Settings
    db: Database
    authenticator: Authenticator
    vms: Vms
    images: Images
    domains: Domains
    deploys: Deploys


@dataclass(slots=True)
class RequestContext:
    """Per-request facts, set by the outermost middleware: the request's headers by
    (lowercase) name, looked up several times per request, and what the access log needs.
    """

    request_id: str
    headers: dict[bytes, bytes]
    api_key_id: str | None = None


RUNTIME_KEY = "vers.runtime"
CONTEXT_KEY = "vers.context"


def runtime(request: AnyRequest) -> Runtime:
    value: Runtime = request.app.state[RUNTIME_KEY]
    return value


def principal(request: AnyRequest) -> Principal:
    """The authenticated caller; the auth middleware has run for every non-public route."""
    value: Principal = request.scope["auth"]
    return value
