"""Error paths of the VM endpoints, over HTTP and the SDK, on SQLite and PostgreSQL.

None of these boots a VM: every request is refused before the driver is asked (the
booting story is `test_vms_end_to_end.py`). Commits made by `make_commit` have no snapshot
on the host, like a commit whose data is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from vers_sdk.errors import APIError

from tests.factories import in_database, make_commit, vm_row
from tests.support import Backend, Key, Server, error, make_key, sdk_call, unique_name
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.vms import State, Vm

UNKNOWN = str(uuid.uuid4())
ROOT = {"vm_config": {"vcpu_count": 1, "mem_size_mib": 256, "fs_size_mib": 1024}}
VM_ROUTES = [
    ("GET", "/api/v1/vm", None),
    ("GET", "/api/v1/vms", None),
    ("POST", "/api/v1/vm/new_root", ROOT),
    ("GET", f"/api/v1/vm/{UNKNOWN}/status", None),
    ("GET", f"/api/v1/vm/{UNKNOWN}/metadata", None),
    ("PATCH", f"/api/v1/vm/{UNKNOWN}/state", {"state": "Running"}),
    ("DELETE", f"/api/v1/vm/{UNKNOWN}", None),
    ("PATCH", f"/api/v1/vm/{UNKNOWN}/disk", {"fs_size_mib": 2048}),
    ("POST", f"/api/v1/vm/{UNKNOWN}/exec", {"command": ["true"]}),
    ("POST", f"/api/v1/vm/{UNKNOWN}/exec/stream", {"command": ["true"]}),
    ("POST", f"/api/v1/vm/{UNKNOWN}/exec/stream/attach", {"exec_id": UNKNOWN}),
    ("GET", f"/api/v1/vm/{UNKNOWN}/logs", None),
    ("GET", f"/api/v1/vm/{UNKNOWN}/files?path=/etc/hostname", None),
    ("PUT", f"/api/v1/vm/{UNKNOWN}/files", {"path": "/x", "content_b64": ""}),
    ("GET", f"/api/v1/vm/{UNKNOWN}/ssh_key", None),
    ("POST", f"/api/v1/vm/{UNKNOWN}/commit", {}),
    ("PATCH", f"/api/v1/vm/{UNKNOWN}/label", {"labels": {"a": "b"}}),
    ("PUT", f"/api/v1/vm/{UNKNOWN}/labels", {"labels": {}}),
    ("DELETE", f"/api/v1/vm/{UNKNOWN}/label/a", None),
    ("POST", "/api/v1/vm/from_commit", {"commit_id": UNKNOWN}),
    ("POST", f"/api/v1/vm/{UNKNOWN}/branch", None),
    ("POST", f"/api/v1/vm/branch/by_vm/{UNKNOWN}", None),
    ("POST", f"/api/v1/vm/branch/by_commit/{UNKNOWN}", None),
    ("POST", "/api/v1/vm/branch/by_tag/v1", None),
    ("POST", "/api/v1/vm/branch/by_ref/repo/v1", None),
    (
        "POST",
        "/api/v1/repositories/fork",
        {"source_org": "o", "source_repo": "r", "source_tag": "t"},
    ),
]
# Every route that names one VM, with a valid body: an unknown VM is 404, a bad id 400.
ONE_VM_ROUTES = [
    route
    for route in VM_ROUTES
    if UNKNOWN in route[1] and "branch" not in route[1] and "attach" not in route[1]
]


def _send(server: Server, token: str | None, method: str, path: str, body: Any) -> Any:
    with server.client(token) as client:
        if body is None:
            return client.request(method, path)
        return client.request(method, path, json=body)


def _public_tag(backend: Backend, server: Server, owner: Key, repo: str) -> str:
    """A public repository of `owner` with tag `v1` on a commit that has no snapshot."""
    commit = make_commit(backend, owner)
    with server.client(owner.token) as client:
        assert client.post("/api/v1/repositories", json={"name": repo}).status_code == 201
        tagged = client.post(
            f"/api/v1/repositories/{repo}/tags",
            json={"tag_name": "v1", "commit_id": commit.commit_id},
        )
        assert tagged.status_code == 201
        shown = client.patch(f"/api/v1/repositories/{repo}/visibility", json={"is_public": True})
        assert shown.status_code == 204
    return commit.commit_id


class TestAuthentication:
    @pytest.mark.parametrize(("method", "path", "body"), VM_ROUTES)
    def test_no_key_is_401_whatever_the_request(
        self, server: Server, method: str, path: str, body: Any
    ) -> None:
        response = _send(server, None, method, path, body)
        assert response.status_code == 401
        assert response.json() == error("Missing or invalid Authorization header")


class TestOneVm:
    @pytest.mark.parametrize(("method", "path", "body"), ONE_VM_ROUTES)
    def test_unknown_vm_is_404(
        self, server: Server, key: Key, method: str, path: str, body: Any
    ) -> None:
        response = _send(server, key.token, method, path, body)
        assert response.status_code == 404
        assert response.json() == error("vm not found")

    @pytest.mark.parametrize(("method", "path", "body"), ONE_VM_ROUTES)
    def test_malformed_id_is_400(
        self, server: Server, key: Key, method: str, path: str, body: Any
    ) -> None:
        response = _send(server, key.token, method, path.replace(UNKNOWN, "not-a-uuid"), body)
        assert response.status_code == 400
        assert response.json() == error("Invalid URL: vm_id must be a UUID")

    def test_unknown_vm_through_the_sdk(self, server: Server, key: Key) -> None:
        with pytest.raises(APIError) as raised:
            sdk_call(server, key.token, lambda c: c.vm_status(UNKNOWN))
        assert raised.value.status == 404
        assert raised.value.error_message == "vm not found"

    def test_a_new_organization_has_no_vms(self, server: Server, stranger: Key) -> None:
        assert sdk_call(server, stranger.token, lambda c: c.list_vms()) == []
        with server.client(stranger.token) as client:
            assert client.get("/api/v1/vms").json() == []


class TestVmOfAnotherServer:
    """A replica on the same database reads another's VM but cannot act on it."""

    def test_acting_is_409_reading_works(self, backend: Backend, server: Server, key: Key) -> None:
        vm_id = _vm_elsewhere(backend, key)
        status = _send(server, key.token, "GET", f"/api/v1/vm/{vm_id}/status", None)
        assert status.status_code == 200
        assert status.json()["state"] == "running"
        for method, path, body in (
            ("POST", f"/api/v1/vm/{vm_id}/exec", {"command": ["true"]}),
            ("DELETE", f"/api/v1/vm/{vm_id}", None),
            ("POST", f"/api/v1/vm/{vm_id}/commit", {}),
        ):
            response = _send(server, key.token, method, path, body)
            assert response.status_code == 409
            assert response.json() == error("vm runs on another server of this deployment")
        labelled = _send(
            server, key.token, "PATCH", f"/api/v1/vm/{vm_id}/label", {"labels": {"a": "b"}}
        )
        assert labelled.status_code == 200


