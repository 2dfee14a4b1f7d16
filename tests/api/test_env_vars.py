"""/api/v1/env_vars: a user's environment variables, over HTTP and the SDK, on SQLite and
PostgreSQL. What a VM sees of them is in `test_vm_guest.py`."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from vers_sdk import NotFoundError

from tests.support import Backend, Key, Server, error, make_key, sdk_call, unique_name

PATH = "/api/v1/env_vars"


@pytest.fixture
def user(backend: Backend) -> Key:
    """A key of a user of its own, so that each test starts from no variables."""
    return make_key(backend)


def put(server: Server, key: Key, body: Any) -> httpx.Response:
    with server.client(key.token) as client:
        return client.put(PATH, json=body)


def listed(server: Server, key: Key) -> Any:
    with server.client(key.token) as client:
        response = client.get(PATH)
    assert response.status_code == 200
    return response.json()


class TestSetAndList:
    def test_a_new_user_has_none(self, server: Server, user: Key) -> None:
        assert listed(server, user) == {"vars": {}}

    def test_a_put_upserts_and_answers_the_whole_set(self, server: Server, user: Key) -> None:
        first = put(server, user, {"vars": {"A": "1", "B": "two words"}})
        assert (first.status_code, first.json()) == (200, {"vars": {"A": "1", "B": "two words"}})
        second = put(server, user, {"vars": {"B": "", "C_3": "'quoted' \"too\""}})
        assert second.json() == {"vars": {"A": "1", "B": "", "C_3": "'quoted' \"too\""}}
        assert listed(server, user) == second.json()

    def test_replace_sets_exactly_these_and_may_clear(self, server: Server, user: Key) -> None:
        put(server, user, {"vars": {"A": "1", "B": "2"}})
        replaced = put(server, user, {"vars": {"C": "3"}, "replace": True})
        assert replaced.json() == {"vars": {"C": "3"}}
        cleared = put(server, user, {"vars": {}, "replace": True})
        assert (cleared.status_code, cleared.json()) == (200, {"vars": {}})

    def test_every_key_of_a_user_shares_one_set_and_no_one_else_sees_it(
        self, server: Server, backend: Backend, user: Key
    ) -> None:
        user_name = unique_name("user")
        mine = make_key(backend, org=user.org_name, user=user_name)
        again = make_key(backend, org=user.org_name, user=user_name)
        colleague = make_key(backend, org=user.org_name)
        put(server, mine, {"vars": {"SHARED": "yes"}})
        assert listed(server, again) == {"vars": {"SHARED": "yes"}}
        assert listed(server, colleague) == {"vars": {}}

    def test_the_sdk_sets_lists_and_deletes(self, server: Server, user: Key) -> None:
        set_ = sdk_call(server, user.token, lambda c: c.set_env_vars({"vars": {"K": "v"}}))
        assert set_ == {"vars": {"K": "v"}}
        assert sdk_call(server, user.token, lambda c: c.list_env_vars()) == {"vars": {"K": "v"}}
        sdk_call(server, user.token, lambda c: c.delete_env_var("K"))
        assert sdk_call(server, user.token, lambda c: c.list_env_vars()) == {"vars": {}}
        with pytest.raises(NotFoundError):
            sdk_call(server, user.token, lambda c: c.delete_env_var("K"))


class TestValidation:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (
                {"vars": {}},
                "vars must not be empty (use replace: true with empty vars to clear all)",
            ),
            (
                {"vars": {f"K{n}": "v" for n in range(101)}},
                "too many variables in request (max 100)",
            ),
            (
                {"vars": {"K" * 257: "v"}},
                f"key '{'K' * 32}...' exceeds 256 character limit",
            ),
            # Multi-byte characters: the text shows whole characters, never half of one.
            ({"vars": {"é" * 200: "v"}}, f"key '{'é' * 16}...' exceeds 256 character limit"),
            ({"vars": {"1A": "v"}}, "key '1A' is not a valid shell identifier"),
            ({"vars": {"A-B": "v"}}, "key 'A-B' is not a valid shell identifier"),
            ({"vars": {"": "v"}}, "key '' is not a valid shell identifier"),
            ({"vars": {"é": "v"}}, "key 'é' is not a valid shell identifier"),
            (
                {"vars": {"A": "x" * 8193}},
                "value for key 'A' exceeds 8192 character limit",
            ),
            ({"vars": {"A": "é" * 4097}}, "value for key 'A' exceeds 8192 character limit"),
            ({"vars": {"A": "one\ntwo"}}, "value for key 'A' must not contain a newline"),
            ({"vars": {"A": "one\rtwo"}}, "value for key 'A' must not contain a newline"),
            # Every line boundary a reader of /etc/environment might split on.
            *(
                (
                    {"vars": {"A": f"a{brk}INJECTED=1"}},
                    "value for key 'A' must not contain a newline",
                )
                for brk in ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
            ),
            ({"vars": {"A": "a\u0000b"}}, "value for key 'A' must not contain a NUL character"),
            # Entries are checked in key order: the same one is reported every time.
            ({"vars": {"Z-": "v", "1A": "v"}}, "key '1A' is not a valid shell identifier"),
        ],
    )
    def test_a_bad_request_is_400_and_changes_nothing(
        self, server: Server, user: Key, body: Any, message: str
    ) -> None:
        put(server, user, {"vars": {"KEPT": "1"}})
        response = put(server, user, body)
        assert (response.status_code, response.json()) == (400, error(message))
        assert listed(server, user) == {"vars": {"KEPT": "1"}}

    def test_the_largest_legal_request_fits(self, server: Server, user: Key) -> None:
        # 100 values of 8192 bytes, each twice as long once escaped in JSON.
        body = {"vars": {f"K{n}": '"' * 8192 for n in range(100)}}
        response = put(server, user, body)
        assert response.status_code == 200
        assert len(response.json()["vars"]) == 100

    def test_at_most_256_per_user(self, server: Server, user: Key) -> None:
        for start in range(0, 250, 50):
            body = {"vars": {f"V{n}": "v" for n in range(start, start + 50)}}
            assert put(server, user, body).status_code == 200
        over = put(server, user, {"vars": {f"W{n}": "v" for n in range(7)}})
        assert (over.status_code, over.json()) == (
            400,
            error("would exceed maximum of 256 environment variables per user"),
        )
        # Overwriting existing keys adds none.
        assert put(server, user, {"vars": {"V0": "new", "W0": "v"}}).status_code == 200
        assert len(listed(server, user)["vars"]) == 251

    def test_the_wrong_shape_is_422(self, server: Server, user: Key) -> None:
        for body in ({}, {"vars": {"A": 1}}, {"vars": {"A": "1"}, "replace": None}):
            response = put(server, user, body)
            assert response.status_code == 422
            assert response.json()["error"].startswith("Failed to deserialize the JSON body")


class TestConcurrentWrites:
    """Two keys of one user writing at once: one after the other, never both half-seen."""

    def test_the_per_user_limit_holds(self, server: Server, backend: Backend) -> None:
        first, second = self._two_keys_of_one_user(backend)
        for start in (0, 100):
            body = {"vars": {f"V{n}": "v" for n in range(start, start + 100)}}
            assert put(server, first, body).status_code == 200
        batches = [{"vars": {f"{who}{n}": "v" for n in range(30)}} for who in ("A", "B")]
        statuses = self._at_once(server, [(first, batches[0]), (second, batches[1])])
        assert sorted(statuses) == [200, 400]
        assert len(listed(server, first)["vars"]) == 230

    def test_replaces_replace(self, server: Server, backend: Backend) -> None:
        first, second = self._two_keys_of_one_user(backend)
        sets = [{f"{who}{n}": "v" for n in range(50)} for who in ("A", "B")]
        bodies = [{"vars": one, "replace": True} for one in sets]
        assert self._at_once(server, [(first, bodies[0]), (second, bodies[1])]) == [200, 200]
        assert listed(server, first)["vars"] in sets

    @staticmethod
    def _two_keys_of_one_user(backend: Backend) -> tuple[Key, Key]:
        org, user_name = unique_name("org"), unique_name("user")
        return make_key(backend, org=org, user=user_name), make_key(
            backend, org=org, user=user_name
        )

    @staticmethod
    def _at_once(server: Server, requests: list[tuple[Key, Any]]) -> list[int]:
        async def run() -> list[int]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                answers = await asyncio.gather(
                    *(
                        client.put(PATH, json=body, headers={"Authorization": f"Bearer {k.token}"})
                        for k, body in requests
                    )
                )
            return [answer.status_code for answer in answers]

        return asyncio.run(run())


class TestDelete:
    def test_deletes_one_key_exactly(self, server: Server, user: Key) -> None:
        put(server, user, {"vars": {"A": "1", "a": "2"}})
        with server.client(user.token) as client:
            deleted = client.delete(f"{PATH}/A")
            assert (deleted.status_code, deleted.content) == (204, b"")
            again = client.delete(f"{PATH}/A")
            assert (again.status_code, again.json()) == (
                404,
                error("Environment variable not found"),
            )
        assert listed(server, user) == {"vars": {"a": "2"}}

    @pytest.mark.parametrize("key", ["%00", "1A", "A-B", "K" * 300])
    def test_a_key_that_cannot_exist_is_404(self, server: Server, user: Key, key: str) -> None:
        with server.client(user.token) as client:
            response = client.delete(f"{PATH}/{key}")
        assert (response.status_code, response.json()) == (
            404,
            error("Environment variable not found"),
        )

    def test_needs_a_key(self, server: Server) -> None:
        with server.client() as client:
            for response in (client.get(PATH), client.delete(f"{PATH}/A")):
                assert (response.status_code, response.json()) == (
                    401,
                    error("Missing or invalid Authorization header"),
                )
