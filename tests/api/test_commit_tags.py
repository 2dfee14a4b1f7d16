"""/api/v1/commit_tags: the organization-wide tag namespace, over HTTP and the SDK."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest
from vers_sdk import ConflictError, NotFoundError

from tests.factories import make_commit
from tests.shapes import TIMESTAMP, UUID4
from tests.support import (
    Backend,
    Key,
    Server,
    creates_racing_deletes,
    error,
    make_key,
    sdk_call,
    unique_name,
)

PATH = "/api/v1/commit_tags"
TAG_KEYS = {"tag_id", "tag_name", "commit_id", "description", "created_at", "updated_at"}


def create(server: Server, key: Key, body: object) -> httpx.Response:
    with server.client(key.token) as client:
        return client.post(PATH, json=body)


def get(server: Server, key: Key, name: str) -> httpx.Response:
    with server.client(key.token) as client:
        return client.get(f"{PATH}/{name}")


def update(server: Server, key: Key, name: str, body: object) -> httpx.Response:
    with server.client(key.token) as client:
        return client.patch(f"{PATH}/{name}", json=body)


def tagged(server: Server, backend: Backend, key: Key) -> tuple[str, str]:
    name = unique_name("tag")
    commit_id = make_commit(backend, key).commit_id
    body = {"tag_name": name, "commit_id": commit_id, "description": "original"}
    assert create(server, key, body).status_code == 201
    return name, commit_id


ROUNDS = 8


def race_creates_with_delete(
    server: Server, key: Key, commit_ids: list[str]
) -> list[httpx.Response]:
    """Per commit, a stream of tag creates with its DELETE sent halfway through."""

    def creating(commit_id: str) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
        body = {"commit_id": commit_id}
        return lambda client: client.post(PATH, json={"tag_name": unique_name("tag"), **body})

    rounds = [(f"/api/v1/commits/{commit_id}", creating(commit_id)) for commit_id in commit_ids]
    return asyncio.run(creates_racing_deletes(server, key, rounds))


class TestCreateTag:
    def test_created_is_201(self, server: Server, backend: Backend, key: Key) -> None:
        commit_id = make_commit(backend, key).commit_id
        name = unique_name("tag")
        response = create(server, key, {"tag_name": name, "commit_id": commit_id})
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"tag_id", "tag_name", "commit_id"}
        assert UUID4.match(body["tag_id"])
        assert (body["tag_name"], body["commit_id"]) == (name, commit_id)

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("x" * 65, "invalid tag name: Tag name must be 1-64 characters"),
            ("", "invalid tag name: Tag name must be 1-64 characters"),
            (
                "a:b",
                "invalid tag name: Tag name can only contain ASCII letters, digits, hyphens,"
                " underscores, and dots",
            ),
        ],
    )
    def test_invalid_name_is_400(self, server: Server, key: Key, name: str, message: str) -> None:
        response = create(server, key, {"tag_name": name, "commit_id": str(uuid.uuid4())})
        assert response.status_code == 400
        assert response.json() == error(message)

    def test_64_characters_is_accepted(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        body = {"tag_name": "t" * 64, "commit_id": make_commit(backend, owner).commit_id}
        assert create(server, owner, body).status_code == 201

    def test_unknown_commit_is_404(self, server: Server, key: Key) -> None:
        response = create(server, key, {"tag_name": "t", "commit_id": str(uuid.uuid4())})
        assert response.status_code == 404
        assert response.json() == error("commit not found")

    def test_another_organizations_commit_is_404_or_403_once_public(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        commit_id = make_commit(backend, stranger).commit_id
        body = {"tag_name": unique_name("tag"), "commit_id": commit_id}
        assert create(server, key, body).json() == error("commit not found")
        with server.client(stranger.token) as client:
            client.patch(f"/api/v1/commits/{commit_id}", json={"is_public": True})
        response = create(server, key, body)
        assert response.status_code == 403
        assert response.json() == error("forbidden")

    def test_duplicate_in_the_organization_is_409(
        self, server: Server, backend: Backend, key: Key, colleague: Key
    ) -> None:
        name, commit_id = tagged(server, backend, key)
        response = create(server, colleague, {"tag_name": name, "commit_id": commit_id})
        assert response.status_code == 409
        assert response.json() == error("tag already exists")

    def test_same_name_in_another_organization_is_201(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        name, _ = tagged(server, backend, key)
        body = {"tag_name": name, "commit_id": make_commit(backend, stranger).commit_id}
        assert create(server, stranger, body).status_code == 201

    def test_wrong_shape_is_422(self, server: Server, key: Key) -> None:
        response = create(server, key, {"tag_name": "t"})
        assert response.status_code == 422
        assert response.json() == error(
            "Failed to deserialize the JSON body into the target type:"
            " data: Object missing required field `commit_id`"
        )

    def test_without_key_is_401(self, server: Server) -> None:
        with server.client() as client:
            assert client.post(PATH, json={}).status_code == 401


class TestCreateTagRacingCommitDelete:
    def test_every_create_is_201_or_404_and_created_tags_stay(
        self, server: Server, backend: Backend
    ) -> None:
        # A commit is only marked deleted, so no write can miss its row; a create either
        # comes first (its tag stays, pointing at the deleted commit) or is 404.
        owner = make_key(backend)
        commits = [make_commit(backend, owner).commit_id for _ in range(ROUNDS)]
        answers = race_creates_with_delete(server, owner, commits)
        for response in answers:
            if response.status_code != 201:
                assert (response.status_code, response.json()) == (
                    404,
                    error("commit not found"),
                ), response.text
        assert {response.status_code for response in answers} == {201, 404}
        created = {r.json()["tag_name"]: r.json()["commit_id"] for r in answers if r.is_success}
        with server.client(owner.token) as client:
            listed = client.get(PATH).json()["tags"]
        assert {tag["tag_name"]: tag["commit_id"] for tag in listed} == created


class TestListTags:
    def test_lists_only_org_wide_tags_in_name_order(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        colleague = make_key(backend, org=owner.org_name)
        commit_id = make_commit(backend, owner).commit_id
        for name in ("b", "A", "a"):
            create(server, owner, {"tag_name": name, "commit_id": commit_id})
        with server.client(owner.token) as client:
            client.post("/api/v1/repositories", json={"name": "repo"})
            body = {"tag_name": "in-repo", "commit_id": commit_id}
            assert client.post("/api/v1/repositories/repo/tags", json=body).status_code == 201
        with server.client(colleague.token) as client:
            response = client.get(PATH)
        assert response.status_code == 200
        assert set(response.json()) == {"tags"}
        tags = response.json()["tags"]
        assert [t["tag_name"] for t in tags] == ["A", "a", "b"]
        for tag in tags:
            assert set(tag) == TAG_KEYS
            assert tag["commit_id"] == commit_id
            assert TIMESTAMP.match(tag["created_at"])
            assert tag["updated_at"] == tag["created_at"]

    def test_another_organization_sees_none(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        tagged(server, backend, key)
        with server.client(make_key(backend).token) as client:
            assert client.get(PATH).json() == {"tags": []}


class TestGetTag:
    def test_found_is_200(self, server: Server, backend: Backend, key: Key) -> None:
        name, commit_id = tagged(server, backend, key)
        response = get(server, key, name)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == TAG_KEYS
        assert (body["tag_name"], body["commit_id"], body["description"]) == (
            name,
            commit_id,
            "original",
        )

    def test_a_repository_tag_of_that_name_is_not_found(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        repo, name = unique_name(), unique_name("tag")
        commit_id = make_commit(backend, key).commit_id
        with server.client(key.token) as client:
            client.post("/api/v1/repositories", json={"name": repo})
            body = {"tag_name": name, "commit_id": commit_id}
            assert client.post(f"/api/v1/repositories/{repo}/tags", json=body).status_code == 201
        response = get(server, key, name)
        assert response.status_code == 404
        assert response.json() == error("tag not found")

    @pytest.mark.parametrize("name", ["missing", "x" * 65, "a%3Ab"])
    def test_unknown_is_404(self, server: Server, key: Key, name: str) -> None:
        response = get(server, key, name)
        assert response.status_code == 404
        assert response.json() == error("tag not found")

    def test_another_organizations_is_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        name, _ = tagged(server, backend, key)
        assert get(server, stranger, name).json() == error("tag not found")


class TestUpdateTag:
    def test_description_is_tri_state_and_commit_moves(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        name, _ = tagged(server, backend, key)
        newer = make_commit(backend, key).commit_id
        before = get(server, key, name).json()
        for body, commit_id, description in [
            ({"commit_id": newer}, newer, "original"),
            ({"description": "changed"}, newer, "changed"),
            ({"description": None, "commit_id": None}, newer, None),
        ]:
            response = update(server, key, name, body)
            assert response.status_code == 204
            assert response.content == b""
            after = get(server, key, name).json()
            assert (after["commit_id"], after["description"]) == (commit_id, description)
        assert after["created_at"] == before["created_at"]
        assert after["updated_at"] > before["updated_at"]

    @pytest.mark.parametrize("body", [{}, {"commit_id": None}])
    def test_no_updates_is_400(self, server: Server, key: Key, body: object) -> None:
        response = update(server, key, "missing", body)
        assert response.status_code == 400
        assert response.json() == error("no updates provided")

    def test_unknown_tag_and_commit_are_404(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        name, _ = tagged(server, backend, key)
        assert update(server, key, "missing", {"description": "x"}).json() == error("tag not found")
        response = update(server, key, name, {"commit_id": str(uuid.uuid4())})
        assert response.status_code == 404
        assert response.json() == error("commit not found")

    def test_another_organizations_tag_is_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        name, _ = tagged(server, backend, key)
        response = update(server, stranger, name, {"description": "x"})
        assert response.json() == error("tag not found")
        assert get(server, key, name).json()["description"] == "original"


class TestDeleteTag:
    def test_deleted_is_204_and_its_commit_stays(
        self, server: Server, backend: Backend, key: Key, colleague: Key
    ) -> None:
        name, commit_id = tagged(server, backend, key)
        with server.client(colleague.token) as client:
            response = client.delete(f"{PATH}/{name}")
            assert response.status_code == 204
            assert response.content == b""
            again = client.delete(f"{PATH}/{name}")
        assert again.status_code == 404
        assert again.json() == error("tag not found")
        body = {"tag_name": name, "commit_id": commit_id}
        assert create(server, key, body).status_code == 201

    def test_another_organizations_tag_is_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        name, _ = tagged(server, backend, key)
        with server.client(stranger.token) as client:
            assert client.delete(f"{PATH}/{name}").json() == error("tag not found")
        assert get(server, key, name).status_code == 200


class TestCommitTagsWithSdk:
    def test_create_list_get_update_delete(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        token = owner.token
        commit_id = make_commit(backend, owner).commit_id
        created = sdk_call(
            server, token, lambda c: c.create_tag({"tag_name": "v1", "commit_id": commit_id})
        )
        assert created["tag_name"] == "v1"
        listed = sdk_call(server, token, lambda c: c.list_tags())
        assert [t["tag_id"] for t in listed["tags"]] == [created["tag_id"]]
        assert sdk_call(server, token, lambda c: c.update_tag("v1", {"description": "d"})) == {}
        assert sdk_call(server, token, lambda c: c.get_tag("v1"))["description"] == "d"
        assert sdk_call(server, token, lambda c: c.delete_tag("v1")) == {}
        for call in (
            lambda c: c.get_tag("v1"),
            lambda c: c.update_tag("v1", {"description": "d"}),
            lambda c: c.delete_tag("v1"),
        ):
            with pytest.raises(NotFoundError) as raised:
                sdk_call(server, token, call)
            assert raised.value.body == error("tag not found")

    def test_duplicate_raises_conflict(self, server: Server, backend: Backend, key: Key) -> None:
        name, commit_id = tagged(server, backend, key)
        with pytest.raises(ConflictError) as raised:
            sdk_call(
                server,
                key.token,
                lambda c: c.create_tag({"tag_name": name, "commit_id": commit_id}),
                max_retries=0,
            )
        assert raised.value.body == error("tag already exists")