def _vm_elsewhere(backend: Backend, key: Key) -> str:
    """A running VM of `key`, recorded by another server of the same database."""
    return _record_vm(backend, vm_row(key))


def _vm_here(backend: Backend, key: Key) -> str:
    """A VM of `key` recorded as running on the test server, with no guest behind it: for
    requests refused before the driver is asked (end it with `_end_vm`)."""
    return _record_vm(backend, vm_row(key, node=Settings.from_env(backend.env).vm_node))


def _record_vm(backend: Backend, vm: Vm) -> str:
    in_database(backend, lambda db: db.write(lambda tx: vm_store.insert(tx, vm)))
    return vm.vm_id


def _recorded_disk_mib(backend: Backend, vm_id: str) -> int:
    vm = in_database(backend, lambda db: db.read(lambda tx: vm_store.get(tx, vm_id)))
    assert vm is not None
    return vm.disk_mib


def _end_vm(backend: Backend, vm_id: str) -> None:
    in_database(
        backend, lambda db: db.write(lambda tx: vm_store.set_state(tx, vm_id, State.DELETED))
    )


class TestNewRoot:
    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"vcpu_count": 0}, "vcpu_count must be between 1 and 64"),
            ({"vcpu_count": 65}, "vcpu_count must be between 1 and 64"),
            ({"mem_size_mib": 64}, "mem_size_mib must be at least 128"),
            (
                {"kernel_name": "other.bin"},
                "unknown kernel_name 'other.bin': only 'default.bin' exists",
            ),
            ({"labels": {"": "x"}}, "label names must not be empty"),
        ],
    )
    def test_invalid_config_is_400(
        self, server: Server, key: Key, config: dict[str, Any], message: str
    ) -> None:
        response = _send(server, key.token, "POST", "/api/v1/vm/new_root", {"vm_config": config})
        assert response.status_code == 400
        assert response.json() == error(message)

    def test_an_image_the_organization_does_not_have_is_404(self, server: Server, key: Key) -> None:
        config = {"image_name": unique_name("ubuntu")}
        response = _send(server, key.token, "POST", "/api/v1/vm/new_root", {"vm_config": config})
        assert (response.status_code, response.json()) == (404, error("image not found"))

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"vm_config": []},
            {"vm_config": {"vcpu_count": "one"}},
            {"vm_config": {"labels": {"a": 1}}},
        ],
    )
    def test_wrong_shape_is_422(self, server: Server, key: Key, body: Any) -> None:
        response = _send(server, key.token, "POST", "/api/v1/vm/new_root", body)
        assert response.status_code == 422
        assert response.json()["error"].startswith("Failed to deserialize the JSON body")

    def test_malformed_json_is_400(self, server: Server, key: Key) -> None:
        with server.client(key.token) as client:
            response = client.post(
                "/api/v1/vm/new_root",
                content=b"{",
                headers={"Content-Type": "application/json"},
            )
        assert response.status_code == 400
        assert response.json()["error"].startswith("Failed to parse the request body as JSON")

    def test_key_vcpu_limit_is_403(self, backend: Backend, server: Server) -> None:
        limited = _limited_key(backend, "--max-vcpus", "0")
        with pytest.raises(APIError) as raised:
            sdk_call(server, limited.token, lambda c: c.create_new_root_vm(ROOT))
        assert raised.value.status == 403
        assert raised.value.error_message == (
            "vCPU limit exceeded: this API key's VMs may use 0 in total, 0 in use, 1 requested"
        )

    def test_key_memory_limit_is_403(self, backend: Backend, server: Server) -> None:
        limited = _limited_key(backend, "--max-memory-mib", "200")
        response = _send(server, limited.token, "POST", "/api/v1/vm/new_root", ROOT)
        assert response.status_code == 403
        assert response.json() == error(
            "memory (MiB) limit exceeded: this API key's VMs may use 200 in total,"
            " 0 in use, 256 requested"
        )
        assert _send(server, limited.token, "GET", "/api/v1/vm", None).json() == []

    def test_key_disk_limit_is_403(self, backend: Backend, server: Server) -> None:
        limited = _limited_key(backend, "--max-disk-mib", "512")
        response = _send(server, limited.token, "POST", "/api/v1/vm/new_root", ROOT)
        assert response.status_code == 403
        assert response.json() == error(
            "disk (MiB) limit exceeded: this API key's VMs may use 512 in total,"
            " 0 in use, 1024 requested"
        )

    def test_key_disk_limit_holds_for_growing_a_disk(
        self, backend: Backend, server: Server
    ) -> None:
        limited = _limited_key(backend, "--max-disk-mib", "1500")
        vm_id = _vm_here(backend, limited)
        try:
            response = _send(
                server, limited.token, "PATCH", f"/api/v1/vm/{vm_id}/disk", {"fs_size_mib": 2048}
            )
            assert response.status_code == 403
            assert response.json() == error(
                "disk (MiB) limit exceeded: this API key's VMs may use 1500 in total,"
                " 1024 in use, 1024 requested"
            )
            assert _recorded_disk_mib(backend, vm_id) == 1024
        finally:
            _end_vm(backend, vm_id)

    def test_a_disk_larger_than_the_free_space_is_429(self, server: Server, key: Key) -> None:
        # The default server cap: the state directory's free space (here far below 2 PiB).
        huge = {"vm_config": {**ROOT["vm_config"], "fs_size_mib": 2**31 - 1}}
        response = _send(server, key.token, "POST", "/api/v1/vm/new_root", huge)
        assert response.status_code == 429
        assert re.fullmatch(
            r"server at capacity: \d+ of \d+ MiB of VM disk in use, 2147483647 more requested",
            response.json()["error"],
        )
        grown = _send(
            server, key.token, "PATCH", f"/api/v1/vm/{UNKNOWN}/disk", {"fs_size_mib": 2**31 - 1}
        )
        assert (grown.status_code, grown.json()) == (404, error("vm not found"))

    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"MAX_VMS": "0"}, "server at capacity: 0 of 0 VMs in use, 1 more requested"),
            (
                {"MAX_VM_MEMORY_MIB": "200"},
                "server at capacity: 0 of 200 MiB of VM memory in use, 256 more requested",
            ),
            (
                {"MAX_VM_DISK_MIB": "512"},
                "server at capacity: 0 of 512 MiB of VM disk in use, 1024 more requested",
            ),
        ],
    )
    def test_server_caps_are_429(
        self, backend: Backend, tmp_path: Path, settings: dict[str, str], message: str
    ) -> None:
        capped = Backend.create(backend.kind, tmp_path / "capped", **settings)
        try:
            server = Server(capped, tmp_path / "server.log").start()
            try:
                owner = make_key(capped)
                response = _send(server, owner.token, "POST", "/api/v1/vm/new_root", ROOT)
            finally:
                server.stop()
        finally:
            capped.drop()
        assert response.status_code == 429
        assert response.json() == error(message)


