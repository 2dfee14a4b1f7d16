"""GET /api/v1/system/version and GET /health: no key needed."""

from __future__ import annotations

import re

from tests.support import Server, sdk_call
from vers_orchestrator import __version__


def test_version_names_the_orchestrator(server: Server) -> None:
    with server.client(Authorization="Bearer not-a-key") as client:
        response = client.get("/api/v1/system/version")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"executable_name", "workspace_version", "git_hash"}
    assert body["executable_name"] == "orchestrator"
    assert body["workspace_version"] == __version__
    # The tests run from a checkout: the hash of its HEAD when the server first answered.
    assert re.fullmatch(r"[0-9a-f]{40}", body["git_hash"])


def test_version_through_the_sdk(server: Server) -> None:
    version = sdk_call(server, None, lambda c: c.version_handler())
    assert version["executable_name"] == "orchestrator"


def test_health_is_200_without_a_key(server: Server) -> None:
    with server.client() as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
