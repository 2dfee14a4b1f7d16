"""/api/v1/public/repositories: browsing without a key, over HTTP and the SDK."""

from __future__ import annotations

import httpx
import pytest
from vers_sdk import NotFoundError

from tests.factories import make_commit
from tests.shapes import TIMESTAMP
from tests.support import Backend, Key, Server, error, make_key, sdk_call, unique_name

PUBLIC = "/api/v1/public/repositories"
PUBLIC_KEYS = {"repo_id", "org_name", "name", "full_name", "description", "created_at"}


def make_repository(server: Server, key: Key, public: bool = True, **body: object) -> str:
    name = unique_name()
    with server.client(key.token) as client:
        assert client.post("/api/v1/repositories", json={"name": name, **body}).status_code == 201
        if public:
            response = client.patch(
                f"/api/v1/repositories/{name}/visibility", json={"is_public": True}
            )
            assert response.status_code == 204
    return name


def tag(server: Server, key: Key, repo: str, tag_name: str, commit_id: str) -> None:
    with server.client(key.token) as client:
        body = {"tag_name": tag_name, "commit_id": commit_id}
        assert client.post(f"/api/v1/repositories/{repo}/tags", json=body).status_code == 201


def anonymous(server: Server, path: str, **headers: str) -> httpx.Response:
    with server.client(**headers) as client:
        return client.get(path)


class TestListPublicRepositories:
    def test_lists_public_repositories_of_every_organization(
        self, server: Server, key: Key, stranger: Key
    ) -> None:
        mine = make_repository(server, key, description="mine")
        theirs = make_repository(server, stranger)
        private = make_repository(server, key, public=False)
        response = anonymous(server, PUBLIC)
        assert response.status_code == 200
        assert set(response.json()) == {"repositories"}
        listed = {r["name"]: r for r in response.json()["repositories"]}
        assert private not in listed
        assert set(listed[mine]) == PUBLIC_KEYS
        assert listed[mine]["org_name"] == key.org_name
        assert listed[mine]["full_name"] == f"{key.org_name}/{mine}"
        assert listed[mine]["description"] == "mine"
        assert TIMESTAMP.match(listed[mine]["created_at"])
        assert listed[theirs]["org_name"] == stranger.org_name

    def test_ordered_by_name_then_organization(self, server: Server, backend: Backend) -> None:
        name = unique_name()
        owners = sorted([make_key(backend), make_key(backend)], key=lambda k: k.org_name)
        for owner in reversed(owners):
            with server.client(owner.token) as client:
                client.post("/api/v1/repositories", json={"name": name})
                client.patch(f"/api/v1/repositories/{name}/visibility", json={"is_public": True})
        repositories = anonymous(server, PUBLIC).json()["repositories"]
        names = [r["name"] for r in repositories]
        assert names == sorted(names, key=str.encode)
        same = [r["org_name"] for r in repositories if r["name"] == name]
        assert same == [owner.org_name for owner in owners]

    def test_unpublished_repository_disappears(self, server: Server, key: Key) -> None:
        name = make_repository(server, key)
        with server.client(key.token) as client:
            client.patch(f"/api/v1/repositories/{name}/visibility", json={"is_public": False})
        names = {r["name"] for r in anonymous(server, PUBLIC).json()["repositories"]}
        assert name not in names

    def test_any_authorization_header_is_ignored(self, server: Server) -> None:
        response = anonymous(server, PUBLIC, Authorization="Bearer not-a-key")
        assert response.status_code == 200


class TestGetPublicRepository:
    def test_found_is_200_and_echoes_the_path_spelling(self, server: Server, key: Key) -> None:
        name = make_repository(server, key, description="d")
        shouted = key.org_name.upper()
        response = anonymous(server, f"{PUBLIC}/{shouted}/{name}")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == PUBLIC_KEYS
        assert (body["org_name"], body["name"], body["full_name"]) == (
            shouted,
            name,
            f"{shouted}/{name}",
        )
        assert body["description"] == "d"

    def test_private_repository_is_404(self, server: Server, key: Key) -> None:
        name = make_repository(server, key, public=False)
        response = anonymous(server, f"{PUBLIC}/{key.org_name}/{name}")
        assert response.status_code == 404
        assert response.json() == error("repository not found")

    @pytest.mark.parametrize(
        ("org", "repo"),
        [("unknown-org", "x"), ("{org}", "missing"), ("{org}", "{upper}"), ("a%20b", "x")],
    )
    def test_missing_repository_is_404(self, server: Server, key: Key, org: str, repo: str) -> None:
        name = make_repository(server, key, description=None)
        path = f"{PUBLIC}/{org.format(org=key.org_name)}/{repo.format(upper=name.upper())}"
        response = anonymous(server, path)
        assert response.status_code == 404
        assert response.json() == error("repository not found")