def _limited_key(backend: Backend, *limit: str) -> Key:
    created = json.loads(
        backend.cli(
            "keys",
            "create",
            "--org",
            unique_name("org"),
            "--user",
            "limited",
            "--format",
            "json",
            *limit,
        ).stdout
    )
    return Key(
        token=created["api_key"],
        api_key_id=created["api_key_id"],
        org_id=created["org_id"],
        org_name=created["org_name"],
        user_id=created["user_id"],
    )


class TestInTheGuest:
    def test_empty_command_is_400(self, server: Server, key: Key) -> None:
        response = _send(server, key.token, "POST", f"/api/v1/vm/{UNKNOWN}/exec", {"command": []})
        assert response.status_code == 400
        assert response.json() == error("command must not be empty")

    @pytest.mark.parametrize(
        ("extra", "field"),
        [
            ({"command": ["echo", "a\u0000b"]}, "command"),
            ({"env": {"A": "x\u0000y"}}, "env"),
            ({"env": {"A\u0000": "x"}}, "env"),
            ({"working_dir": "/tmp\u0000x"}, "working_dir"),
        ],
    )
    def test_a_nul_is_400_naming_its_field(
        self, server: Server, key: Key, extra: dict[str, Any], field: str
    ) -> None:
        body = {"command": ["true"], **extra}
        response = _send(server, key.token, "POST", f"/api/v1/vm/{UNKNOWN}/exec", body)
        assert (response.status_code, response.json()) == (
            400,
            error(f"{field} must not contain NUL characters"),
        )

    def test_max_entries_zero_gives_no_entries(self, backend: Backend, server: Server) -> None:
        owner = make_key(backend)
        vm_id = _vm_here(backend, owner)
        try:
            path = f"/api/v1/vm/{vm_id}/logs?max_entries=0"
            response = _send(server, owner.token, "GET", path, None)
            assert response.status_code == 200
            assert response.json()["entries"] == []
        finally:
            _end_vm(backend, vm_id)

    def test_exec_without_command_is_422(self, server: Server, key: Key) -> None:
        response = _send(server, key.token, "POST", f"/api/v1/vm/{UNKNOWN}/exec", {})
        assert response.status_code == 422

    def test_read_without_path_is_400(self, server: Server, key: Key) -> None:
        response = _send(server, key.token, "GET", f"/api/v1/vm/{UNKNOWN}/files", None)
        assert response.status_code == 400
        assert response.json() == error("Failed to deserialize query string: path is required")

    def test_write_with_bad_base64_is_400(self, server: Server, key: Key) -> None:
        body = {"path": "/root/x", "content_b64": "not base64!"}
        response = _send(server, key.token, "PUT", f"/api/v1/vm/{UNKNOWN}/files", body)
        assert response.status_code == 400
        assert response.json() == error("content_b64 is not valid base64")

    def test_attaching_to_an_unknown_exec_is_404(self, server: Server, key: Key) -> None:
        path = f"/api/v1/vm/{UNKNOWN}/exec/stream/attach"
        for exec_id in (UNKNOWN, "junk"):
            response = _send(server, key.token, "POST", path, {"exec_id": exec_id})
            assert response.status_code == 404
            assert response.json() == error("exec not found")

    def test_logs_of_an_unknown_stream_are_400(self, server: Server, key: Key) -> None:
        path = f"/api/v1/vm/{UNKNOWN}/logs?stream=stdin"
        response = _send(server, key.token, "GET", path, None)
        assert response.status_code == 400

    def test_bad_exec_id_is_400(self, server: Server, key: Key) -> None:
        body = {"command": ["true"], "exec_id": "junk"}
        response = _send(server, key.token, "POST", f"/api/v1/vm/{UNKNOWN}/exec", body)
        assert response.status_code == 400
        assert response.json() == error("exec_id must be a UUID")

    def test_unknown_state_is_422(self, server: Server, key: Key) -> None:
        body = {"state": "Frozen"}
        response = _send(server, key.token, "PATCH", f"/api/v1/vm/{UNKNOWN}/state", body)
        assert response.status_code == 422


