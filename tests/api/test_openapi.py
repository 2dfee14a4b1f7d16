"""The OpenAPI document we generate, against the seed contract."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import SHARED_SPEC, Server

SEED_RESPONSES = {"201", "400", "401", "409", "500"}


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    with server.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


class TestCreateRepositoryOperation:
    def test_operation_matches_the_seed(self, document: dict[str, Any]) -> None:
        operation = document["paths"]["/api/v1/repositories"]["post"]
        assert operation["operationId"] == "create_repository"
        assert operation["tags"] == ["repositories"]
        assert operation["security"] == [{"bearer_auth": []}]
        assert set(operation["responses"]) == SEED_RESPONSES
        body = operation["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/CreateRepositoryRequest"
        }
        created = operation["responses"]["201"]["content"]["application/json"]["schema"]
        assert created == {"$ref": "#/components/schemas/CreateRepositoryResponse"}
        for status in ("400", "409", "500"):
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}

    def test_schemas_match_the_seed(self, document: dict[str, Any]) -> None:
        schemas = document["components"]["schemas"]
        request = schemas["CreateRepositoryRequest"]
        assert request["required"] == ["name"]
        assert set(request["properties"]) == {"name", "description"}
        response = schemas["CreateRepositoryResponse"]
        assert sorted(response["required"]) == ["name", "repo_id"]
        assert response["properties"]["repo_id"]["format"] == "uuid"
        assert set(schemas["ErrorResponse"]["properties"]) == {"success", "error"}
        assert document["components"]["securitySchemes"]["bearer_auth"] == {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "Token",
        }

    @pytest.mark.skipif(
        not (SHARED_SPEC / "upstream-openapi.json").exists(),
        reason="the upstream contract lives in ../shared, which a clone does not have",
    )
    def test_operation_matches_upstream(self, document: dict[str, Any]) -> None:
        upstream = json.loads((SHARED_SPEC / "upstream-openapi.json").read_text())
        theirs = upstream["paths"]["/api/v1/repositories"]["post"]
        ours = document["paths"]["/api/v1/repositories"]["post"]
        assert ours["operationId"] == theirs["operationId"]
        assert set(ours["responses"]) == set(theirs["responses"])
        for name in ("CreateRepositoryRequest", "CreateRepositoryResponse"):
            assert sorted(document["components"]["schemas"][name]["required"]) == sorted(
                upstream["components"]["schemas"][name]["required"]
            )
            assert set(document["components"]["schemas"][name]["properties"]) == set(
                upstream["components"]["schemas"][name]["properties"]
            )


def test_interactive_docs_are_served(server: Server) -> None:
    with server.client() as client:
        response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in response.text
