"""`vers-orchestrator keys …` and `db upgrade`, as an operator runs them."""

from __future__ import annotations

import json
import re
import time

from tests.support import Backend, Server, make_key, unique_name

KEY = re.compile(
    r"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}[0-9a-f]{64}\Z"
)


class TestKeysCreate:
    def test_json_output_is_one_object(self, backend: Backend) -> None:
        org, user = unique_name("org"), unique_name("user")
        result = backend.cli(
            "keys",
            "create",
            "--org",
            org,
            "--user",
            user,
            "--email",
            "u@example.com",
            "--label",
            "laptop",
            "--format",
            "json",
        )
        created = json.loads(result.stdout)
        assert KEY.match(created["api_key"])
        assert created["api_key"][:36] == created["api_key_id"]
        assert created["org_name"] == org
        assert created["user_name"] == user
        assert created["label"] == "laptop"
        assert {"org_id", "user_id", "created_at"} <= set(created)

    def test_reuses_org_and_user_whatever_the_case_of_the_org(self, backend: Backend) -> None:
        first = make_key(backend, org="Acme-" + unique_name(""), user="alice")
        second = make_key(backend, org=first.org_name.upper(), user="alice")
        assert second.org_id == first.org_id
        assert second.org_name == first.org_name
        assert second.user_id == first.user_id
        assert second.api_key_id != first.api_key_id

    def test_text_output_shows_the_key_once(self, backend: Backend) -> None:
        result = backend.cli("keys", "create", "--org", unique_name("org"), "--user", "bob")
        keys = [line.strip() for line in result.stdout.splitlines() if KEY.match(line.strip())]
        assert len(keys) == 1

    def test_invalid_org_name_fails_cleanly(self, backend: Backend) -> None:
        result = backend.cli("keys", "create", "--org", "bad name", "--user", "u", check=False)
        assert result.returncode == 1
        assert result.stderr.strip().endswith(
            "error: invalid organization name: can only contain ASCII letters, digits,"
            " hyphens, underscores, and dots"
        )
        assert result.stdout == ""


class TestKeysListAndRevoke:
    def test_list_shows_keys_of_an_org_without_secrets(self, backend: Backend) -> None:
        key = make_key(backend)
        listed = json.loads(
            backend.cli("keys", "list", "--org", key.org_name, "--format", "json").stdout
        )
        assert [row["api_key_id"] for row in listed] == [key.api_key_id]
        assert listed[0]["revoked_at"] is None
        text = backend.cli("keys", "list").stdout
        assert key.api_key_id in text
        assert key.token[36:] not in text

    def test_revoked_key_is_refused_and_listed_as_revoked(
        self, backend: Backend, server: Server
    ) -> None:
        key = make_key(backend)
        with server.client(key.token) as client:
            assert (
                client.post("/api/v1/repositories", json={"name": unique_name()}).status_code == 201
            )
        assert (
            backend.cli("keys", "revoke", key.api_key_id).stdout.strip()
            == f"revoked {key.api_key_id}"
        )
        listed = json.loads(
            backend.cli("keys", "list", "--org", key.org_name, "--format", "json").stdout
        )
        assert listed[0]["revoked_at"] is not None
        # A server trusts a verified key for VERS_ORCHESTRATOR_AUTH_CACHE_SECONDS (5 s).
        deadline = time.monotonic() + 10
        with server.client(key.token) as client:
            while True:
                response = client.post("/api/v1/repositories", json={"name": unique_name()})
                if response.status_code != 201 or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
        assert response.status_code == 401
        assert response.json() == {"success": False, "error": "Invalid bearer token"}

    def test_revoking_an_unknown_key_fails(self, backend: Backend) -> None:
        result = backend.cli("keys", "revoke", "not-a-key", check=False)
        assert result.returncode == 1
        assert result.stderr.strip().endswith("error: api key not found")


def test_db_upgrade_is_repeatable(backend: Backend) -> None:
    for _ in range(2):
        assert backend.cli("db", "upgrade").stdout.strip() == "database is at the newest schema"


def test_an_unusable_setting_is_refused_before_anything_runs(backend: Backend) -> None:
    broken = Backend(
        backend.kind, {**backend.env, "VERS_ORCHESTRATOR_DIRECT_HANDLER_CALLS": "maybe"}
    )
    result = broken.cli("db", "upgrade", check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "vers-orchestrator: error: invalid VERS_ORCHESTRATOR_* setting:"
        " VERS_ORCHESTRATOR_DIRECT_HANDLER_CALLS must be true or false\n"
    )