class TestFromCommit:
    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"commit_id": UNKNOWN, "tag_name": "v1"},
            {"snapshot": UNKNOWN},
            {"commit_id": "junk"},
        ],
    )
    def test_not_exactly_one_valid_key_is_422(self, server: Server, key: Key, body: Any) -> None:
        response = _send(server, key.token, "POST", "/api/v1/vm/from_commit", body)
        assert response.status_code == 422
        assert response.json()["error"].startswith("Failed to deserialize the JSON body")

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"commit_id": UNKNOWN}, "commit not found"),
            ({"tag_name": "no-such-tag"}, "tag not found"),
            ({"ref": "no-such-repo:v1"}, "tag not found"),
            ({"ref": "no-such-org/no-such-repo:v1"}, "tag not found"),
        ],
    )
    def test_unknown_source_is_404(self, server: Server, key: Key, body: Any, message: str) -> None:
        response = _send(server, key.token, "POST", "/api/v1/vm/from_commit", body)
        assert response.status_code == 404
        assert response.json() == error(message)

    @pytest.mark.parametrize("ref", ["no-colon", ":v1", "repo:", "/repo:v1"])
    def test_malformed_ref_is_400(self, server: Server, key: Key, ref: str) -> None:
        response = _send(server, key.token, "POST", "/api/v1/vm/from_commit", {"ref": ref})
        assert response.status_code == 400
        assert response.json() == error("Invalid ref format. Expected 'repo_name:tag_name'")

    def test_another_organizations_private_commit_is_404(
        self, backend: Backend, server: Server, key: Key, stranger: Key
    ) -> None:
        commit = make_commit(backend, stranger)
        body = {"commit_id": commit.commit_id}
        response = _send(server, key.token, "POST", "/api/v1/vm/from_commit", body)
        assert response.status_code == 404
        assert response.json() == error("commit not found")

    def test_a_private_repository_of_another_organization_is_404(
        self, backend: Backend, server: Server, key: Key, stranger: Key
    ) -> None:
        repo = unique_name()
        _public_tag(backend, server, stranger, repo)
        with server.client(stranger.token) as client:
            client.patch(f"/api/v1/repositories/{repo}/visibility", json={"is_public": False})
        body = {"ref": f"{stranger.org_name}/{repo}:v1"}
        response = _send(server, key.token, "POST", "/api/v1/vm/from_commit", body)
        assert response.status_code == 404
        assert response.json() == error("tag not found")


