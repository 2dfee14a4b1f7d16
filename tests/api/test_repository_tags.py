"""/api/v1/repositories/{repo_name}/tags: tags inside a repository, over HTTP and the SDK."""

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

REPOS = "/api/v1/repositories"
TAG_KEYS = {
    "tag_id",
    "tag_name",
    "reference",
    "commit_id",
    "description",
    "created_at",
    "updated_at",
}
INVALID_CHARACTERS = (
    "invalid tag name: Tag name can only contain ASCII letters, digits, hyphens,"
    " underscores, and dots"
)
INVALID_LENGTH = "invalid tag name: Tag name must be 1-128 characters"


def make_repository(server: Server, key: Key) -> str:
    name = unique_name()
    with server.client(key.token) as client:
        assert client.post(REPOS, json={"name": name}).status_code == 201
    return name


def create_tag(server: Server, key: Key, repo: str, body: object) -> httpx.Response:
    with server.client(key.token) as client:
        return client.post(f"{REPOS}/{repo}/tags", json=body)


def get_tag(server: Server, key: Key, repo: str, tag: str) -> httpx.Response:
    with server.client(key.token) as client:
        return client.get(f"{REPOS}/{repo}/tags/{tag}")


def update_tag(server: Server, key: Key, repo: str, tag: str, body: object) -> httpx.Response:
    with server.client(key.token) as client:
        return client.patch(f"{REPOS}/{repo}/tags/{tag}", json=body)


def publish_commit(server: Server, key: Key, commit_id: str) -> None:
    with server.client(key.token) as client:
        response = client.patch(f"/api/v1/commits/{commit_id}", json={"is_public": True})
    assert response.status_code == 200


ROUNDS = 8


def race_creates_with_delete(
    server: Server, key: Key, repos: list[str], commit_id: str
) -> list[httpx.Response]:
    """Per repository, a stream of tag creates with its DELETE sent halfway through."""

    def creating(repo: str) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
        return lambda client: client.post(
            f"{REPOS}/{repo}/tags", json={"tag_name": unique_name("t"), "commit_id": commit_id}
        )

    rounds = [(f"{REPOS}/{repo}", creating(repo)) for repo in repos]
    return asyncio.run(creates_racing_deletes(server, key, rounds))


