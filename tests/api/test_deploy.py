"""/api/v1/deploy: applications from a git repository served by the test (git's smart HTTP,
no internet) into real VMs, through the official SDK and plain HTTP, reached through the
edge; the request's checks on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from vers_sdk import NotFoundError

from tests.git_server import GitServer
from tests.support import (
    IMAGES_DIR,
    VERS_ORCHESTRATOR,
    Backend,
    Key,
    Server,
    error,
    free_port,
    make_key,
    sdk_call,
    shut_down,
)
from vers_orchestrator.drivers.qemu.images import ensure_default_image
from vers_orchestrator.services.deploy import serve_path

TOKEN = "deploy-token-123"
SERVER_PY = """import http.server

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("greeting.txt", "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("", 8000), Handler).serve_forever()
"""
REPOSITORIES: dict[tuple[str, str], dict[str, str]] = {
    ("acme", "site"): {"index.html": "<h1>static site</h1>\n"},
    ("acme", "private-app"): {
        "web/server.py": SERVER_PY,
        "web/install.sh": (
            "#!/bin/sh\necho installing the app\nprintf 'app says hi\\n' > greeting.txt\n"
        ),
        "README.md": "an app in web/\n",
    },
    ("acme", "broken"): {
        "build.sh": "#!/bin/sh\necho compiling >&2\necho 'error: no main' >&2\nexit 3\n"
    },
    ("acme", "quits"): {"run.sh": "#!/bin/sh\necho 'cannot bind: gave up'\nexit 1\n"},
}


@dataclass
class DeployWorld:
    backend: Backend
    server: Server
    key: Key
    git: GitServer
    edge_port: int
    site_project: str = ""

    def sdk(self, call: Any, key: Key | None = None) -> Any:
        return sdk_call(self.server, (key or self.key).token, call)

    def post(self, body: Any, key: Key | None = None) -> httpx.Response:
        with self.server.client((key or self.key).token) as client:
            client.timeout = httpx.Timeout(240.0)
            return client.post("/api/v1/deploy", json=body)

    def status(self, project_id: str, key: Key | None = None) -> httpx.Response:
        with self.server.client((key or self.key).token) as client:
            return client.get(f"/api/v1/deploy/{project_id}")

    def finished(self, project_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            project: dict[str, Any] = self.status(project_id).json()
            if project["status"] != "deploying" or time.monotonic() > deadline:
                return project
            time.sleep(0.3)

    def through_edge(self, vm_id: str, path: str = "/") -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.get(
                f"http://127.0.0.1:{self.edge_port}{path}",
                headers={"Host": f"{vm_id}.vm.localhost"},
            )

    def exec_log(self, vm_id: str) -> str:
        """Everything the VM's commands printed, from its exec log."""
        with self.server.client(self.key.token) as client:
            entries = client.get(f"/api/v1/vm/{vm_id}/logs?max_entries=1000").json()["entries"]
        return "".join(base64.b64decode(entry["data_b64"]).decode() for entry in entries)

    def vms(self) -> list[dict[str, Any]]:
        with self.server.client(self.key.token) as client:
            listed: list[dict[str, Any]] = client.get("/api/v1/vm").json()
            return listed


@pytest.fixture(scope="module")
def world(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployWorld]:
    ensure_default_image(IMAGES_DIR, lambda line: print(line, file=sys.stderr, flush=True))
    work = tmp_path_factory.mktemp("deploy")
    git = GitServer(work / "git", token=TOKEN)
    for (owner, name), files in REPOSITORIES.items():
        git.add_repository(owner, name, files)
    git.add_repository("acme", "site", {"index.html": "<h1>dev branch</h1>\n"}, branch="dev")
    edge_port = free_port()
    created = Backend.create(
        backend.kind,
        work / "backend",
        EDGE_PORT=str(edge_port),
        DEPLOY_GIT_BASE_URL=git.base_url,
        DEPLOY_GIT_TOKEN=TOKEN,
    )
    server = Server(created, work / "server.log").start()
    shared = DeployWorld(created, server, make_key(created), git, edge_port)
    try:
        yield shared
    finally:
        try:
            leftovers = shut_down(server, created, shared.key.token)
        finally:
            git.stop()
        assert leftovers == [], "VMs outlived the module"


def _only_on_sqlite(world: DeployWorld) -> None:
    if world.backend.kind != "sqlite":
        pytest.skip("most deploys boot VMs once, on SQLite; the API answers are checked on both")


class TestDeploys:
    def test_a_static_site_is_served_through_the_edge(self, world: DeployWorld) -> None:
        started = world.sdk(lambda c: c.deploy_handler({"repo": "acme/site"}))
        assert started == {
            "project_id": started["project_id"],
            "vm_id": started["vm_id"],
            "status": "deploying",
        }
        project = world.finished(started["project_id"])
        assert project == {
            "project_id": started["project_id"],
            "vm_id": started["vm_id"],
            "status": "running",
            "step": "serving",
            "error": None,
            "url": f"http://{started['vm_id']}.vm.localhost:{world.edge_port}",
        }
        world.site_project = started["project_id"]
        page = world.through_edge(started["vm_id"])
        assert (page.status_code, page.text) == (200, "<h1>static site</h1>\n")
        # The clone's .git (the repository's name and host) never reaches the VM.
        assert world.through_edge(started["vm_id"], "/.git/config").status_code == 404
        labels = {vm["vm_id"]: vm.get("labels") for vm in world.vms()}
        assert labels[started["vm_id"]]["project"] == "site"
        assert labels[started["vm_id"]]["vers.edge.port"] == "80"

    def test_the_same_name_again_is_409_and_leaves_nothing(self, world: DeployWorld) -> None:
        before = world.vms()
        response = world.post({"repo": "acme/site"})
        assert (response.status_code, response.json()) == (
            409,
            error("project name already exists: site"),
        )
        assert world.vms() == before

    def test_an_app_from_a_private_repository_with_install_run_and_working_directory(
        self, world: DeployWorld
    ) -> None:
        _only_on_sqlite(world)
        response = world.post(
            {
                "repo": "acme/private-app",
                "name": "the-app",
                "settings": {
                    # A venv with pip in it, as the README's deploy example makes one.
                    "install_command": "./install.sh && python3 -m venv .venv"
                    " && .venv/bin/pip --version",
                    "run_command": ".venv/bin/python server.py",
                    "working_directory": "/web/",
                },
            }
        )
        assert response.status_code == 202, response.text
        started = response.json()
        project = world.finished(started["project_id"])
        assert (project["status"], project["step"], project["error"]) == (
            "running",
            "serving",
            None,
        )
        page = world.through_edge(started["vm_id"])
        assert (page.status_code, page.text) == (200, "app says hi\n")
        assert "installing the app" in world.exec_log(started["vm_id"])
        labels = {vm["vm_id"]: vm.get("labels") for vm in world.vms()}
        assert labels[started["vm_id"]]["vers.edge.port"] == "8000"

    def test_a_failing_build_is_failed_with_its_output(self, world: DeployWorld) -> None:
        _only_on_sqlite(world)
        started = world.post(
            {"repo": "acme/broken", "settings": {"build_command": "./build.sh"}}
        ).json()
        project = world.finished(started["project_id"])
        assert project["status"] == "failed"
        assert project["step"] == "building"
        assert project["error"].startswith("building failed (exit 3): compiling | error: no main")
        assert "error: no main" in world.exec_log(started["vm_id"])
        # The VM stays, for its logs.
        assert started["vm_id"] in {vm["vm_id"] for vm in world.vms()}

    def test_an_app_that_quits_before_listening_is_failed(self, world: DeployWorld) -> None:
        _only_on_sqlite(world)
        started = world.post({"repo": "acme/quits", "settings": {"run_command": "./run.sh"}}).json()
        project = world.finished(started["project_id"])
        assert (project["status"], project["step"]) == ("failed", "waiting for a port")
        assert project["error"] == (
            "the application exited before it listened on a port: cannot bind: gave up"
        )

    def test_the_cli_deploys_a_branch_and_shows_its_steps(self, world: DeployWorld) -> None:
        _only_on_sqlite(world)
        result = subprocess.run(
            [VERS_ORCHESTRATOR, "deploy", "acme/site", "--name", "site-dev", "--branch", "dev"],
            env={
                **os.environ,
                "VERS_BASE_URL": world.server.base_url,
                "VERS_API_KEY": world.key.token,
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "deploying acme/site: checking the repository, creating the VM"
        assert lines[-1].startswith("running: http://")
        vm_id = lines[-1].split("//")[1].split(".vm.")[0]
        assert world.through_edge(vm_id).text == "<h1>dev branch</h1>\n"

    def test_a_deleted_vm_takes_its_project_along(self, world: DeployWorld) -> None:
        _only_on_sqlite(world)
        started = world.post({"repo": "acme/site", "name": "short-lived"}).json()
        world.finished(started["project_id"])
        with world.server.client(world.key.token) as client:
            assert client.delete(f"/api/v1/vm/{started['vm_id']}").status_code == 200
        assert world.status(started["project_id"]).json() == error("project not found")


class TestChecks:
    @pytest.mark.parametrize(
        "repo", ["bad", "a/b/c", "a/", "/b", "../x", "a/..", "a b/c", "owner/re?po", ""]
    )
    def test_repo_must_be_owner_slash_repo(self, world: DeployWorld, repo: str) -> None:
        response = world.post({"repo": repo})
        assert (response.status_code, response.json()) == (
            400,
            error("invalid request: repo must be in owner/repo format"),
        )

    def test_the_project_name_is_at_least_3_bytes(self, world: DeployWorld) -> None:
        response = world.post({"repo": "acme/site", "name": "ab"})
        assert (response.status_code, response.json()) == (
            400,
            error("invalid request: project name must be at least 3 characters"),
        )

    def test_a_missing_repository_is_404_through_the_sdk(self, world: DeployWorld) -> None:
        with pytest.raises(NotFoundError) as caught:
            world.sdk(lambda c: c.deploy_handler({"repo": "acme/nowhere"}))
        assert caught.value.body == error("repository not found: acme/nowhere")

    def test_a_private_repository_without_the_token_is_not_found(
        self, world: DeployWorld, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        backend = Backend.create(
            world.backend.kind,
            tmp_path_factory.mktemp("no-token"),
            DEPLOY_GIT_BASE_URL=world.git.base_url,
        )
        server = Server(backend, tmp_path_factory.mktemp("no-token-log") / "server.log").start()
        try:
            key = make_key(backend)
            with server.client(key.token) as client:
                response = client.post("/api/v1/deploy", json={"repo": "acme/private-app"})
            assert (response.status_code, response.json()) == (
                404,
                error("repository not found: acme/private-app"),
            )
        finally:
            server.stop()
            backend.drop()

    @pytest.mark.parametrize("branch", ["nope", "dev;touch /tmp/x", "$(id)", "--help"])
    def test_a_missing_branch_is_404_and_never_run(self, world: DeployWorld, branch: str) -> None:
        before = world.vms()
        response = world.post(
            {"repo": "acme/site", "name": f"b-{uuid.uuid4().hex[:6]}", "branch": branch}
        )
        assert (response.status_code, response.json()) == (
            404,
            error(f"branch not found: {branch}"),
        )
        assert world.vms() == before

    def test_nul_in_a_command_is_400(self, world: DeployWorld) -> None:
        response = world.post({"repo": "acme/site", "settings": {"run_command": "a\x00b"}})
        assert (response.status_code, response.json()) == (
            400,
            error("run_command must not contain NUL characters"),
        )

    @pytest.mark.parametrize(
        "body",
        [{}, {"repo": 5}, {"repo": "acme/site", "settings": "x"}, {"repo": "acme/site", "name": 3}],
    )
    def test_bodies_of_the_wrong_shape_are_422(self, world: DeployWorld, body: Any) -> None:
        # As axum answers a body that is JSON of the wrong shape (upstream-semantics.md §0).
        response = world.post(body)
        assert response.status_code == 422
        assert response.json()["success"] is False
        assert response.json()["error"].startswith("Failed to deserialize the JSON body")

    def test_status_of_unknown_malformed_and_foreign_projects_is_404(
        self, world: DeployWorld
    ) -> None:
        for project_id in (str(uuid.uuid4()), "not-a-uuid"):
            response = world.status(project_id)
            assert (response.status_code, response.json()) == (404, error("project not found"))
        assert world.site_project, "the static site's deploy runs first"
        stranger = make_key(world.backend)
        response = world.status(world.site_project, key=stranger)
        assert (response.status_code, response.json()) == (404, error("project not found"))
        colleague = make_key(world.backend, org=world.key.org_name)
        assert world.status(world.site_project, key=colleague).json()["status"] == "running"

    def test_without_a_key_is_401(self, world: DeployWorld) -> None:
        with world.server.client() as client:
            response = client.post("/api/v1/deploy", json={"repo": "bad"})
        assert response.status_code == 401


def test_deploy_turned_off_is_501_before_any_check(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    backend = Backend.create("sqlite", tmp_path_factory.mktemp("off"), DEPLOY_ENABLED="false")
    server = Server(backend, tmp_path_factory.mktemp("off-log") / "server.log").start()
    try:
        key = make_key(backend)
        with server.client(key.token) as client:
            for body in ({"repo": "acme/site"}, {"repo": "bad"}):
                response = client.post("/api/v1/deploy", json=body)
                assert (response.status_code, response.json()) == (
                    501,
                    error("deploy is turned off on this server"),
                )
    finally:
        server.stop()
        backend.drop()


@pytest.mark.parametrize(
    ("working_directory", "expected"),
    [
        (None, "/home/user/project"),
        ("", "/home/user/project"),
        ("web", "/home/user/project/web"),
        ("/web/", "/home/user/project/web"),
        ("../../etc", "/home/user/project/etc"),
        ("a/./b/../c", "/home/user/project/a/b/c"),
    ],
)
def test_the_working_directory_stays_inside_the_project(
    working_directory: str | None, expected: str
) -> None:
    assert serve_path(working_directory) == expected