class TestBranch:
    @pytest.mark.parametrize(
        ("path", "message"),
        [
            ("/api/v1/vm/branch/by_ref/no-such-repo/v1", "tag not found"),
            ("/api/v1/vm/branch/by_tag/no-such-tag", "tag not found"),
            (f"/api/v1/vm/branch/by_vm/{UNKNOWN}", "parent vm not found"),
        ],
    )
    def test_errors_keep_the_new_vms_shape(
        self, server: Server, key: Key, path: str, message: str
    ) -> None:
        response = _send(server, key.token, "POST", path, None)
        assert response.status_code == 404
        assert response.json() == {"vms": [], "error": message}

    @pytest.mark.parametrize("commit_id", [UNKNOWN, "junk"])
    def test_an_unknown_commit_is_the_common_404(
        self, server: Server, key: Key, commit_id: str
    ) -> None:
        # The hosted service's own tests: this one error leaves the new-VMs shape.
        path = f"/api/v1/vm/branch/by_commit/{commit_id}"
        response = _send(server, key.token, "POST", path, None)
        assert (response.status_code, response.json()) == (404, error("commit not found"))

    @pytest.mark.parametrize("count", ["256", "-1", "many", "1e2"])
    @pytest.mark.parametrize("route", ["by_tag/v1", f"by_commit/{UNKNOWN}"])
    def test_a_bad_count_is_400_in_the_common_shape(
        self, server: Server, key: Key, count: str, route: str
    ) -> None:
        # Found before the route runs, whichever check finds it.
        path = f"/api/v1/vm/branch/{route}?count={count}"
        response = _send(server, key.token, "POST", path, None)
        assert response.status_code == 400
        body = response.json()
        assert set(body) == {"success", "error"}
        assert body["error"].startswith("Failed to deserialize query string: ")

    def test_count_zero_makes_no_vm(self, backend: Backend, server: Server, key: Key) -> None:
        repo = unique_name()
        _public_tag(backend, server, key, repo)
        path = f"/api/v1/vm/branch/by_ref/{repo}/v1?count=0"
        response = _send(server, key.token, "POST", path, None)
        assert response.status_code == 201
        assert response.json() == {"vms": []}

    def test_a_commit_without_a_snapshot_is_404(
        self, backend: Backend, server: Server, key: Key
    ) -> None:
        repo = unique_name()
        _public_tag(backend, server, key, repo)
        with pytest.raises(APIError) as raised:
            sdk_call(server, key.token, lambda c: c.branch_by_ref(repo, "v1"))
        assert raised.value.status == 404
        assert raised.value.body == {"vms": [], "error": "provided commit not found"}

    def test_vm_or_commit(self, server: Server, key: Key) -> None:
        unknown = _send(server, key.token, "POST", f"/api/v1/vm/{UNKNOWN}/branch", None)
        assert unknown.status_code == 404
        assert unknown.json() == error("vm or commit not found")
        junk = _send(server, key.token, "POST", "/api/v1/vm/junk/branch", None)
        assert junk.status_code == 400


