"""The official Python client, vers-sdk 1.20.0, unchanged, against our server."""

from __future__ import annotations

import uuid

import pytest
from vers_sdk import AuthenticationError, BadRequestError, ConflictError
from vers_sdk.client import RequestOptions

from tests.support import Key, Server, sdk_call, unique_name


class TestCreateRepositoryWithSdk:
    def test_creates(self, server: Server, key: Key) -> None:
        name = unique_name()
        created = sdk_call(
            server, key.token, lambda c: c.create_repository({"name": name, "description": "d"})
        )
        assert set(created) == {"repo_id", "name"}
        assert created["name"] == name
        assert uuid.UUID(created["repo_id"]).version == 4

    def test_duplicate_raises_conflict_after_its_retries(self, server: Server, key: Key) -> None:
        # Default retries: the SDK re-sends the 409 twice with the same idempotency key
        # and gets the same answer each time.
        name = unique_name()
        sdk_call(server, key.token, lambda c: c.create_repository({"name": name}))
        with pytest.raises(ConflictError) as raised:
            sdk_call(server, key.token, lambda c: c.create_repository({"name": name}))
        assert raised.value.status == 409
        assert raised.value.body == {"success": False, "error": "repository already exists"}

    def test_invalid_name_raises_bad_request(self, server: Server, key: Key) -> None:
        with pytest.raises(BadRequestError) as raised:
            sdk_call(server, key.token, lambda c: c.create_repository({"name": "no/slash"}))
        assert raised.value.status == 400
        assert raised.value.body["error"].startswith("invalid repository name: ")

    def test_missing_key_raises_authentication_error(self, server: Server) -> None:
        with pytest.raises(AuthenticationError) as raised:
            sdk_call(server, None, lambda c: c.create_repository({"name": unique_name()}))
        assert raised.value.status == 401
        assert raised.value.body == {
            "success": False,
            "error": "Missing or invalid Authorization header",
        }

    def test_resent_request_is_replayed_not_conflicting(self, server: Server, key: Key) -> None:
        # What the SDK does after a timeout: the same request with the same idempotency key.
        same_key = RequestOptions(headers={"X-Idempotency-Key": str(uuid.uuid4())})
        body = {"name": unique_name()}
        first = sdk_call(server, key.token, lambda c: c.create_repository(body, same_key))
        again = sdk_call(server, key.token, lambda c: c.create_repository(body, same_key))
        assert again == first
