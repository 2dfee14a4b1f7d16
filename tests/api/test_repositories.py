"""/api/v1/repositories: create, list, get, publish and delete, over real HTTP and the SDK."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from vers_sdk import AuthenticationError, NotFoundError

from tests.factories import in_database, make_commit
from tests.shapes import TIMESTAMP, UUID4
from tests.support import Backend, Key, Server, error, make_key, sdk_call, unique_name
from vers_orchestrator.store import repositories as repository_store
from vers_orchestrator.store.database import Tx

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


REPOSITORY_KEYS = {"repo_id", "name", "description", "is_public", "created_at"}


def get_repository(server: Server, key: Key, name: str) -> httpx.Response:
    with server.client(key.token) as client:
        return client.get(f"{PATH}/{name}")


def set_visibility(server: Server, key: Key, name: str, body: object) -> httpx.Response:
    with server.client(key.token) as client:
        return client.patch(f"{PATH}/{name}/visibility", json=body)


class TestListRepositories:
    def test_lists_the_organization_in_byte_order(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        names = ["b", "B", "a-1", "_x", "a.1", "Z9"]
        for name in names:
            assert create(server, owner, {"name": name}).status_code == 201
        with server.client(owner.token) as client:
            response = client.get(PATH)
        assert response.status_code == 200
        repositories = response.json()["repositories"]
        assert set(response.json()) == {"repositories"}
        assert [r["name"] for r in repositories] == sorted(names, key=str.encode)
        for repository in repositories:
            assert set(repository) == REPOSITORY_KEYS
            assert UUID4.match(repository["repo_id"])
            assert repository["description"] is None
            assert repository["is_public"] is False
            assert TIMESTAMP.match(repository["created_at"])

    def test_every_key_of_the_organization_sees_the_same_list(
        self, server: Server, backend: Backend
    ) -> None:
        owner = make_key(backend)
        colleague = make_key(backend, org=owner.org_name)
        create(server, owner, {"name": "shared", "description": "d"})
        with server.client(colleague.token) as client:
            listed = client.get(PATH).json()["repositories"]
        assert [(r["name"], r["description"]) for r in listed] == [("shared", "d")]

    def test_another_organization_sees_none_of_them(
        self, server: Server, key: Key, stranger: Key
    ) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        with server.client(stranger.token) as client:
            listed = client.get(PATH).json()["repositories"]
        assert name not in {r["name"] for r in listed}

    def test_empty_organization_lists_nothing(self, server: Server, backend: Backend) -> None:
        with server.client(make_key(backend).token) as client:
            response = client.get(PATH)
        assert response.json() == {"repositories": []}

    def test_without_key_is_401(self, server: Server) -> None:
        with server.client() as client:
            response = client.get(PATH)
        assert response.status_code == 401
        assert response.json() == error("Missing or invalid Authorization header")


class TestGetRepository:
    def test_found_is_200_with_its_fields(self, server: Server, key: Key) -> None:
        name = unique_name()
        created = create(server, key, {"name": name, "description": "my app"}).json()
        response = get_repository(server, key, name)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == REPOSITORY_KEYS
        assert body["repo_id"] == created["repo_id"]
        assert (body["name"], body["description"], body["is_public"]) == (name, "my app", False)
        assert TIMESTAMP.match(body["created_at"])

    def test_a_colleague_reads_it(self, server: Server, key: Key, colleague: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        assert get_repository(server, colleague, name).status_code == 200

    def test_another_organizations_is_404(self, server: Server, key: Key, stranger: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        response = get_repository(server, stranger, name)
        assert response.status_code == 404
        assert response.json() == error("repository not found")

    @pytest.mark.parametrize("name", ["missing-repo", "has%20space", "x" * 65, "%C3%A9"])
    def test_unknown_or_impossible_name_is_404(self, server: Server, key: Key, name: str) -> None:
        response = get_repository(server, key, name)
        assert response.status_code == 404
        assert response.json() == error("repository not found")

    def test_names_are_case_sensitive(self, server: Server, key: Key) -> None:
        name = unique_name("Case")
        create(server, key, {"name": name})
        assert get_repository(server, key, name.lower()).status_code == 404

    def test_without_key_is_401(self, server: Server, key: Key) -> None:
        with server.client() as client:
            response = client.get(f"{PATH}/anything")
        assert response.status_code == 401


class TestDeleteRepository:
    def test_deleted_is_204_and_gone(self, server: Server, key: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        with server.client(key.token) as client:
            response = client.delete(f"{PATH}/{name}")
        assert response.status_code == 204
        assert response.content == b""
        assert get_repository(server, key, name).status_code == 404

    def test_the_name_can_be_reused(self, server: Server, key: Key) -> None:
        name = unique_name()
        first = create(server, key, {"name": name}).json()
        with server.client(key.token) as client:
            client.delete(f"{PATH}/{name}")
        second = create(server, key, {"name": name})
        assert second.status_code == 201
        assert second.json()["repo_id"] != first["repo_id"]

    def test_deleting_twice_is_404(self, server: Server, key: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        with server.client(key.token) as client:
            assert client.delete(f"{PATH}/{name}").status_code == 204
            response = client.delete(f"{PATH}/{name}")
        assert response.status_code == 404
        assert response.json() == error("repository not found")

    def test_a_colleague_may_delete(self, server: Server, key: Key, colleague: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        with server.client(colleague.token) as client:
            assert client.delete(f"{PATH}/{name}").status_code == 204

    def test_another_organization_gets_404_and_changes_nothing(
        self, server: Server, key: Key, stranger: Key
    ) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        with server.client(stranger.token) as client:
            response = client.delete(f"{PATH}/{name}")
        assert response.status_code == 404
        assert response.json() == error("repository not found")
        assert get_repository(server, key, name).status_code == 200

    def test_removes_its_tags_but_not_commits_or_org_wide_tags(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        name = unique_name()
        commit = make_commit(backend, key)
        create(server, key, {"name": name})
        with server.client(key.token) as client:
            for tag in ("v1", "v2"):
                body = {"tag_name": tag, "commit_id": commit.commit_id}
                assert client.post(f"{PATH}/{name}/tags", json=body).status_code == 201
            org_tag = unique_name("tag")
            body = {"tag_name": org_tag, "commit_id": commit.commit_id}
            assert client.post("/api/v1/commit_tags", json=body).status_code == 201
            assert client.delete(f"{PATH}/{name}").status_code == 204
            create(server, key, {"name": name})
            assert client.get(f"{PATH}/{name}/tags").json()["tags"] == []
            assert client.get(f"/api/v1/commit_tags/{org_tag}").status_code == 200
            listed = client.get("/api/v1/commits", params={"limit": 100}).json()["commits"]
        assert commit.commit_id in {c["commit_id"] for c in listed}

    def test_a_delete_that_fails_leaves_every_tag(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        # The repository and its tags go in one statement of one unit of work: when the
        # unit fails after it, nothing is gone.
        name = unique_name()
        commit = make_commit(backend, key)
        create(server, key, {"name": name})
        with server.client(key.token) as client:
            for tag in ("a", "b", "c"):
                body = {"tag_name": tag, "commit_id": commit.commit_id}
                client.post(f"{PATH}/{name}/tags", json=body)

        class Interrupted(Exception):
            pass

        async def unit(tx: Tx) -> None:
            assert await repository_store.delete_by_name(tx, key.org_id, name)
            raise Interrupted

        with pytest.raises(Interrupted):
            in_database(backend, lambda db: db.write(unit))
        with server.client(key.token) as client:
            tags = client.get(f"{PATH}/{name}/tags").json()["tags"]
        assert [t["tag_name"] for t in tags] == ["a", "b", "c"]

    def test_without_key_is_401(self, server: Server) -> None:
        with server.client() as client:
            response = client.delete(f"{PATH}/anything")
        assert response.status_code == 401


class TestSetRepositoryVisibility:
    def test_publishing_is_204_and_shows_in_the_repository(self, server: Server, key: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        response = set_visibility(server, key, name, {"is_public": True})
        assert response.status_code == 204
        assert response.content == b""
        assert get_repository(server, key, name).json()["is_public"] is True

    def test_is_idempotent_and_reversible(self, server: Server, key: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        for value in (True, True, False, False):
            assert set_visibility(server, key, name, {"is_public": value}).status_code == 204
            assert get_repository(server, key, name).json()["is_public"] is value

    def test_a_colleague_may_publish(self, server: Server, key: Key, colleague: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        assert set_visibility(server, colleague, name, {"is_public": True}).status_code == 204

    def test_another_organization_gets_404(self, server: Server, key: Key, stranger: Key) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        response = set_visibility(server, stranger, name, {"is_public": True})
        assert response.status_code == 404
        assert response.json() == error("repository not found")
        assert get_repository(server, key, name).json()["is_public"] is False

    def test_unknown_repository_is_404(self, server: Server, key: Key) -> None:
        response = set_visibility(server, key, unique_name(), {"is_public": True})
        assert response.status_code == 404
        assert response.json() == error("repository not found")

    @pytest.mark.parametrize(
        ("body", "detail"),
        [
            ({}, "data: Object missing required field `is_public`"),
            ({"is_public": "yes"}, "is_public: Expected `bool`, got `str`"),
        ],
    )
    def test_wrong_shape_is_422(self, server: Server, key: Key, body: object, detail: str) -> None:
        name = unique_name()
        create(server, key, {"name": name})
        response = set_visibility(server, key, name, body)
        assert response.status_code == 422
        assert response.json() == error(
            f"Failed to deserialize the JSON body into the target type: {detail}"
        )

    def test_without_key_is_401_whatever_the_body(self, server: Server) -> None:
        with server.client() as client:
            response = client.patch(f"{PATH}/anything/visibility", content=b"{bad")
        assert response.status_code == 401


class TestRepositoriesWithSdk:
    def test_list_get_publish_delete(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        name = unique_name()
        sdk_call(server, owner.token, lambda c: c.create_repository({"name": name}))
        listed = sdk_call(server, owner.token, lambda c: c.list_repositories())
        assert [r["name"] for r in listed["repositories"]] == [name]
        assert (
            sdk_call(
                server,
                owner.token,
                lambda c: c.set_repository_visibility(name, {"is_public": True}),
            )
            == {}
        )
        got = sdk_call(server, owner.token, lambda c: c.get_repository(name))
        assert set(got) == REPOSITORY_KEYS
        assert got["is_public"] is True
        assert sdk_call(server, owner.token, lambda c: c.delete_repository(name)) == {}
        with pytest.raises(NotFoundError) as raised:
            sdk_call(server, owner.token, lambda c: c.get_repository(name))
        assert raised.value.body == error("repository not found")

    def test_errors(self, server: Server, key: Key) -> None:
        with pytest.raises(NotFoundError) as raised:
            sdk_call(server, key.token, lambda c: c.delete_repository(unique_name()))
        assert raised.value.body == error("repository not found")
        with pytest.raises(NotFoundError):
            sdk_call(
                server,
                key.token,
                lambda c: c.set_repository_visibility(unique_name(), {"is_public": True}),
            )
        with pytest.raises(AuthenticationError):
            sdk_call(server, None, lambda c: c.list_repositories())