class TestFork:
    def test_unknown_or_private_source_is_404(
        self, backend: Backend, server: Server, key: Key, stranger: Key
    ) -> None:
        repo = unique_name()
        _public_tag(backend, server, stranger, repo)
        with server.client(stranger.token) as client:
            client.patch(f"/api/v1/repositories/{repo}/visibility", json={"is_public": False})
        for source in (
            {"source_org": stranger.org_name, "source_repo": repo, "source_tag": "v1"},
            {"source_org": stranger.org_name, "source_repo": repo, "source_tag": "v2"},
            {"source_org": unique_name("org"), "source_repo": repo, "source_tag": "v1"},
        ):
            response = _send(server, key.token, "POST", "/api/v1/repositories/fork", source)
            assert response.status_code == 404
            assert response.json() == error("source repository or tag not found (must be public)")

    def test_invalid_target_names_are_400(self, server: Server, key: Key) -> None:
        body = {"source_org": "o", "source_repo": "r", "source_tag": "t", "repo_name": "a/b"}
        response = _send(server, key.token, "POST", "/api/v1/repositories/fork", body)
        assert response.status_code == 400
        assert response.json()["error"].startswith("invalid repository name: ")
        body = {"source_org": "o", "source_repo": "r", "source_tag": "t", "tag_name": "a:b"}
        response = _send(server, key.token, "POST", "/api/v1/repositories/fork", body)
        assert response.status_code == 400
        assert response.json()["error"].startswith("invalid tag name: ")

    def test_existing_target_tag_is_409(
        self, backend: Backend, server: Server, key: Key, stranger: Key
    ) -> None:
        repo = unique_name()
        _public_tag(backend, server, stranger, repo)
        _public_tag(backend, server, key, repo)
        body = {"source_org": stranger.org_name, "source_repo": repo, "source_tag": "v1"}
        response = _send(server, key.token, "POST", "/api/v1/repositories/fork", body)
        assert response.status_code == 409
        assert response.json() == error("tag already exists in repository")

    def test_a_failed_fork_leaves_nothing_behind(
        self, backend: Backend, server: Server, stranger: Key
    ) -> None:
        forker = make_key(backend)
        repo = unique_name()
        _public_tag(backend, server, stranger, repo)
        body = {"source_org": stranger.org_name, "source_repo": repo, "source_tag": "v1"}
        with pytest.raises(APIError) as raised:
            sdk_call(server, forker.token, lambda c: c.fork_repository(body))
        assert raised.value.status == 404
        assert sdk_call(server, forker.token, lambda c: c.list_repositories()) == {
            "repositories": []
        }
        assert sdk_call(server, forker.token, lambda c: c.list_vms()) == []
        assert sdk_call(server, forker.token, lambda c: c.list_commits())["commits"] == []