class TestListPublicRepoTags:
    def test_lists_tags_with_org_qualified_repository(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        name = make_repository(server, key)
        commit_id = make_commit(backend, key).commit_id
        for tag_name in ("v2", "latest", "v1"):
            tag(server, key, name, tag_name, commit_id)
        with server.client(key.token) as client:
            org_tag = {"tag_name": unique_name("org"), "commit_id": commit_id}
            client.post("/api/v1/commit_tags", json=org_tag)
        shouted = key.org_name.upper()
        response = anonymous(server, f"{PUBLIC}/{shouted}/{name}/tags")
        assert response.status_code == 200
        body = response.json()
        assert body["repository"] == f"{shouted}/{name}"
        assert [t["tag_name"] for t in body["tags"]] == ["latest", "v1", "v2"]
        assert [t["reference"] for t in body["tags"]] == [
            f"{name}:latest",
            f"{name}:v1",
            f"{name}:v2",
        ]

    def test_private_repository_is_404(self, server: Server, key: Key) -> None:
        name = make_repository(server, key, public=False)
        response = anonymous(server, f"{PUBLIC}/{key.org_name}/{name}/tags")
        assert response.status_code == 404
        assert response.json() == error("repository not found")


class TestGetPublicRepoTag:
    def test_found_is_200(self, server: Server, backend: Backend, key: Key) -> None:
        name = make_repository(server, key)
        commit_id = make_commit(backend, key).commit_id
        tag(server, key, name, "v1", commit_id)
        response = anonymous(server, f"{PUBLIC}/{key.org_name}/{name}/tags/v1")
        assert response.status_code == 200
        body = response.json()
        assert (body["tag_name"], body["reference"], body["commit_id"]) == (
            "v1",
            f"{name}:v1",
            commit_id,
        )

    def test_anything_missing_or_private_is_the_same_404(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        public = make_repository(server, key)
        private = make_repository(server, key, public=False)
        commit_id = make_commit(backend, key).commit_id
        tag(server, key, public, "v1", commit_id)
        tag(server, key, private, "v1", commit_id)
        for path in (
            f"{key.org_name}/{private}/tags/v1",
            f"{key.org_name}/{public}/tags/v2",
            f"{key.org_name}/{unique_name()}/tags/v1",
            f"{unique_name('org')}/{public}/tags/v1",
            f"{key.org_name}/{public}/tags/a%3Ab",
        ):
            response = anonymous(server, f"{PUBLIC}/{path}")
            assert response.status_code == 404, path
            assert response.json() == error("tag not found")


class TestPublicWithSdk:
    def test_all_four_operations_without_a_key(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        name = make_repository(server, key)
        commit_id = make_commit(backend, key).commit_id
        tag(server, key, name, "v1", commit_id)
        org = key.org_name
        listed = sdk_call(server, None, lambda c: c.list_public_repositories())
        assert name in {r["name"] for r in listed["repositories"]}
        got = sdk_call(server, None, lambda c: c.get_public_repository(org, name))
        assert got["full_name"] == f"{org}/{name}"
        tags = sdk_call(server, None, lambda c: c.list_public_repo_tags(org, name))
        assert [t["tag_name"] for t in tags["tags"]] == ["v1"]
        one = sdk_call(server, None, lambda c: c.get_public_repo_tag(org, name, "v1"))
        assert one["commit_id"] == commit_id

    def test_errors(self, server: Server, key: Key) -> None:
        private = make_repository(server, key, public=False)
        org = key.org_name
        for call, message in (
            (lambda c: c.get_public_repository(org, private), "repository not found"),
            (lambda c: c.list_public_repo_tags(org, private), "repository not found"),
            (lambda c: c.get_public_repo_tag(org, private, "v1"), "tag not found"),
        ):
            with pytest.raises(NotFoundError) as raised:
                sdk_call(server, None, call)
            assert raised.value.body == error(message)
