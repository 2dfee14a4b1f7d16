"""Deploy: an application from a git repository, running in a new VM behind the edge.

`POST /api/v1/deploy` (`upstream-semantics-platform.md` §5; differences in
`docs/decisions.md` § Deploy): the request is checked, in the hosted service's order and
words where it has them, the repository's existence asked of the git host (404 before
anything is made), the project's name reserved (409 leaves nothing behind), and a VM booted
as the hosted service boots it (1 vCPU, 256 MiB, 1 GiB disk, label `project=<name>`). The
answer (202) comes then; the server drives the rest itself, recording each step in the
project (`GET /api/v1/deploy/{project_id}`):

    cloning → copying → installing → building → starting → waiting for a port → serving

The clone runs on the host (`drivers.git_sources`; a token never enters the VM); the tree
goes into the guest at `/home/user/project`; install, build and run are the user's shell
commands, each run by `sh -c` as one argument, in the working directory, with every other
value passed as an argument too, never spliced into a command line. Their output is in the
VM's exec log (`GET /api/v1/vm/{vm_id}/logs`); the application's own in
`/var/log/vers-deploy-app.log` in the VM. The first port the application listens on becomes the
VM's web port (label `vers.edge.port`), so `<vm_id>.vm.<base domain>` serves it. Without a
run command the working directory is served as static files on port 80. A failed step
leaves the VM running, for its logs to be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TypeVar

from vers_orchestrator.auth import Principal
from vers_orchestrator.drivers import git_sources, tools
from vers_orchestrator.errors import (
    BadGateway,
    DeployTurnedOff,
    InvalidField,
    NotFound,
    ProjectNameTaken,
    ProjectNotFound,
    VersError,
)
from vers_orchestrator.services.edge import PORT_LABEL
from vers_orchestrator.services.validation import validate_text
from vers_orchestrator.services.vms import Vms
from vers_orchestrator.services.vms.context import canonical_or_none
from vers_orchestrator.services.vms.guest import Command, ExecOutcome
from vers_orchestrator.services.vms.lifecycle import RootConfig
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import deploy as deploy_store
from vers_orchestrator.store.database import Database, UniqueViolation, utc_now
from vers_orchestrator.store.deploy import DeploySettings, Project, ProjectStatus

log = logging.getLogger("vers_orchestrator.deploy")
T = TypeVar("T")

# GitHub's characters for owner and repository names; `.` and `..` alone are not names.
REPO_PART = re.compile(r"^[A-Za-z0-9_.-]+$")
MIN_NAME_BYTES = 3
MAX_TEXT = 4096
GIT_THREADS = 4
# The VM the hosted service makes for a deploy (§5 step 8).
DEPLOY_VM = RootConfig(vcpus=1, mem_mib=256, disk_mib=1024)
PROJECT_DIR = "/home/user/project"
ARCHIVE_IN_GUEST = "/var/lib/vers-deploy/project.tar.gz"
APP_LOG = "/var/log/vers-deploy-app.log"
STATIC_PORT = 80
COMMAND_TIMEOUT_SECONDS = 1800
PORT_WAIT_SECONDS = 60
PORT_POLL_SECONDS = 1.0
# Fixed programs; the values they need come after them as arguments ($1 …).
UNPACK = (
    f"mkdir -p /home/user && rm -rf {PROJECT_DIR} && tar -xzf {ARCHIVE_IN_GUEST} -C /home/user"
    f" && rm -f {ARCHIVE_IN_GUEST}"
)
START = f'nohup sh -c "$1" >{APP_LOG} 2>&1 </dev/null & echo $!'
START_STATIC = (
    f'nohup python3 -m http.server {STATIC_PORT} --directory "$1" >{APP_LOG} 2>&1'
    " </dev/null & echo $!"
)
# Whether the application (the process `sys.argv[1]`) lives, and the TCP ports that
# processes of its session listen on: every command the guest agent runs has a session of
# its own, so other services' ports (sshd's, a second app's) never count.
LISTENING = """
import os, sys
try:
    session = os.getsid(int(sys.argv[1]))
except (ProcessLookupError, ValueError):
    sys.exit()
