"""Commits of VMs, VMs started from commits, and branches (both at once).

A commit of a VM is owned by the key that asked for it, private, and records the VM and
the VM's previous commit (for its first, the commit the VM was started from). Starting
VMs from a commit is all or nothing; a branch of a VM commits it first (a real, listed
commit). References: `commit_id`, an organization-wide `tag_name`, `repo:tag` in the
caller's organization, or `org/repo:tag` of another organization's public repository.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from vers_orchestrator.auth import Principal
from vers_orchestrator.drivers import base as driver_api
from vers_orchestrator.errors import (
    BadRequest,
    CommitNotFound,
    InvalidQuery,
    InvalidRef,
    NotFound,
    ParentVmNotFound,
    ProvidedCommitNotFound,
    TagNotFound,
    Unprocessable,
    VmNotFound,
    VmOrCommitNotFound,
)
from vers_orchestrator.ids import new_id
from vers_orchestrator.services import commits
from vers_orchestrator.services.commits import visible_to
from vers_orchestrator.services.keys import ORG_NAME_MAX
from vers_orchestrator.services.validation import (
    ORG_TAG_NAME_MAX,
    REPO_TAG_NAME_MAX,
    REPOSITORY_NAME_MAX,
    is_valid_name,
    validate_text,
)
from vers_orchestrator.services.vms.context import VmContext, canonical_or_none
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import repositories as repository_store
from vers_orchestrator.store import tags as tag_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.commits import Commit
from vers_orchestrator.store.database import Tx
from vers_orchestrator.store.repositories import Repository
from vers_orchestrator.store.tags import Tag
from vers_orchestrator.store.vms import State, Vm

MAX_COUNT = 255


def check_count(count: int | None) -> int:
    value = 1 if count is None else count
    if not 0 <= value <= MAX_COUNT:
        raise InvalidQuery(f"count must be 0-{MAX_COUNT}")
    return value


class Snapshots:
    def __init__(self, context: VmContext) -> None:
        self._context = context

    async def commit(
        self,
        principal: Principal,
        vm_id: str,
        keep_paused: bool,
        name: str | None,
        description: str | None,
    ) -> Commit:
        """Snapshot the VM; the commit is private and owned by the caller's key."""
        validate_text("name", name)
        validate_text("description", description)
        vm = await self._context.alive(principal, vm_id)
        return await self.commit_vm(principal, vm, keep_paused, name, description)

    async def commit_vm(
        self,
        principal: Principal,
        vm: Vm,
        keep_paused: bool,
        name: str | None,
        description: str | None,
    ) -> Commit:
        commit_id = new_id()
        if keep_paused:
            # Recorded first: a restart after a crash mid-commit leaves paused what the user
            # asked to stay paused, and resumes the rest (Lifecycle.reconcile).
            await self._context.set_state(vm.vm_id, State.PAUSED)
        async with self._context.driver_call(vm.vm_id, "commit the VM"):
            await self._context.detached(
                self._context.driver.commit(vm.vm_id, commit_id, keep_paused=keep_paused)
            )
        try:
            commit = await commits.record(
                self._context.db,
                principal.api_key_id,
                vm.vm_id,
                vm.parent_commit_id,
                name=name,
                description=description,
                commit_id=commit_id,
            )
        except BaseException:
            with contextlib.suppress(driver_api.DriverError):
                await self._context.driver.delete_commit(commit_id)
            raise
        return commit

    async def delete_commit(self, principal: Principal, commit_id: str) -> None:
        """The commit service's delete, then the snapshot's data on the host."""
        await commits.delete(self._context.db, principal, commit_id)
        with contextlib.suppress(driver_api.CommitNotFound):
            await self._context.driver.delete_commit(commits.canonical_id(commit_id))

    async def restore(
        self,
        principal: Principal,
        commit: Commit,
        count: int,
        missing: type[NotFound] = ProvidedCommitNotFound,
    ) -> list[Vm]:
        """`count` new running VMs of the caller, each continuing where `commit` was.

        `missing` is the caller's answer for a commit that is not there: raised when the
        commit is deleted between the caller's lookup and the VMs' admission."""
        if count == 0:
            return []
        source_vm_id = commit.parent_vm_id
        source = None
        if source_vm_id is not None:
            source = await self._context.db.read(lambda tx: vm_store.get(tx, source_vm_id))
        if source is None:
            raise ProvidedCommitNotFound()  # no snapshot data can exist for it
        new = [
            self._context.intent(
                principal, commit.commit_id, source.vcpus, source.mem_mib, source.disk_mib
            )
            for _ in range(count)
        ]
        try:
            await self._context.admit(principal, new, record=True)
        except ProvidedCommitNotFound:
            raise missing() from None
        ids = [vm.vm_id for vm in new]
        try:
            async with self._context.driver_call(ids[0], "start the VM"):
                infos = await self._context.detached(
                    self._context.driver.restore(commit.commit_id, ids)
                )
        except BaseException:
            for vm_id in ids:
                await self._context.set_state(vm_id, State.FAILED)
            raise
        environment = await self._context.user_environment(principal)
        await asyncio.gather(
            *(self._context.write_environment(info.vm_id, environment) for info in infos)
        )
        for info in infos:
            await self._context.set_state(info.vm_id, State.RUNNING)
        return [replace(vm, state=State.RUNNING) for vm in new]

    async def from_commit(
        self,
        principal: Principal,
        commit_id: str | None,
        tag_name: str | None,
        ref: str | None,
    ) -> Vm:
        given = [value for value in (commit_id, tag_name, ref) if value is not None]
        if len(given) != 1:
            raise Unprocessable(
                "Failed to deserialize the JSON body into the target type:"
                " expected exactly one of commit_id, tag_name, ref"
            )
        if commit_id is not None:
            canonical = canonical_or_none(commit_id)
            if canonical is None:
                raise Unprocessable(
                    "Failed to deserialize the JSON body into the target type:"
                    " commit_id: invalid UUID"
                )
            commit = await self._context.db.read(lambda tx: commit_store.get(tx, canonical))
            if commit is None or not visible_to(commit, principal):
                raise CommitNotFound()
        elif tag_name is not None:
            commit = await self._commit_of_tag(
                await self._context.db.read(lambda tx: self._org_tag(tx, principal, tag_name)),
                CommitNotFound,
            )
        else:
            assert ref is not None
            commit = await self._commit_of_tag(
                await self._context.db.read(lambda tx: self._ref_tag(tx, principal, ref)),
                CommitNotFound,
            )
        [vm] = await self.restore(principal, commit, 1, CommitNotFound)
        return vm

    async def _commit_of_tag(
        self, tag: Tag, missing: type[CommitNotFound | ProvidedCommitNotFound]
    ) -> Commit:
        commit = await self._context.db.read(lambda tx: commit_store.get(tx, tag.commit_id))
        if commit is None or commit.deleted_at is not None:
            raise missing()
        return commit

    @staticmethod
    async def _org_tag(tx: Tx, principal: Principal, tag_name: str) -> Tag:
        tag = None
        if is_valid_name(tag_name, ORG_TAG_NAME_MAX):
            tag = await tag_store.get_in_org(tx, principal.org_id, tag_name)
        if tag is None:
            raise TagNotFound()
        return tag

    @staticmethod
    async def _repo_tag(tx: Tx, repository: Repository | None, tag_name: str) -> Tag:
        tag = None
        if repository is not None and is_valid_name(tag_name, REPO_TAG_NAME_MAX):
            tag = await tag_store.get_in_repository(tx, repository.repo_id, tag_name)
        if tag is None:
            raise TagNotFound()
        return tag

    async def _ref_tag(self, tx: Tx, principal: Principal, ref: str) -> Tag:
        """`repo:tag` in the caller's organization, or `org/repo:tag` of a public repository."""
        path, _, tag_name = ref.partition(":")
        org_name, slash, repo_name = path.rpartition("/")
        if not tag_name or not repo_name or (slash and not org_name):
            raise InvalidRef()
        if slash:
            public = None
            if is_valid_name(org_name, ORG_NAME_MAX) and is_valid_name(
                repo_name, REPOSITORY_NAME_MAX
            ):
                public = await repository_store.get_public(tx, org_name, repo_name)
            if public is None:
                raise TagNotFound()
            tag = None
            if is_valid_name(tag_name, REPO_TAG_NAME_MAX):
                tag = await tag_store.get_in_repository(tx, public.repo_id, tag_name)
            if tag is None:
                raise TagNotFound()
            return tag
        repository = None
        if is_valid_name(repo_name, REPOSITORY_NAME_MAX):
            repository = await repository_store.get_by_name(tx, principal.org_id, repo_name)
        return await self._repo_tag(tx, repository, tag_name)

    async def branch_by_vm(
        self, principal: Principal, vm_id: str, count: int | None, keep_paused: bool
    ) -> list[Vm]:
        """Commit the VM, then start `count` VMs from that commit."""
        how_many = check_count(count)
        try:
            vm = await self._context.alive(principal, vm_id)
        except VmNotFound:
            raise ParentVmNotFound() from None
        probe = [
            self._context.intent(principal, None, vm.vcpus, vm.mem_mib, vm.disk_mib)
        ] * how_many
        await self._context.admit(principal, probe, record=False)
        commit = await self.commit_vm(principal, vm, keep_paused, None, None)
        return await self.restore(principal, commit, how_many)

    async def branch_by_commit(
        self, principal: Principal, commit_id: str, count: int | None
    ) -> list[Vm]:
        how_many = check_count(count)
        canonical = canonical_or_none(commit_id)
        commit = None
        if canonical is not None:
            commit = await self._context.db.read(lambda tx: commit_store.get(tx, canonical))
        if commit is None or not visible_to(commit, principal):
            # The hosted service's own text and shape here (api/vm_snapshots.py).
            raise CommitNotFound()
        return await self.restore(principal, commit, how_many, CommitNotFound)

    async def branch_by_tag(
        self, principal: Principal, tag_name: str, count: int | None
    ) -> list[Vm]:
        how_many = check_count(count)
        tag = await self._context.db.read(lambda tx: self._org_tag(tx, principal, tag_name))
        commit = await self._commit_of_tag(tag, ProvidedCommitNotFound)
        return await self.restore(principal, commit, how_many)

    async def branch_by_ref(
        self, principal: Principal, repo_name: str, tag_name: str, count: int | None
    ) -> list[Vm]:
        how_many = check_count(count)

        async def unit(tx: Tx) -> Tag:
            repository = None
            if is_valid_name(repo_name, REPOSITORY_NAME_MAX):
                repository = await repository_store.get_by_name(tx, principal.org_id, repo_name)
            return await self._repo_tag(tx, repository, tag_name)

        tag = await self._context.db.read(unit)
        commit = await self._commit_of_tag(tag, ProvidedCommitNotFound)
        return await self.restore(principal, commit, how_many)

    async def branch(
        self, principal: Principal, vm_or_commit_id: str, count: int | None, keep_paused: bool
    ) -> list[Vm]:
        """A VM of the caller's organization is branched; otherwise a visible commit is."""
        how_many = check_count(count)
        canonical = canonical_or_none(vm_or_commit_id)
        if canonical is None:
            raise BadRequest("Invalid URL: vm_or_commit_id must be a UUID")
        vm = await self._context.db.read(
            lambda tx: vm_store.get_live_in_org(tx, principal.org_id, canonical)
        )
        if vm is not None:
            return await self.branch_by_vm(principal, canonical, how_many, keep_paused)
        commit = await self._context.db.read(lambda tx: commit_store.get(tx, canonical))
        if commit is None or not visible_to(commit, principal):
            raise VmOrCommitNotFound()
        return await self.restore(principal, commit, how_many, VmOrCommitNotFound)
