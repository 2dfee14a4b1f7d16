"""GET /api/v1/whoami and POST /api/v1/keys/validate, over HTTP and the SDK."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from vers_sdk import AuthenticationError

from tests.factories import in_database
from tests.shapes import TIMESTAMP
from tests.support import Backend, Key, Server, error, make_key, sdk_call, unique_name
from vers_orchestrator.services import keys
from vers_orchestrator.store.database import Database


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


def revoke(backend: Backend, key: Key) -> float:
    """Revoke `key` through the service, in another process than the servers; the
    monotonic time its transaction had committed."""

    async def run(db: Database) -> float:
        await keys.revoke(db, key.api_key_id)
        return time.monotonic()

    return in_database(backend, run)


def execute(backend: Backend, sql: str, *args: object) -> None:
    """One statement on `backend`'s database, committed, as an operator's shell would."""

    in_database(backend, lambda db: db.write(lambda tx: tx.execute(sql, *args)))


def refused_within(client: httpx.Client, seconds: float) -> float:
    """Seconds until `client`'s key is 401 `Invalid bearer token`; fails after `seconds`."""
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        response = client.post("/api/v1/keys/validate")
        if response.status_code != 200:
            assert (response.status_code, response.json()) == (401, error("Invalid bearer token"))
            return elapsed
    raise AssertionError(f"still accepted after {seconds} s")


def wait_for_log(server: Server, text: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{server.log_text()}"
        time.sleep(0.05)


class TestRevocation:
    def test_revoked_key_is_refused_within_a_second_on_every_replica(
        self, server: Server, backend: Backend, tmp_path: Path
    ) -> None:
        # Replicas share PostgreSQL; SQLite has one server, but the revoke still comes from
        # another process. The key cache keeps its default (5 s): the revocation must reach
        # each server's cache, not wait for it to expire.
        replicas = [server]
        if backend.kind == "postgresql":
            replicas.append(Server(backend, tmp_path / "replica.log").start())
        revoked = make_key(backend)
        clients = [replica.client(revoked.token) for replica in replicas]
        try:
            for client in clients:
                for _ in range(3):
                    assert client.post("/api/v1/keys/validate").status_code == 200
            revoked_at = revoke(backend, revoked)
            # One replica after the other: each must refuse by 1 s after the commit.
            for client in clients:
                refused_within(client, 1.0 - (time.monotonic() - revoked_at))
            # Refused for good, not only once.
            for client in clients:
                assert client.post("/api/v1/keys/validate").status_code == 401
        finally:
            for client in clients:
                client.close()
            for replica in replicas[1:]:
                replica.stop()

    def test_a_cached_key_is_refused_from_its_expiry(
        self, server: Server, backend: Backend
    ) -> None:
        expires_at = datetime.now(UTC) + timedelta(seconds=1.5)

        created = in_database(
            backend,
            lambda db: keys.create(
                db, unique_name("org"), unique_name("user"), expires_at=expires_at
            ),
        )
        with server.client(created.api_key) as client:
            assert client.post("/api/v1/keys/validate").status_code == 200
            time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()))
            response = client.post("/api/v1/keys/validate")
        assert (response.status_code, response.json()) == (401, error("Invalid bearer token"))

    def test_while_revocations_cannot_be_read_keys_are_checked_per_request(
        self, fresh_backend: Backend, tmp_path: Path
    ) -> None:
        running = Server(fresh_backend, tmp_path / "server.log").start()
        victim = make_key(fresh_backend)
        try:
            with running.client(victim.token) as client:
                assert client.post("/api/v1/keys/validate").status_code == 200
                # The counter every server polls is gone: a database blip that lasts.
                execute(fresh_backend, "ALTER TABLE api_key_generation RENAME TO blip")
                wait_for_log(running, "reading the API key generation failed; retrying")
                assert client.post("/api/v1/keys/validate").status_code == 200
                # A revocation the server cannot be told of still reaches it, through the
                # per-request check that replaces the cache meanwhile.
                execute(
                    fresh_backend,
                    "UPDATE api_keys SET revoked_at = created_at WHERE api_key_id = $1",
                    victim.api_key_id,
                )
                refused_within(client, 1.0)
                execute(fresh_backend, "ALTER TABLE blip RENAME TO api_key_generation")
                wait_for_log(running, "reading the API key generation works again")
                log = running.log_text()
                assert log.count("reading the API key generation failed") == 1, log
            with running.client() as client:
                assert client.get("/health").status_code == 200
        finally:
            running.stop()


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