print("alive")
sockets = set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.getsid(int(pid)) != session:
            continue
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target[8:-1])
    except OSError:
        pass
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(table) as lines:
        for line in list(lines)[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in sockets:
                print(int(fields[1].rsplit(":", 1)[1], 16))
"""


@dataclass(frozen=True, slots=True)
class DeployRequest:
    repo: str
    name: str | None = None
    branch: str | None = None
    settings: DeploySettings = field(default_factory=DeploySettings)


class StepFailed(Exception):
    """A deploy step failed; the message is the project's error, for the user."""


def serve_path(working_directory: str | None) -> str:
    """The directory the commands run in: the project's, or a folder inside it (`/`, `.`
    and `..` segments dropped, as the hosted service does)."""
    parts = [p for p in PurePosixPath(working_directory or "").parts if p not in ("/", ".", "..")]
    return str(PurePosixPath(PROJECT_DIR, *parts))


class Deploys:
    def __init__(self, db: Database, vms: Vms, settings: Settings) -> None:
        self._db = db
        self._vms = vms
        self._settings = settings
        self._node = settings.vm_node
        self._work = settings.data_dir / "deploys"
        self._tasks: set[asyncio.Task[None]] = set()
        # git's work (which may take minutes against a slow host) runs in threads of its
        # own: the default pool's are what VM creation and file calls wait for.
        self._git = ThreadPoolExecutor(GIT_THREADS, thread_name_prefix="deploy-git")

    async def create(self, principal: Principal, request: DeployRequest) -> Project:
        """Start a deploy; returns once its VM runs. Raises DeployTurnedOff (501),
        InvalidField (400), NotFound (404 repository or branch), BadGateway (502, the git
        host), ProjectNameTaken (409), and what booting a VM raises (403, 429, 500)."""
        if not self._settings.deploy_enabled:
            raise DeployTurnedOff()
        parts = request.repo.split("/")
        if len(parts) != 2 or not all(REPO_PART.match(p) and p not in (".", "..") for p in parts):
            raise InvalidField("invalid request: repo must be in owner/repo format")
        name = request.name if request.name is not None else parts[1]
        validate_text("name", name, 256)
        if len(name.encode()) < MIN_NAME_BYTES:
            raise InvalidField("invalid request: project name must be at least 3 characters")
        validate_text("branch", request.branch, 256)
        if request.branch is not None and not request.branch.strip():
            raise InvalidField("invalid request: branch must not be empty")
        settings = request.settings
        for name_of in ("install_command", "build_command", "run_command", "working_directory"):
            validate_text(name_of, getattr(settings, name_of), MAX_TEXT)
        await self._check_repository(request.repo, request.branch)
        now = utc_now()
        project = Project(
            project_id=str(uuid.uuid4()),
            org_id=principal.org_id,
            owner_id=principal.api_key_id,
            name=name,
            repo=request.repo,
            branch=request.branch,
            settings=settings,
            vm_id=None,
            status=ProjectStatus.DEPLOYING,
            step="creating the VM",
            error=None,
            guest_port=None,
            node=self._node,
            created_at=now,
            updated_at=now,
        )
        try:
            await self._db.write(lambda tx: deploy_store.insert(tx, project))
        except UniqueViolation:
            raise ProjectNameTaken(name) from None
        try:
            config = replace(DEPLOY_VM, labels={"project": name})
            vm = await self._vms.lifecycle.new_root(principal, config, wait_boot=True)
            await self._db.write(
                lambda tx: deploy_store.set_vm(tx, project.project_id, vm.vm_id, utc_now())
            )
        except BaseException:
            # Nothing is left of a deploy that could not start (a failed boot ended its VM).
            await asyncio.shield(
                self._db.write(lambda tx: deploy_store.delete(tx, project.project_id))
            )
            raise
        started = replace(project, vm_id=vm.vm_id)
        task = asyncio.ensure_future(self._deploy(principal, started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return started

    async def get(self, principal: Principal, project_id: str) -> Project:
        canonical = canonical_or_none(project_id)
        if canonical is None:
            raise ProjectNotFound()
        found = await self._db.read(
            lambda tx: deploy_store.get_in_org(tx, principal.org_id, canonical)
        )
        if found is None:
            raise ProjectNotFound()
        return found

    async def fail_interrupted(self) -> int:
        """At start-up: the deploys this server was driving when it stopped are failed."""
        return await self._db.write(
            lambda tx: deploy_store.fail_unfinished(
                tx, self._node, "interrupted: the server stopped during this step", utc_now()
            )
        )

    async def close(self) -> None:
        """Stop the deploys under way (a stop kills their git; the next start marks
        them failed)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            tools.stop_all()
            await asyncio.wait(self._tasks)
        self._git.shutdown(wait=False, cancel_futures=True)

    async def _in_git_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._git, work)

    # -- the steps ----------------------------------------------------------------------

    async def _check_repository(self, repo: str, branch: str | None) -> None:
        url = self._clone_url(repo)
        token = self._settings.deploy_git_token
        try:
            found = await self._in_git_thread(lambda: git_sources.branches(url, token))
        except git_sources.RepositoryMissing:
            raise NotFound(f"repository not found: {repo}") from None
        except tools.ToolError as exc:
            raise BadGateway(f"the git host did not answer: {exc}") from None
        if branch is not None and branch not in found:
            raise NotFound(f"branch not found: {branch}")

    def _clone_url(self, repo: str) -> str:
        return f"{self._settings.deploy_git_base_url}/{repo}.git"

    async def _deploy(self, principal: Principal, project: Project) -> None:
        assert project.vm_id is not None
        vm_id = project.vm_id
        work = self._work / project.project_id
        step = "cloning"
        try:
            await self._record(project, step)
            source = work / "project"
            await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
            url, token = self._clone_url(project.repo), self._settings.deploy_git_token
            await self._in_git_thread(lambda: git_sources.clone(url, project.branch, token, source))
            step = "copying"
            await self._record(project, step)
            archive = work / "project.tar.gz"
            await self._in_git_thread(lambda: _pack(source, archive))
            await self._vms.guest.upload(
                principal, vm_id, ARCHIVE_IN_GUEST, _chunks(archive), 0o600, True
            )
            await self._run(principal, vm_id, "copying", ["sh", "-c", UNPACK], None)
            directory = serve_path(project.settings.working_directory)
            for step, command in (
                ("installing", project.settings.install_command),
                ("building", project.settings.build_command),
            ):
                if command:
                    await self._record(project, step)
                    await self._run(principal, vm_id, step, ["sh", "-c", command], directory)
            step = "starting"
            await self._record(project, step)
            run = project.settings.run_command
            if run:
                argv = ["sh", "-c", START, "vers-deploy", run]
            else:
                argv = ["sh", "-c", START_STATIC, "vers-deploy", directory]
            started = await self._run(principal, vm_id, step, argv, directory)
            pid = started.stdout.decode().strip()
            step = "waiting for a port"
            await self._record(project, step)
            port = await self._wait_for_port(principal, vm_id, pid)
            step = "serving"
            await self._vms.lifecycle.set_labels(
                principal, vm_id, {PORT_LABEL: str(port)}, replace_all=False
            )
            await self._record(project, step, status=ProjectStatus.RUNNING, guest_port=port)
            log.info(
                "deploy %s: %s serves on port %d of VM %s",
                project.project_id,
                project.repo,
                port,
                vm_id,
            )
        except (StepFailed, VersError, tools.ToolError) as exc:
            message = str(exc) if not isinstance(exc, VersError) else exc.message
            await self._record(project, step, status=ProjectStatus.FAILED, error=message)
            log.info("deploy %s failed while %s: %s", project.project_id, step, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("deploy %s failed while %s", project.project_id, step)
            await self._record(
                project, step, status=ProjectStatus.FAILED, error="internal server error"
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _record(
        self,
        project: Project,
        step: str,
        *,
        status: ProjectStatus = ProjectStatus.DEPLOYING,
        error: str | None = None,
        guest_port: int | None = None,
    ) -> None:
        await self._db.write(
            lambda tx: deploy_store.set_step(
                tx, project.project_id, status, step, utc_now(), error=error, guest_port=guest_port
            )
        )

    async def _run(
        self, principal: Principal, vm_id: str, step: str, argv: list[str], directory: str | None
    ) -> ExecOutcome:
        outcome = await self._vms.guest.exec(
            principal,
            vm_id,
            Command(argv=argv, working_dir=directory, timeout_seconds=COMMAND_TIMEOUT_SECONDS),
        )
        if outcome.exit_code != 0:
            output = (outcome.stderr or outcome.stdout).decode(errors="replace")
            raise StepFailed(
                f"{step} failed (exit {outcome.exit_code}): {_last_lines(output)}"
                f" (the whole output: the VM's exec log, exec {outcome.exec_id})"
            )
        return outcome

    async def _listening(self, principal: Principal, vm_id: str, pid: str) -> _Listening:
        outcome = await self._vms.guest.exec(
            principal, vm_id, Command(argv=["python3", "-c", LISTENING, pid])
        )
        return _parse_listening(outcome.stdout.decode(errors="replace"))

    async def _wait_for_port(self, principal: Principal, vm_id: str, pid: str) -> int:
        deadline = asyncio.get_running_loop().time() + PORT_WAIT_SECONDS
        while True:
            now = await self._listening(principal, vm_id, pid)
            if now.ports:
                return min(now.ports)
            if not now.alive:
                tail = await self._app_log_tail(principal, vm_id)
                raise StepFailed(f"the application exited before it listened on a port: {tail}")
            if asyncio.get_running_loop().time() > deadline:
                raise StepFailed(
                    f"the application listened on no port within {PORT_WAIT_SECONDS} s"
                    f" (its output: {APP_LOG} in the VM)"
                )
            await asyncio.sleep(PORT_POLL_SECONDS)

    async def _app_log_tail(self, principal: Principal, vm_id: str) -> str:
        with contextlib.suppress(VersError):
            outcome = await self._vms.guest.exec(
                principal, vm_id, Command(argv=["tail", "-n", "5", APP_LOG])
            )
            return _last_lines(outcome.stdout.decode(errors="replace"))
        return "(no output)"


@dataclass(frozen=True, slots=True)
class _Listening:
    alive: bool
    ports: frozenset[int]


def _parse_listening(text: str) -> _Listening:
    """`LISTENING`'s output: `alive` if the application lives, then one port a line."""
    lines = text.split()
    return _Listening("alive" in lines, frozenset(int(p) for p in lines if p.isdigit()))


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"


def _pack(source: Path, archive: Path) -> None:
    """The clone as a tarball for the guest, without `.git`: a static site would serve it
    (the repository's name, its host), and the application has its files."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="project", filter=_without_git)


def _without_git(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if member.name == "project/.git" else member


async def _chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, size):
            yield chunk
