"""The VM operations in our OpenAPI document, against the upstream contract.

Where we answer more than upstream documents (409 for a VM that is not running, 429 for a
server at capacity, 400 for a malformed id), the extra responses are listed too; every
upstream response, request body and parameter must be there.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import SHARED_SPEC, Server

UPSTREAM = SHARED_SPEC / "upstream-openapi.json"
# `/api/v1/vms` repeats `GET /api/v1/vm` under the same operation id; we serve it unlisted.
SKIPPED = {"/api/v1/vms", "/api/v1/vm/commits/{commit_id}/parents"}

needs_upstream = pytest.mark.skipif(
    not UPSTREAM.exists(),
    reason="the upstream contract lives in ../shared, which a clone does not have",
)


def _upstream_operations() -> list[tuple[str, str]]:
    if not UPSTREAM.exists():
        return []
    paths = json.loads(UPSTREAM.read_text())["paths"]
    return [
        (method, path)
        for path, operations in paths.items()
        if (path.startswith("/api/v1/vm") or path == "/api/v1/repositories/fork")
        and path not in SKIPPED
        for method in operations
    ]


@pytest.fixture(scope="module")
def documents(server: Server) -> tuple[dict[str, Any], dict[str, Any]]:
    with server.client() as client:
        ours: dict[str, Any] = client.get("/openapi.json").json()
    return ours, json.loads(UPSTREAM.read_text())


@needs_upstream
@pytest.mark.parametrize(("method", "path"), _upstream_operations())
def test_operation_covers_upstream(
    documents: tuple[dict[str, Any], dict[str, Any]], method: str, path: str
) -> None:
    ours, upstream = documents
    mine, theirs = ours["paths"][path][method], upstream["paths"][path][method]
    assert mine["operationId"] == theirs["operationId"]
    assert mine.get("security") == theirs.get("security")
    assert set(theirs["responses"]) <= set(mine["responses"])
    body = theirs.get("requestBody")
    if body is not None:
        schema = body["content"]["application/json"]["schema"]
        assert mine["requestBody"]["content"]["application/json"]["schema"] == schema
    assert {p["name"] for p in theirs.get("parameters", [])} <= {
        p["name"] for p in mine.get("parameters", [])
    }


@pytest.fixture(scope="module")
def ours(server: Server) -> dict[str, Any]:
    with server.client() as client:
        document: dict[str, Any] = client.get("/openapi.json").json()
    return document


class TestOurExtensions:
    """What we document beyond the contract; these need no ../shared."""

    @pytest.mark.parametrize("path", ["/exec/stream", "/exec/stream/attach"])
    def test_exec_streams_are_ndjson(self, ours: dict[str, Any], path: str) -> None:
        ok = ours["paths"][f"/api/v1/vm/{{vm_id}}{path}"]["post"]["responses"]["200"]
        assert list(ok["content"]) == ["application/x-ndjson"]

    def test_files_are_also_raw_bytes(self, ours: dict[str, Any]) -> None:
        files = ours["paths"]["/api/v1/vm/{vm_id}/files"]
        binary = {"schema": {"type": "string", "format": "binary"}}
        assert files["get"]["responses"]["200"]["content"]["application/octet-stream"] == binary
        assert files["put"]["requestBody"]["content"]["application/octet-stream"] == binary
        assert {"path", "mode", "create_dirs"} <= {p["name"] for p in files["put"]["parameters"]}

    def test_exec_replies_say_what_they_cut(self, ours: dict[str, Any]) -> None:
        reply = ours["components"]["schemas"]["VmExecResponse"]["properties"]
        assert {"stdout_truncated", "stderr_truncated", "timed_out"} <= set(reply)
