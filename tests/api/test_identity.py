"""GET /api/v1/whoami and POST /api/v1/keys/validate, over HTTP and the SDK."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest
from vers_sdk import AuthenticationError

from tests.shapes import TIMESTAMP
from tests.support import Backend, Key, Server, error, make_key, sdk_call


class TestWhoami:
    def test_names_the_user_organization_and_key(self, server: Server, key: Key) -> None:
        with server.client(key.token) as client:
            response = client.get("/api/v1/whoami")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"user", "org", "api_key"}
        assert set(body["user"]) == {"id", "email", "user_name"}
        assert body["user"]["id"] == key.user_id
        assert body["user"]["email"] == ""
        assert body["org"] == {"id": key.org_id, "name": key.org_name}
        api_key = body["api_key"]
        assert set(api_key) == {
            "id",
            "label",
            "created_at",
            "expires_at",
            "max_memory_mib",
            "max_vcpus",
        }
        assert api_key["id"] == key.api_key_id
        assert api_key["label"] == ""
        assert TIMESTAMP.match(api_key["created_at"])
        assert (api_key["expires_at"], api_key["max_memory_mib"], api_key["max_vcpus"]) == (
            None,
            None,
            None,
        )

    def test_two_keys_of_one_organization_differ_only_by_key(
        self, server: Server, key: Key, colleague: Key
    ) -> None:
        with server.client(key.token) as mine, server.client(colleague.token) as theirs:
            first, second = mine.get("/api/v1/whoami").json(), theirs.get("/api/v1/whoami").json()
        assert first["org"] == second["org"]
        assert first["api_key"]["id"] != second["api_key"]["id"]

    def test_without_key_is_401(self, server: Server) -> None:
        with server.client() as client:
            response = client.get("/api/v1/whoami")
        assert response.status_code == 401
        assert response.json() == error("Missing or invalid Authorization header")

    def test_two_authorization_headers_are_401_whichever_comes_last(
        self, server: Server, key: Key
    ) -> None:
        with server.client() as client:
            for pair in (["Bearer invalid", f"Bearer {key.token}"], [f"Bearer {key.token}"] * 2):
                headers = [("Authorization", value) for value in pair]
                response = client.get("/api/v1/whoami", headers=headers)
                assert (response.status_code, response.json()) == (
                    401,
                    error("Invalid bearer token"),
                )

    def test_spaces_around_the_value_are_not_part_of_it(self, server: Server, key: Key) -> None:
        # httpx refuses to send such a value; a raw socket does.
        address = urlsplit(server.base_url)
        with socket.create_connection((address.hostname, address.port), timeout=10) as raw:
            raw.sendall(
                b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer " + key.token.encode() + b" \t\r\n\r\n"
            )
            reply = b""
            while chunk := raw.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 ")


class TestValidateKey:
    @pytest.mark.parametrize(
        ("content", "content_type"),
        [(None, None), (b"{}", "application/json"), (b"anything", "text/plain")],
    )
    def test_valid_key_is_200_whatever_the_body(
        self, server: Server, key: Key, content: bytes | None, content_type: str | None
    ) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        with server.client(key.token) as client:
            response = client.post("/api/v1/keys/validate", content=content, headers=headers)
        assert response.status_code == 200
        assert response.json() == {"valid": True, "message": "API key is valid"}

    def test_invalid_or_revoked_key_is_401(self, server: Server, backend: Backend) -> None:
        revoked = make_key(backend)
        backend.cli("keys", "revoke", revoked.api_key_id)
        for token in (revoked.token, "0" * 100):
            with server.client(token) as client:
                response = client.post("/api/v1/keys/validate")
            assert response.status_code == 401
            assert response.json() == error("Invalid bearer token")


class TestIdentityWithSdk:
    def test_whoami_and_validate(self, server: Server, key: Key) -> None:
        me = sdk_call(server, key.token, lambda c: c.whoami_handler())
        assert me["api_key"]["id"] == key.api_key_id
        valid = sdk_call(server, key.token, lambda c: c.validate_key())
        assert valid == {"valid": True, "message": "API key is valid"}

    def test_bad_key_raises_authentication_error(self, server: Server) -> None:
        for call in (lambda c: c.whoami_handler(), lambda c: c.validate_key()):
            with pytest.raises(AuthenticationError) as raised:
                sdk_call(server, "0" * 100, call)
            assert raised.value.body == error("Invalid bearer token")
