"""Data the API cannot create, or that a test must place exactly, written through the
services and the store in-process, against the database the test server uses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tests.support import Backend, Key
from vers_orchestrator.services import commits
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.commits import Commit
from vers_orchestrator.store.connect import open_database
from vers_orchestrator.store.database import Database, utc_now
from vers_orchestrator.store.vms import State, Vm

T = TypeVar("T")
# A node name that is not the test server's: a VM recorded on another server of the
# deployment.
ELSEWHERE = "another-host:/var/lib/vers/vm-state"


def in_database(backend: Backend, work: Callable[[Database], Awaitable[T]]) -> T:
    """`work` on `backend`'s database, over a connection of its own, from this process."""

    async def run() -> T:
        db = await open_database(Settings.from_env(backend.env))
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def vm_row(
    key: Key,
    node: str = ELSEWHERE,
    parent_commit_id: str | None = None,
    state: State = State.RUNNING,
) -> Vm:
    """A VM row of `key` (1 vCPU, 256 MiB, 1024 MiB of disk) with no guest behind it."""
    return Vm(
        vm_id=str(uuid.uuid4()),
        org_id=key.org_id,
        owner_id=key.api_key_id,
        parent_commit_id=parent_commit_id,
        state=state,
        vcpus=1,
        mem_mib=256,
        disk_mib=1024,
        labels={},
        ssh_port=None,
        created_at=utc_now(),
        deleted_at=None,
        node=node,
    )


def make_commit(
    backend: Backend,
    key: Key,
    grandparent: Commit | None = None,
    name: str | None = None,
    description: str | None = None,
    parent_vm_id: str | None = None,
) -> Commit:
    """A new private commit owned by `key`, of a VM started from `grandparent` if given."""
    return in_database(
        backend,
        lambda db: commits.record(
            db,
            key.api_key_id,
            parent_vm_id or str(uuid.uuid4()),
            None if grandparent is None else grandparent.commit_id,
            name=name,
            description=description,
        ),
    )


def make_commits(backend: Backend, key: Key, count: int) -> list[Commit]:
    """`count` commits of `key`, oldest first, recorded over one connection."""

    async def record_all(db: Database) -> list[Commit]:
        return [
            await commits.record(db, key.api_key_id, str(uuid.uuid4()), None) for _ in range(count)
        ]

    return in_database(backend, record_all)
