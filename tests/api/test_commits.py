"""/api/v1/commits and /api/v1/vm/commits/{id}/parents, over HTTP and the SDK.

Commits come from VMs in a later issue; here they are recorded through the service the
VM layer will call (`tests.factories.make_commit`).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from vers_sdk import AuthenticationError, NotFoundError, PermissionDeniedError

from tests.factories import make_commit, make_commits, vm_row
from tests.shapes import COMMIT_TIMESTAMP, TIMESTAMP
from tests.support import Backend, Key, Server, error, make_key, sdk_call
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.commits import Commit
from vers_orchestrator.store.connect import open_database
from vers_orchestrator.store.database import Tx
from vers_orchestrator.store.vms import State

PATH = "/api/v1/commits"
COMMIT_KEYS = {
    "commit_id",
    "parent_vm_id",
    "grandparent_commit_id",
    "owner_id",
    "name",
    "description",
    "created_at",
    "is_public",
}
ENTITY_KEYS = (COMMIT_KEYS - {"commit_id"}) | {"id"}
DEFAULT_NAME = re.compile(
    r"\Acommit: of_vm=(?P<vm>[0-9a-f-]{36})"
    r" timestamp=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z"
)


def list_commits(server: Server, key: Key, path: str = PATH, **params: Any) -> httpx.Response:
    with server.client(key.token) as client:
        return client.get(path, params=params)


def update(server: Server, key: Key, commit_id: str, body: object) -> httpx.Response:
    with server.client(key.token) as client:
        return client.patch(f"{PATH}/{commit_id}", json=body)


def delete(server: Server, key: Key, commit_id: str) -> httpx.Response:
    with server.client(key.token) as client:
        return client.delete(f"{PATH}/{commit_id}")


def parents(server: Server, key: Key, commit_id: str) -> httpx.Response:
    with server.client(key.token) as client:
        return client.get(f"/api/v1/vm/commits/{commit_id}/parents")


class TestListCommits:
    def test_newest_first_with_every_field(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        made = make_commits(backend, owner, 3)
        response = list_commits(server, owner)
        assert response.status_code == 200
        body = response.json()
        assert (body["total"], body["limit"], body["offset"]) == (3, 50, 0)
        assert [c["commit_id"] for c in body["commits"]] == [c.commit_id for c in reversed(made)]
        for listed in body["commits"]:
            assert set(listed) == COMMIT_KEYS
            assert listed["owner_id"] == owner.api_key_id
            assert listed["grandparent_commit_id"] is None
            assert listed["description"] is None
            assert listed["is_public"] is False
            assert COMMIT_TIMESTAMP.match(listed["created_at"])
            name = DEFAULT_NAME.match(listed["name"])
            assert name is not None
            assert name.group("vm") == listed["parent_vm_id"]

    def test_per_key_not_per_organization(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        colleague = make_key(backend, org=owner.org_name)
        make_commit(backend, owner)
        assert list_commits(server, colleague).json()["commits"] == []
        assert list_commits(server, colleague).json()["total"] == 0

    def test_pages_with_limit_and_offset(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        newest_first = [c.commit_id for c in reversed(make_commits(backend, owner, 55))]
        default = list_commits(server, owner).json()
        assert (len(default["commits"]), default["total"]) == (50, 55)
        page = list_commits(server, owner, limit=10, offset=50).json()
        assert [c["commit_id"] for c in page["commits"]] == newest_first[50:]
        assert (page["total"], page["limit"], page["offset"]) == (55, 10, 50)

    @pytest.mark.parametrize(
        ("params", "limit", "offset"),
        [
            ({"limit": 0}, 1, 0),
            ({"limit": -7}, 1, 0),
            ({"limit": 1000}, 100, 0),
            ({"offset": -5}, 50, 0),
            ({"offset": 10**6}, 50, 10**6),
        ],
    )
    def test_out_of_range_values_are_clamped(
        self, server: Server, key: Key, params: dict[str, int], limit: int, offset: int
    ) -> None:
        body = list_commits(server, key, **params).json()
        assert (body["limit"], body["offset"]) == (limit, offset)

    @pytest.mark.parametrize("params", [{"limit": "ten"}, {"offset": "1.5"}, {"limit": 2**64}])
    def test_non_integers_are_400(self, server: Server, key: Key, params: dict[str, Any]) -> None:
        response = list_commits(server, key, **params)
        assert response.status_code == 400
        assert response.json()["error"].startswith("Failed to deserialize query string: ")

    def test_deleted_commits_are_not_listed(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        kept, gone = make_commits(backend, owner, 2)
        assert delete(server, owner, gone.commit_id).status_code == 204
        body = list_commits(server, owner).json()
        assert [c["commit_id"] for c in body["commits"]] == [kept.commit_id]
        assert body["total"] == 1

    def test_without_key_is_401(self, server: Server) -> None:
        with server.client() as client:
            assert client.get(PATH).status_code == 401


class TestListPublicCommits:
    def test_public_commits_of_every_organization_newest_first(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        before = list_commits(server, key, f"{PATH}/public").json()["total"]
        mine = make_commit(backend, key)
        make_commit(backend, key)  # stays private
        theirs = make_commit(backend, stranger)
        for owner, commit in ((key, mine), (stranger, theirs)):
            assert update(server, owner, commit.commit_id, {"is_public": True}).status_code == 200
        body = list_commits(server, key, f"{PATH}/public", limit=2).json()
        assert [c["commit_id"] for c in body["commits"]] == [theirs.commit_id, mine.commit_id]
        assert body["total"] == before + 2
        assert all(c["is_public"] for c in body["commits"])

    def test_deleted_public_commits_are_not_listed(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        commit = make_commit(backend, key)
        update(server, key, commit.commit_id, {"is_public": True})
        assert delete(server, key, commit.commit_id).status_code == 204
        listed = list_commits(server, key, f"{PATH}/public", limit=100).json()["commits"]
        assert commit.commit_id not in {c["commit_id"] for c in listed}

    def test_clamps_like_the_own_list(self, server: Server, key: Key) -> None:
        body = list_commits(server, key, f"{PATH}/public", limit=500, offset=-1).json()
        assert (body["limit"], body["offset"]) == (100, 0)

    def test_without_key_is_401(self, server: Server) -> None:
        with server.client() as client:
            response = client.get(f"{PATH}/public")
        assert response.status_code == 401
        assert response.json() == error("Missing or invalid Authorization header")


class TestUpdateCommit:
    def test_publishes_renames_and_answers_the_commit(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        commit = make_commit(backend, key)
        body = {"is_public": True, "name": "release", "description": "first"}
        response = update(server, key, commit.commit_id, body)
        assert response.status_code == 200
        updated = response.json()
        assert set(updated) == COMMIT_KEYS
        assert (updated["name"], updated["description"], updated["is_public"]) == (
            "release",
            "first",
            True,
        )
        assert updated["commit_id"] == commit.commit_id
        assert COMMIT_TIMESTAMP.match(updated["created_at"])

    @pytest.mark.parametrize(
        "body",
        [
            {"is_public": False},
            {"is_public": False, "name": None, "description": None},
            {"is_public": False, "name": "", "description": "  "},
        ],
    )
    def test_absent_null_or_blank_keep_name_and_description(
        self, server: Server, backend: Backend, key: Key, body: object
    ) -> None:
        commit = make_commit(backend, key, name="named", description="described")
        updated = update(server, key, commit.commit_id, body).json()
        assert (updated["name"], updated["description"]) == ("named", "described")

    def test_uppercase_id_is_accepted(self, server: Server, backend: Backend, key: Key) -> None:
        commit = make_commit(backend, key)
        response = update(server, key, commit.commit_id.upper(), {"is_public": False})
        assert response.status_code == 200
        assert response.json()["commit_id"] == commit.commit_id

    def test_a_colleague_is_403(
        self, server: Server, backend: Backend, key: Key, colleague: Key
    ) -> None:
        commit = make_commit(backend, key)
        response = update(server, colleague, commit.commit_id, {"is_public": True})
        assert response.status_code == 403
        assert response.json() == error("forbidden")

    def test_another_organization_gets_404_or_403_once_public(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        commit = make_commit(backend, key)
        hidden = update(server, stranger, commit.commit_id, {"is_public": True})
        assert hidden.status_code == 404
        assert hidden.json() == error("not found")
        update(server, key, commit.commit_id, {"is_public": True})
        refused = update(server, stranger, commit.commit_id, {"is_public": False})
        assert refused.status_code == 403
        assert refused.json() == error("forbidden")

    def test_unknown_or_deleted_is_404(self, server: Server, backend: Backend, key: Key) -> None:
        commit = make_commit(backend, key)
        delete(server, key, commit.commit_id)
        for commit_id in (commit.commit_id, str(uuid.uuid4())):
            response = update(server, key, commit_id, {"is_public": True})
            assert response.status_code == 404
            assert response.json() == error("not found")

    @pytest.mark.parametrize("commit_id", ["not-a-uuid", "1234", "%27%3B--"])
    def test_malformed_id_is_400(self, server: Server, key: Key, commit_id: str) -> None:
        response = update(server, key, commit_id, {"is_public": True})
        assert response.status_code == 400
        assert response.json() == error("Invalid URL: commit_id must be a UUID")

    def test_missing_is_public_is_422(self, server: Server, backend: Backend, key: Key) -> None:
        response = update(server, key, make_commit(backend, key).commit_id, {"name": "x"})
        assert response.status_code == 422
        assert response.json() == error(
            "Failed to deserialize the JSON body into the target type:"
            " data: Object missing required field `is_public`"
        )

    def test_nul_in_name_is_400(self, server: Server, backend: Backend, key: Key) -> None:
        commit_id = make_commit(backend, key).commit_id
        response = update(server, key, commit_id, {"is_public": True, "name": "a\x00"})
        assert response.status_code == 400
        assert response.json() == error("name must not contain NUL characters")


class TestDeleteCommit:
    def test_deleted_is_204_and_tags_stay(self, server: Server, backend: Backend, key: Key) -> None:
        commit = make_commit(backend, key)
        tag_name = f"t-{uuid.uuid4().hex[:8]}"
        with server.client(key.token) as client:
            body = {"tag_name": tag_name, "commit_id": commit.commit_id}
            assert client.post("/api/v1/commit_tags", json=body).status_code == 201
        response = delete(server, key, commit.commit_id)
        assert response.status_code == 204
        assert response.content == b""
        with server.client(key.token) as client:
            tag = client.get(f"/api/v1/commit_tags/{tag_name}")
        assert tag.status_code == 200
        assert tag.json()["commit_id"] == commit.commit_id

    def test_deleting_twice_is_404(self, server: Server, backend: Backend, key: Key) -> None:
        commit = make_commit(backend, key)
        assert delete(server, key, commit.commit_id).status_code == 204
        response = delete(server, key, commit.commit_id)
        assert response.status_code == 404
        assert response.json() == error("commit not found")

    def test_a_colleague_is_403(
        self, server: Server, backend: Backend, key: Key, colleague: Key
    ) -> None:
        commit = make_commit(backend, key)
        response = delete(server, colleague, commit.commit_id)
        assert response.status_code == 403
        assert response.json() == error("forbidden")
        assert update(server, key, commit.commit_id, {"is_public": False}).status_code == 200

    def test_another_organization_gets_404_or_403_once_public(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        commit = make_commit(backend, key)
        assert delete(server, stranger, commit.commit_id).json() == error("commit not found")
        update(server, key, commit.commit_id, {"is_public": True})
        refused = delete(server, stranger, commit.commit_id)
        assert refused.status_code == 403
        assert refused.json() == error("forbidden")

    def test_unknown_is_404_and_malformed_is_400(self, server: Server, key: Key) -> None:
        assert delete(server, key, str(uuid.uuid4())).json() == error("commit not found")
        malformed = delete(server, key, "nope")
        assert malformed.status_code == 400
        assert malformed.json() == error("Invalid URL: commit_id must be a UUID")

    def test_without_key_is_401(self, server: Server) -> None:
        with server.client() as client:
            assert client.delete(f"{PATH}/{uuid.uuid4()}").status_code == 401


class TestListParentCommits:
    def test_the_chain_from_the_commit_to_the_root(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        root = make_commit(backend, key, description="root")
        middle = make_commit(backend, key, grandparent=root)
        leaf = make_commit(backend, key, grandparent=middle)
        response = parents(server, key, leaf.commit_id)
        assert response.status_code == 200
        chain = response.json()
        assert [c["id"] for c in chain] == [leaf.commit_id, middle.commit_id, root.commit_id]
        assert [c["grandparent_commit_id"] for c in chain] == [
            middle.commit_id,
            root.commit_id,
            None,
        ]
        for entity in chain:
            assert set(entity) == ENTITY_KEYS
            assert TIMESTAMP.match(entity["created_at"])
            assert entity["owner_id"] == key.api_key_id
        assert chain[2]["description"] == "root"

    def test_the_walk_stops_at_a_deleted_ancestor(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        root = make_commit(backend, key)
        middle = make_commit(backend, key, grandparent=root)
        leaf = make_commit(backend, key, grandparent=middle)
        assert delete(server, key, middle.commit_id).status_code == 204
        assert [c["id"] for c in parents(server, key, leaf.commit_id).json()] == [leaf.commit_id]

    def test_each_commit_of_a_vm_names_its_previous_live_one(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        started_from = make_commit(backend, key)
        vm_id = str(uuid.uuid4())
        first = make_commit(backend, key, grandparent=started_from, parent_vm_id=vm_id)
        second = make_commit(backend, key, grandparent=started_from, parent_vm_id=vm_id)
        third = make_commit(backend, key, grandparent=started_from, parent_vm_id=vm_id)
        assert [c.grandparent_commit_id for c in (first, second, third)] == [
            started_from.commit_id,
            first.commit_id,
            second.commit_id,
        ]
        chain = parents(server, key, third.commit_id).json()
        assert [(c["id"], c["parent_vm_id"], c["grandparent_commit_id"]) for c in chain] == [
            (third.commit_id, vm_id, second.commit_id),
            (second.commit_id, vm_id, first.commit_id),
            (first.commit_id, vm_id, started_from.commit_id),
            (started_from.commit_id, started_from.parent_vm_id, None),
        ]
        # A deleted commit is passed over, as the walk would stop at it.
        assert delete(server, key, third.commit_id).status_code == 204
        fourth = make_commit(backend, key, grandparent=started_from, parent_vm_id=vm_id)
        assert fourth.grandparent_commit_id == second.commit_id

    def test_a_colleague_may_read_it(
        self, server: Server, backend: Backend, key: Key, colleague: Key
    ) -> None:
        commit = make_commit(backend, key)
        assert parents(server, colleague, commit.commit_id).status_code == 200

    def test_deleted_unknown_or_foreign_private_commit_is_404(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        deleted = make_commit(backend, key)
        delete(server, key, deleted.commit_id)
        foreign = make_commit(backend, stranger)
        for commit_id in (deleted.commit_id, str(uuid.uuid4()), foreign.commit_id):
            response = parents(server, key, commit_id)
            assert response.status_code == 404
            assert response.json() == error("commit not found")

    def test_public_ancestors_of_another_organization_are_shown_private_ones_refused(
        self, server: Server, backend: Backend, key: Key, stranger: Key
    ) -> None:
        theirs = make_commit(backend, stranger)
        update(server, stranger, theirs.commit_id, {"is_public": True})
        mine = make_commit(backend, key, grandparent=theirs)
        chain = parents(server, key, mine.commit_id).json()
        assert [c["id"] for c in chain] == [mine.commit_id, theirs.commit_id]
        update(server, stranger, theirs.commit_id, {"is_public": False})
        response = parents(server, key, mine.commit_id)
        assert response.status_code == 403
        assert response.json() == error("forbidden")

    def test_malformed_id_is_400(self, server: Server, key: Key) -> None:
        response = parents(server, key, "nope")
        assert response.status_code == 400
        assert response.json() == error("Invalid URL: commit_id must be a UUID")


class TestCommitsWithSdk:
    def test_list_update_parents_delete(self, server: Server, backend: Backend) -> None:
        owner = make_key(backend)
        token = owner.token
        root = make_commit(backend, owner)
        leaf = make_commit(backend, owner, grandparent=root)
        listed = sdk_call(server, token, lambda c: c.list_commits())
        assert [c["commit_id"] for c in listed["commits"]] == [leaf.commit_id, root.commit_id]
        updated = sdk_call(
            server, token, lambda c: c.update_commit(root.commit_id, {"is_public": True})
        )
        assert updated["is_public"] is True
        public = sdk_call(server, token, lambda c: c.list_public_commits())
        assert public["commits"][0]["commit_id"] == root.commit_id
        chain = sdk_call(server, token, lambda c: c.list_parent_commits(leaf.commit_id))
        assert [c["id"] for c in chain] == [leaf.commit_id, root.commit_id]
        assert sdk_call(server, token, lambda c: c.delete_commit(leaf.commit_id)) == {}
        with pytest.raises(NotFoundError) as raised:
            sdk_call(server, token, lambda c: c.list_parent_commits(leaf.commit_id))
        assert raised.value.body == error("commit not found")

    def test_errors(self, server: Server, backend: Backend, key: Key, colleague: Key) -> None:
        commit_id = make_commit(backend, key).commit_id
        with pytest.raises(PermissionDeniedError) as refused:
            sdk_call(
                server, colleague.token, lambda c: c.update_commit(commit_id, {"is_public": True})
            )
        assert refused.value.body == error("forbidden")
        with pytest.raises(PermissionDeniedError):
            sdk_call(server, colleague.token, lambda c: c.delete_commit(commit_id))
        for call in (lambda c: c.list_commits(), lambda c: c.list_public_commits()):
            with pytest.raises(AuthenticationError):
                sdk_call(server, None, call)


class TestDeleteRacingAVmBeingMade:
    """A commit's delete and the admission of a VM started from it (issue 10, defect 15).

    The admission (services/vms/context.py) runs here through the store's own functions
    in a transaction the test holds open; the delete arrives over HTTP meanwhile. It must
    wait for that transaction and then count the VM: 409, and the commit stays."""

    def test_the_delete_counts_the_vm_recorded_meanwhile(
        self, backend: Backend, server: Server, key: Key
    ) -> None:
        if backend.kind != "postgresql":
            pytest.skip("SQLite runs write transactions one at a time: no race to order")
        commit = make_commit(backend, key)
        response = asyncio.run(self._delete_while_a_vm_is_recorded(backend, server, key, commit))
        assert (response.status_code, response.json()) == (
            409,
            error("commit still has 1 active VM(s)"),
        )
        with server.client(key.token) as client:
            listed = client.get("/api/v1/commits", params={"limit": 100}).json()["commits"]
        assert commit.commit_id in {listed_commit["commit_id"] for listed_commit in listed}

    @staticmethod
    async def _delete_while_a_vm_is_recorded(
        backend: Backend, server: Server, key: Key, commit: Commit
    ) -> httpx.Response:
        settings = Settings.from_env(backend.env)
        db = await open_database(settings)
        watcher = await asyncpg.connect(settings.effective_database_url)
        recorded, release = asyncio.Event(), asyncio.Event()
        vm = vm_row(key, parent_commit_id=commit.commit_id, state=State.CREATING)

        async def admit(tx: Tx) -> None:
            assert await commit_store.hold_live(tx, commit.commit_id)
            await vm_store.insert(tx, vm)
            recorded.set()
            await release.wait()

        try:
            admitting = asyncio.ensure_future(db.write(admit))
            await recorded.wait()
            headers = {"Authorization": f"Bearer {key.token}"}
            async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
                deleting = asyncio.ensure_future(
                    client.delete(f"/api/v1/commits/{commit.commit_id}")
                )
                deadline = time.monotonic() + 30
                while not await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE commits%'"
                ):
                    assert not deleting.done(), deleting.result().text
                    assert time.monotonic() < deadline, "the delete never waited for the VM"
                    await asyncio.sleep(0.02)
                release.set()
                await admitting
                return await deleting
        finally:
            release.set()
            await db.write(lambda tx: vm_store.set_state(tx, vm.vm_id, State.DELETED))
            await watcher.close()
            await db.close()
