"""Fork: copy a public tag into the caller's organization, with a VM of its own."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from vers_orchestrator.auth import Principal
from vers_orchestrator.drivers import base as driver_api
from vers_orchestrator.errors import ForkSourceNotFound, RepoTagAlreadyExists
from vers_orchestrator.ids import new_id
from vers_orchestrator.services.keys import ORG_NAME_MAX
from vers_orchestrator.services.validation import (
    REPO_TAG_NAME_MAX,
    REPOSITORY_NAME_MAX,
    is_valid_name,
    validate_repository_name,
    validate_tag_name,
)
from vers_orchestrator.services.vms.context import VmContext
from vers_orchestrator.services.vms.snapshots import Snapshots
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import repositories as repository_store
from vers_orchestrator.store import tags as tag_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.commits import Commit
from vers_orchestrator.store.database import ForeignKeyViolation, Tx, UniqueViolation, utc_now
from vers_orchestrator.store.repositories import Repository
from vers_orchestrator.store.tags import Tag


@dataclass(frozen=True, slots=True)
class ForkResult:
    vm_id: str
    commit_id: str
    repo_name: str
    tag_name: str


class Fork:
    def __init__(self, context: VmContext, snapshots: Snapshots) -> None:
        self._context = context
        self._snapshots = snapshots

    async def __call__(
        self,
        principal: Principal,
        source_org: str,
        source_repo: str,
        source_tag: str,
        repo_name: str | None,
        tag_name: str | None,
    ) -> ForkResult:
        """Copy a public tag into the caller's organization; a failure leaves nothing behind.

        Steps: start one VM from the source commit, commit it (a private commit of the
        caller), then create or reuse the target repository and tag the commit, in one
        transaction. Any failure deletes the VM and the commit again.
        """
        target_repo = source_repo if repo_name is None else repo_name
        target_tag = source_tag if tag_name is None else tag_name
        validate_repository_name(target_repo)
        validate_tag_name(target_tag, REPO_TAG_NAME_MAX)

        async def resolve(tx: Tx) -> Commit:
            public = None
            if (
                is_valid_name(source_org, ORG_NAME_MAX)
                and is_valid_name(source_repo, REPOSITORY_NAME_MAX)
                and is_valid_name(source_tag, REPO_TAG_NAME_MAX)
            ):
                public = await repository_store.get_public(tx, source_org, source_repo)
            tag = None
            if public is not None:
                tag = await tag_store.get_in_repository(tx, public.repo_id, source_tag)
            commit = None if tag is None else await commit_store.get(tx, tag.commit_id)
            if commit is None or commit.deleted_at is not None:
                raise ForkSourceNotFound()
            # Checked now to spare a VM; checked again when the tag is written.
            existing = await repository_store.get_by_name(tx, principal.org_id, target_repo)
            if existing is not None and await tag_store.get_in_repository(
                tx, existing.repo_id, target_tag
            ):
                raise RepoTagAlreadyExists()
            return commit

        source = await self._context.db.read(resolve)
        [vm] = await self._snapshots.restore(principal, source, 1)
        commit: Commit | None = None
        try:
            commit = await self._snapshots.commit_vm(
                principal,
                vm,
                False,
                f"fork: {source_org}/{source_repo}:{source_tag}",
                None,
            )
            forked = commit

            async def publish(tx: Tx) -> None:
                repository = await repository_store.get_by_name(tx, principal.org_id, target_repo)
                if repository is None:
                    repository = Repository(
                        repo_id=new_id(),
                        org_id=principal.org_id,
                        name=target_repo,
                        description=f"Forked from {source_org}/{source_repo}",
                        is_public=False,
                        owner_id=principal.api_key_id,
                        created_at=utc_now(),
                    )
                    await repository_store.insert(tx, repository)
                now = utc_now()
                await tag_store.insert(
                    tx,
                    Tag(
                        tag_id=new_id(),
                        org_id=principal.org_id,
                        repo_id=repository.repo_id,
                        tag_name=target_tag,
                        commit_id=forked.commit_id,
                        owner_id=principal.api_key_id,
                        description=f"Forked from {source_org}/{source_repo}:{source_tag}",
                        created_at=now,
                        updated_at=now,
                    ),
                )

            try:
                try:
                    await self._context.db.write(publish)
                except ForeignKeyViolation:
                    # The repository it reused was deleted before the tag was written: the
                    # fork comes after that delete, so it makes the repository anew.
                    await self._context.db.write(publish)
            except UniqueViolation:
                raise RepoTagAlreadyExists() from None
        except BaseException:
            await self._context.detached(self._undo_fork(vm.vm_id, commit))
            raise
        return ForkResult(vm.vm_id, commit.commit_id, target_repo, target_tag)

    async def _undo_fork(self, vm_id: str, commit: Commit | None) -> None:
        # The VM row goes first: the commit row cannot be removed while a row names it.
        with contextlib.suppress(driver_api.DriverError):
            await self._context.delete_on_host(vm_id)
        await self._context.db.write(lambda tx: vm_store.delete_row(tx, vm_id))
        if commit is not None:
            with contextlib.suppress(driver_api.DriverError):
                await self._context.driver.delete_commit(commit.commit_id)
            await self._context.db.write(lambda tx: commit_store.delete_row(tx, commit.commit_id))
