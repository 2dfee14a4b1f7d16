"""POST /api/v1/repositories over real HTTP, on each backend."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support import Backend, Key, Server, error, make_key, unique_name

UUID4 = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
PATH = "/api/v1/repositories"
INVALID_CHARACTERS = (
    "invalid repository name: Repository name can only contain ASCII letters, digits,"
    " hyphens, underscores, and dots"
)
INVALID_LENGTH = "invalid repository name: Repository name must be 1-64 characters"
DOT_NAME = "invalid repository name: Repository name cannot be '.' or '..'"


def create(server: Server, key: Key, body: object) -> httpx.Response:
    with server.client(key.token) as client:
        return client.post(PATH, json=body)


class TestCreateRepository:
    def test_created_is_201_with_id_and_name(self, server: Server, key: Key) -> None:
        name = unique_name()
        response = create(server, key, {"name": name, "description": "my app"})
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"repo_id", "name"}
        assert body["name"] == name
        assert UUID4.match(body["repo_id"])

    def test_description_may_be_absent_null_or_empty(self, server: Server, key: Key) -> None:
        for body in ({}, {"description": None}, {"description": ""}):
            response = create(server, key, {"name": unique_name(), **body})
            assert response.status_code == 201, response.text

    def test_duplicate_name_is_409(self, server: Server, key: Key) -> None:
        name = unique_name()
        assert create(server, key, {"name": name}).status_code == 201
        response = create(server, key, {"name": name, "description": "again"})
        assert response.status_code == 409
        assert response.json() == error("repository already exists")

    def test_duplicate_from_another_key_of_the_same_org_is_409(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        colleague = make_key(backend, org=key.org_name)
        assert colleague.org_id == key.org_id
        name = unique_name()
        assert create(server, key, {"name": name}).status_code == 201
        assert create(server, colleague, {"name": name}).json() == error(
            "repository already exists"
        )

    def test_same_name_in_another_org_is_201(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        other = make_key(backend)
        name = unique_name()
        assert create(server, key, {"name": name}).status_code == 201
        assert create(server, other, {"name": name}).status_code == 201

    def test_names_are_case_sensitive(self, server: Server, key: Key) -> None:
        name = unique_name("Case")
        assert create(server, key, {"name": name}).status_code == 201
        assert create(server, key, {"name": name.lower()}).status_code == 201
        assert create(server, key, {"name": name.upper()}).status_code == 201

    @pytest.mark.parametrize(
        "name",
        ["a", "A-Z_a.z-0.9", "x" * 64, "..a", "a..", ".hidden", "-dash", "_"],
    )
    def test_valid_names_are_accepted(self, server: Server, key: Key, name: str) -> None:
        # Each run gets its own organization, so fixed names never collide.
        response = create(server, make_key(server.backend), {"name": name})
        assert response.status_code == 201, response.text
        assert response.json()["name"] == name

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("", INVALID_LENGTH),
            ("x" * 65, INVALID_LENGTH),
            ("é" * 3, INVALID_CHARACTERS),
            ("has space", INVALID_CHARACTERS),
            ("slash/name", INVALID_CHARACTERS),
            ("colon:name", INVALID_CHARACTERS),
            ("trailing-newline\n", INVALID_CHARACTERS),
            ("nul\x00byte", INVALID_CHARACTERS),
            ("emoji-🙂", INVALID_CHARACTERS),
            (".", DOT_NAME),
            ("..", DOT_NAME),
        ],
    )
    def test_invalid_names_are_400(self, server: Server, key: Key, name: str, message: str) -> None:
        response = create(server, key, {"name": name})
        assert response.status_code == 400
        assert response.json() == error(message)

    def test_description_over_4096_characters_is_400(self, server: Server, key: Key) -> None:
        response = create(server, key, {"name": unique_name(), "description": "d" * 4097})
        assert response.status_code == 400
        assert response.json() == error("description must be at most 4096 characters")
        ok = create(server, key, {"name": unique_name(), "description": "d" * 4096})
        assert ok.status_code == 201

    def test_description_with_nul_is_400(self, server: Server, key: Key) -> None:
        response = create(server, key, {"name": unique_name(), "description": "a\x00b"})
        assert response.status_code == 400
        assert response.json() == error("description must not contain NUL characters")

    def test_rejected_request_stores_nothing(self, server: Server, key: Key) -> None:
        name = unique_name()
        assert create(server, key, {"name": name, "description": "x" * 5000}).status_code == 400
        assert create(server, key, {"name": name}).status_code == 201


class TestMalformedBodies:
    def test_malformed_json_is_400(self, server: Server, key: Key) -> None:
        with server.client(key.token) as client:
            response = client.post(
                PATH, content=b'{"name": ', headers={"Content-Type": "application/json"}
            )
        assert response.status_code == 400
        assert response.json()["success"] is False
        assert response.json()["error"].startswith("Failed to parse the request body as JSON: ")

    @pytest.mark.parametrize(
        ("body", "detail"),
        [
            ({}, "data: Object missing required field `name`"),
            ({"name": 7}, "name: Expected `str`, got `int`"),
            ({"name": "ok", "description": 5}, "description: Expected `str | null`, got `int`"),
            ([], "data: Expected `object`, got `array`"),
        ],
    )
    def test_wrong_shape_is_422(self, server: Server, key: Key, body: object, detail: str) -> None:
        response = create(server, key, body)
        assert response.status_code == 422
        assert response.json() == error(
            f"Failed to deserialize the JSON body into the target type: {detail}"
        )

    @pytest.mark.parametrize(
        "content_type", ["text/plain", None, "application/x-www-form-urlencoded"]
    )
    def test_wrong_content_type_is_415(
        self, server: Server, key: Key, content_type: str | None
    ) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        with server.client(key.token) as client:
            response = client.post(PATH, content=b'{"name": "x"}', headers=headers)
        assert response.status_code == 415
        assert response.json() == error("Expected request with `Content-Type: application/json`")

    def test_json_with_charset_is_accepted(self, server: Server, key: Key) -> None:
        with server.client(key.token) as client:
            response = client.post(
                PATH,
                content=f'{{"name": "{unique_name()}"}}'.encode(),
                headers={"Content-Type": "application/json; charset=utf-8"},
            )
        assert response.status_code == 201

    def test_body_over_one_mebibyte_is_413(self, server: Server, key: Key) -> None:
        response = create(server, key, {"name": unique_name(), "description": "d" * (1 << 20)})
        assert response.status_code == 413
        assert response.json() == error("request body is too large")


class TestAuthentication:
    @pytest.mark.parametrize(
        ("authorization", "message"),
        [
            (None, "Missing or invalid Authorization header"),
            ("", "Missing or invalid Authorization header"),
            ("Bearer", "Missing or invalid Authorization header"),
            ("bearer {token}", "Missing or invalid Authorization header"),
            ("Basic dXNlcjpwYXNz", "Missing or invalid Authorization header"),
            ("Bearer not-a-key", "Invalid bearer token"),
            ("Bearer {token}x", "Invalid bearer token"),
            ("Bearer {upper}", "Invalid bearer token"),
            ("Bearer {unknown_id}", "Invalid bearer token"),
            ("Bearer {wrong_secret}", "Invalid bearer token"),
        ],
    )
    def test_bad_credentials_are_401(
        self, server: Server, key: Key, authorization: str | None, message: str
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization.format(
                token=key.token,
                upper=key.token.upper(),
                unknown_id=str(uuid.uuid4()) + key.token[36:],
                wrong_secret=key.token[:36] + "0" * 64,
            )
        with httpx.Client(base_url=server.base_url) as client:
            response = client.post(PATH, content=b'{"name": "x"}', headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == error(message)

    def test_authentication_comes_before_body_validation(self, server: Server) -> None:
        with httpx.Client(base_url=server.base_url) as client:
            for content, content_type in [(b"{bad", "application/json"), (b"x", "text/plain")]:
                response = client.post(
                    PATH, content=content, headers={"Content-Type": content_type}
                )
                assert response.status_code == 401
                assert response.json() == error("Missing or invalid Authorization header")

    def test_revoked_key_is_401(self, server: Server, backend: Backend) -> None:
        revoked = make_key(backend)
        backend.cli("keys", "revoke", revoked.api_key_id)
        response = create(server, revoked, {"name": unique_name()})
        assert response.status_code == 401
        assert response.json() == error("Invalid bearer token")


class TestConcurrency:
    def test_burst_of_identical_creates_gives_one_201(self, server: Server, key: Key) -> None:
        name = unique_name()
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(
                pool.map(lambda _: create(server, key, {"name": name}).status_code, range(32))
            )
        assert sorted(statuses) == [201] + [409] * 31

    def test_burst_of_distinct_creates_all_succeed(self, server: Server, key: Key) -> None:
        names = [unique_name() for _ in range(64)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(lambda n: create(server, key, {"name": n}), names))
        assert [r.status_code for r in responses] == [201] * 64
        assert sorted(r.json()["name"] for r in responses) == sorted(names)
        # Every one of them is stored: creating any again is a conflict.
        assert {create(server, key, {"name": n}).status_code for n in names[::8]} == {409}