class TestCreateRepoTag:
    def test_created_is_201_with_reference(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        repo = make_repository(server, key)
        commit = make_commit(backend, key)
        response = create_tag(
            server, key, repo, {"tag_name": "v1.0", "commit_id": commit.commit_id}
        )
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"tag_id", "reference", "commit_id"}
        assert UUID4.match(body["tag_id"])
        assert body["reference"] == f"{repo}:v1.0"
        assert body["commit_id"] == commit.commit_id

    def test_uppercase_commit_id_is_stored_canonical(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        repo = make_repository(server, key)
        commit = make_commit(backend, key)
        body = {"tag_name": "up", "commit_id": commit.commit_id.upper()}
        assert create_tag(server, key, repo, body).json()["commit_id"] == commit.commit_id
        assert get_tag(server, key, repo, "up").json()["commit_id"] == commit.commit_id

    def test_a_colleagues_commit_may_be_tagged(
        self, server: Server, backend: Backend, key: Key, colleague: Key
    ) -> None:
        repo = make_repository(server, key)
        commit = make_commit(backend, colleague)
        body = {"tag_name": "theirs", "commit_id": commit.commit_id}
        assert create_tag(server, key, repo, body).status_code == 201

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("", INVALID_LENGTH),
            ("x" * 129, INVALID_LENGTH),
            ("repo:tag", INVALID_CHARACTERS),
            ("a/b", INVALID_CHARACTERS),
            ("é", INVALID_CHARACTERS),
            ("sp ace", INVALID_CHARACTERS),
            (".", "invalid tag name: Tag name cannot be '.' or '..'"),
        ],
    )
    def test_invalid_name_is_400_before_any_lookup(
        self, server: Server, key: Key, name: str, message: str
    ) -> None:
        body = {"tag_name": name, "commit_id": str(uuid.uuid4())}
        response = create_tag(server, key, unique_name("no-such-repo"), body)
        assert response.status_code == 400
        assert response.json() == error(message)

    def test_128_characters_is_accepted(self, server: Server, backend: Backend, key: Key) -> None:
        repo = make_repository(server, key)
        body = {"tag_name": "t" * 128, "commit_id": make_commit(backend, key).commit_id}
        assert create_tag(server, key, repo, body).status_code == 201

    def test_description_with_nul_is_400(self, server: Server, backend: Backend, key: Key) -> None:
        repo = make_repository(server, key)
        body = {"tag_name": "n", "commit_id": make_commit(backend, key).commit_id}
        response = create_tag(server, key, repo, {**body, "description": "a\x00b"})
        assert response.status_code == 400
        assert response.json() == error("description must not contain NUL characters")

    def test_unknown_repository_is_404(self, server: Server, backend: Backend, key: Key) -> None:
        body = {"tag_name": "v1", "commit_id": make_commit(backend, key).commit_id}
        response = create_tag(server, key, unique_name(), body)
        assert response.status_code == 404
        assert response.json() == error("repository not found")

    def test_another_organizations_repository_is_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        repo = make_repository(server, key)
        body = {"tag_name": "v1", "commit_id": make_commit(backend, stranger).commit_id}
        response = create_tag(server, stranger, repo, body)
        assert response.status_code == 404
        assert response.json() == error("repository not found")

    def test_unknown_commit_is_404(self, server: Server, key: Key) -> None:
        repo = make_repository(server, key)
        response = create_tag(server, key, repo, {"tag_name": "v1", "commit_id": str(uuid.uuid4())})
        assert response.status_code == 404
        assert response.json() == error("commit not found")

    def test_deleted_commit_is_404(self, server: Server, backend: Backend, key: Key) -> None:
        repo = make_repository(server, key)
        commit = make_commit(backend, key)
        with server.client(key.token) as client:
            assert client.delete(f"/api/v1/commits/{commit.commit_id}").status_code == 204
        response = create_tag(server, key, repo, {"tag_name": "v1", "commit_id": commit.commit_id})
        assert response.status_code == 404
        assert response.json() == error("commit not found")

    def test_another_organizations_private_commit_is_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        repo = make_repository(server, key)
        commit = make_commit(backend, stranger)
        response = create_tag(server, key, repo, {"tag_name": "v1", "commit_id": commit.commit_id})
        assert response.status_code == 404
        assert response.json() == error("commit not found")

    def test_another_organizations_public_commit_is_403(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        repo = make_repository(server, key)
        commit = make_commit(backend, stranger)
        publish_commit(server, stranger, commit.commit_id)
        response = create_tag(server, key, repo, {"tag_name": "v1", "commit_id": commit.commit_id})
        assert response.status_code == 403
        assert response.json() == error("forbidden")

    def test_duplicate_is_409(self, server: Server, backend: Backend, key: Key) -> None:
        repo = make_repository(server, key)
        body = {"tag_name": "v1", "commit_id": make_commit(backend, key).commit_id}
        assert create_tag(server, key, repo, body).status_code == 201
        response = create_tag(server, key, repo, body)
        assert response.status_code == 409
        assert response.json() == error("tag already exists in repository")

    def test_same_name_in_another_repository_and_org_wide_is_201(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        commit_id = make_commit(backend, key).commit_id
        name = unique_name("tag")
        for repo in (make_repository(server, key), make_repository(server, key)):
            body = {"tag_name": name, "commit_id": commit_id}
            assert create_tag(server, key, repo, body).status_code == 201
        with server.client(key.token) as client:
            body = {"tag_name": name, "commit_id": commit_id}
            assert client.post("/api/v1/commit_tags", json=body).status_code == 201

    @pytest.mark.parametrize(
        ("body", "detail"),
        [
            ({"tag_name": "v1"}, "data: Object missing required field `commit_id`"),
            ({"tag_name": "v1", "commit_id": "nope"}, "commit_id: Invalid UUID"),
            ({"commit_id": "00000000-0000-4000-8000-000000000000"}, None),
        ],
    )
    def test_wrong_shape_is_422(
        self, server: Server, key: Key, body: object, detail: str | None
    ) -> None:
        response = create_tag(server, key, "any", body)
        assert response.status_code == 422
        message = response.json()["error"]
        assert message.startswith("Failed to deserialize the JSON body into the target type: ")
        if detail is not None:
            assert message.endswith(detail)

    def test_without_key_is_401(self, server: Server) -> None:
        with server.client() as client:
            response = client.post(f"{REPOS}/any/tags", content=b"{bad")
        assert response.status_code == 401
        assert response.json() == error("Missing or invalid Authorization header")


class TestCreateRepoTagRacingRepositoryDelete:
    def test_every_create_is_201_or_404_never_500(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        # Issue 10, defect 15: on PostgreSQL a tag whose repository was deleted after the
        # create had found it broke the foreign key, a 500. Each round deletes the
        # repository in the middle of a stream of creates, so both outcomes occur.
        commit_id = make_commit(backend, key).commit_id
        repos = [make_repository(server, key) for _ in range(ROUNDS)]
        answers = race_creates_with_delete(server, key, repos, commit_id)
        for response in answers:
            if response.status_code != 201:
                assert (response.status_code, response.json()) == (
                    404,
                    error("repository not found"),
                ), response.text
        assert {response.status_code for response in answers} == {201, 404}
        with server.client(key.token) as client:
            assert {client.get(f"{REPOS}/{repo}/tags").status_code for repo in repos} == {404}


class TestListRepoTags:
    def test_lists_in_name_order_with_all_fields(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        repo = make_repository(server, key)
        commit_id = make_commit(backend, key).commit_id
        names = ["v2", "V1", "latest", "_a", "v10"]
        for name in names:
            create_tag(server, key, repo, {"tag_name": name, "commit_id": commit_id})
        with server.client(key.token) as client:
            response = client.get(f"{REPOS}/{repo}/tags")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"repository", "tags"}
        assert body["repository"] == repo
        assert [t["tag_name"] for t in body["tags"]] == sorted(names, key=str.encode)
        for tag in body["tags"]:
            assert set(tag) == TAG_KEYS
            assert tag["reference"] == f"{repo}:{tag['tag_name']}"
            assert tag["commit_id"] == commit_id
            assert tag["description"] is None
            assert TIMESTAMP.match(tag["created_at"])
            assert tag["updated_at"] == tag["created_at"]

    def test_org_wide_tags_are_not_listed(self, server: Server, backend: Backend, key: Key) -> None:
        repo = make_repository(server, key)
        commit_id = make_commit(backend, key).commit_id
        with server.client(key.token) as client:
            body = {"tag_name": unique_name("org"), "commit_id": commit_id}
            assert client.post("/api/v1/commit_tags", json=body).status_code == 201
            assert client.get(f"{REPOS}/{repo}/tags").json() == {"repository": repo, "tags": []}

    def test_a_colleague_sees_them(
        self, server: Server, backend: Backend, key: Key, colleague: Key
    ) -> None:
        repo = make_repository(server, key)
        commit_id = make_commit(backend, key).commit_id
        create_tag(server, key, repo, {"tag_name": "v1", "commit_id": commit_id})
        with server.client(colleague.token) as client:
            tags = client.get(f"{REPOS}/{repo}/tags").json()["tags"]
        assert [t["tag_name"] for t in tags] == ["v1"]

    @pytest.mark.parametrize("who", ["stranger", "nobody"])
    def test_unknown_or_foreign_repository_is_404(
        self, server: Server, key: Key, stranger: Key, who: str
    ) -> None:
        repo = make_repository(server, key) if who == "stranger" else unique_name()
        with server.client(stranger.token) as client:
            response = client.get(f"{REPOS}/{repo}/tags")
        assert response.status_code == 404
        assert response.json() == error("repository not found")


class TestGetRepoTag:
    def test_found_is_200(self, server: Server, backend: Backend, key: Key) -> None:
        repo = make_repository(server, key)
        commit_id = make_commit(backend, key).commit_id
        body = {"tag_name": "v1", "commit_id": commit_id, "description": "first"}
        created = create_tag(server, key, repo, body).json()
        response = get_tag(server, key, repo, "v1")
        assert response.status_code == 200
        tag = response.json()
        assert set(tag) == TAG_KEYS
        assert tag["tag_id"] == created["tag_id"]
        assert (tag["tag_name"], tag["reference"]) == ("v1", f"{repo}:v1")
        assert (tag["commit_id"], tag["description"]) == (commit_id, "first")

    def test_unknown_repository_is_404(self, server: Server, key: Key) -> None:
        response = get_tag(server, key, unique_name(), "v1")
        assert response.status_code == 404
        assert response.json() == error("repository not found")

    @pytest.mark.parametrize("tag", ["missing", "V1", "x" * 129, "a%3Ab"])
    def test_unknown_tag_is_404(self, server: Server, backend: Backend, key: Key, tag: str) -> None:
        repo = make_repository(server, key)
        create_tag(
            server, key, repo, {"tag_name": "v1", "commit_id": make_commit(backend, key).commit_id}
        )
        response = get_tag(server, key, repo, tag)
        assert response.status_code == 404
        assert response.json() == error("tag not found")

    def test_another_organization_gets_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        repo = make_repository(server, key)
        create_tag(
            server, key, repo, {"tag_name": "v1", "commit_id": make_commit(backend, key).commit_id}
        )
        response = get_tag(server, stranger, repo, "v1")
        assert response.status_code == 404
        assert response.json() == error("repository not found")


class TestUpdateRepoTag:
    def tagged(self, server: Server, backend: Backend, key: Key) -> tuple[str, str]:
        repo = make_repository(server, key)
        commit_id = make_commit(backend, key).commit_id
        body = {"tag_name": "v1", "commit_id": commit_id, "description": "original"}
        assert create_tag(server, key, repo, body).status_code == 201
        return repo, commit_id

    def test_description_is_tri_state(self, server: Server, backend: Backend, key: Key) -> None:
        repo, commit_id = self.tagged(server, backend, key)
        for body, expected in [
            ({"description": "changed"}, "changed"),
            ({"commit_id": commit_id}, "changed"),
            ({"description": None}, None),
            ({"description": ""}, ""),
        ]:
            response = update_tag(server, key, repo, "v1", body)
            assert response.status_code == 204
            assert response.content == b""
            assert get_tag(server, key, repo, "v1").json()["description"] == expected

    def test_moving_changes_commit_and_updated_at_only(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        repo, _ = self.tagged(server, backend, key)
        before = get_tag(server, key, repo, "v1").json()
        newer = make_commit(backend, key).commit_id
        assert update_tag(server, key, repo, "v1", {"commit_id": newer}).status_code == 204
        after = get_tag(server, key, repo, "v1").json()
        assert after["commit_id"] == newer
        assert after["description"] == "original"
        assert after["created_at"] == before["created_at"]
        assert after["updated_at"] > before["updated_at"]
        assert after["tag_id"] == before["tag_id"]

    @pytest.mark.parametrize("body", [{}, {"commit_id": None}])
    def test_no_updates_is_400_before_any_lookup(
        self, server: Server, key: Key, body: object
    ) -> None:
        response = update_tag(server, key, unique_name(), "v1", body)
        assert response.status_code == 400
        assert response.json() == error("no updates provided")

    def test_unknown_repository_and_tag_are_404(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        repo, _ = self.tagged(server, backend, key)
        missing_repo = update_tag(server, key, unique_name(), "v1", {"description": "x"})
        assert missing_repo.json() == error("repository not found")
        missing_tag = update_tag(server, key, repo, "v2", {"description": "x"})
        assert missing_tag.status_code == 404
        assert missing_tag.json() == error("tag not found")

    def test_unknown_commit_is_404_and_changes_nothing(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        repo, commit_id = self.tagged(server, backend, key)
        body = {"commit_id": str(uuid.uuid4()), "description": "lost"}
        response = update_tag(server, key, repo, "v1", body)
        assert response.status_code == 404
        assert response.json() == error("commit not found")
        tag = get_tag(server, key, repo, "v1").json()
        assert (tag["commit_id"], tag["description"]) == (commit_id, "original")

    def test_another_organizations_public_commit_is_403(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        repo, _ = self.tagged(server, backend, key)
        foreign = make_commit(backend, stranger).commit_id
        publish_commit(server, stranger, foreign)
        response = update_tag(server, key, repo, "v1", {"commit_id": foreign})
        assert response.status_code == 403
        assert response.json() == error("forbidden")

    def test_a_colleague_may_update(
        self, server: Server, backend: Backend, key: Key, colleague: Key
    ) -> None:
        repo, _ = self.tagged(server, backend, key)
        assert update_tag(server, colleague, repo, "v1", {"description": "c"}).status_code == 204

    def test_another_organization_gets_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        repo, _ = self.tagged(server, backend, key)
        response = update_tag(server, stranger, repo, "v1", {"description": "x"})
        assert response.json() == error("repository not found")

    def test_bad_commit_id_is_422(self, server: Server, key: Key) -> None:
        response = update_tag(server, key, "r", "t", {"commit_id": "nope"})
        assert response.status_code == 422
        assert response.json() == error(
            "Failed to deserialize the JSON body into the target type: commit_id: Invalid UUID"
        )


class TestDeleteRepoTag:
    def test_deleted_is_204_and_its_commit_stays(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        repo = make_repository(server, key)
        commit = make_commit(backend, key)
        create_tag(server, key, repo, {"tag_name": "v1", "commit_id": commit.commit_id})
        with server.client(key.token) as client:
            response = client.delete(f"{REPOS}/{repo}/tags/v1")
            assert response.status_code == 204
            assert response.content == b""
            assert get_tag(server, key, repo, "v1").json() == error("tag not found")
            again = client.delete(f"{REPOS}/{repo}/tags/v1")
            assert again.status_code == 404
            assert again.json() == error("tag not found")
            listed = client.get("/api/v1/commits", params={"limit": 100}).json()["commits"]
        assert commit.commit_id in {c["commit_id"] for c in listed}

    def test_unknown_and_foreign_repository_are_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        repo = make_repository(server, key)
        create_tag(
            server, key, repo, {"tag_name": "v1", "commit_id": make_commit(backend, key).commit_id}
        )
        with server.client(stranger.token) as client:
            assert client.delete(f"{REPOS}/{repo}/tags/v1").json() == error("repository not found")
        with server.client(key.token) as client:
            response = client.delete(f"{REPOS}/{unique_name()}/tags/v1")
        assert response.json() == error("repository not found")
        assert get_tag(server, key, repo, "v1").status_code == 200


class TestRepoTagsWithSdk:
    def test_create_list_get_update_delete(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        repo = make_repository(server, owner)
        commit_id = make_commit(backend, owner).commit_id
        token = owner.token
        created = sdk_call(
            server,
            token,
            lambda c: c.create_repo_tag(repo, {"tag_name": "v1", "commit_id": commit_id}),
        )
        assert created["reference"] == f"{repo}:v1"
        listed = sdk_call(server, token, lambda c: c.list_repo_tags(repo))
        assert [t["tag_id"] for t in listed["tags"]] == [created["tag_id"]]
        assert (
            sdk_call(server, token, lambda c: c.update_repo_tag(repo, "v1", {"description": "d"}))
            == {}
        )
        got = sdk_call(server, token, lambda c: c.get_repo_tag(repo, "v1"))
        assert set(got) == TAG_KEYS
        assert got["description"] == "d"
        assert sdk_call(server, token, lambda c: c.delete_repo_tag(repo, "v1")) == {}
        with pytest.raises(NotFoundError) as raised:
            sdk_call(server, token, lambda c: c.get_repo_tag(repo, "v1"))
        assert raised.value.body == error("tag not found")

    def test_duplicate_raises_conflict(self, server: Server, backend: Backend, key: Key) -> None:
        repo = make_repository(server, key)
        body = {"tag_name": "v1", "commit_id": make_commit(backend, key).commit_id}
        sdk_call(server, key.token, lambda c: c.create_repo_tag(repo, body))
        with pytest.raises(ConflictError) as raised:
            sdk_call(server, key.token, lambda c: c.create_repo_tag(repo, body), max_retries=0)
        assert raised.value.body == error("tag already exists in repository")

    def test_errors_of_the_other_operations(self, server: Server, key: Key) -> None:
        missing = unique_name()
        for call in (
            lambda c: c.list_repo_tags(missing),
            lambda c: c.update_repo_tag(missing, "v1", {"description": "d"}),
            lambda c: c.delete_repo_tag(missing, "v1"),
        ):
            with pytest.raises(NotFoundError) as raised:
                sdk_call(server, key.token, call)
            assert raised.value.body == error("repository not found")
