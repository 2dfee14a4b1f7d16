"""Data the API cannot create yet, written through the services in-process.

Commits come from VMs (a later issue); until then tests record them with the same
service function the VM layer will call, against the database the test server uses.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.support import Backend, Key
from vers_orchestrator.services import commits
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.commits import Commit
from vers_orchestrator.store.connect import open_database


def make_commit(
    backend: Backend,
    key: Key,
    grandparent: Commit | None = None,
    name: str | None = None,
    description: str | None = None,
    parent_vm_id: str | None = None,
) -> Commit:
    """A new private commit owned by `key`, of a VM started from `grandparent` if given."""

    async def run() -> Commit:
        db = await open_database(Settings.from_env(backend.env))
        try:
            return await commits.record(
                db,
                key.api_key_id,
                parent_vm_id or str(uuid.uuid4()),
                None if grandparent is None else grandparent.commit_id,
                name=name,
                description=description,
            )
        finally:
            await db.close()

    return asyncio.run(run())


def make_commits(backend: Backend, key: Key, count: int) -> list[Commit]:
    """`count` commits of `key`, oldest first, recorded over one connection."""

    async def run() -> list[Commit]:
        db = await open_database(Settings.from_env(backend.env))
        try:
            return [
                await commits.record(db, key.api_key_id, str(uuid.uuid4()), None)
                for _ in range(count)
            ]
        finally:
            await db.close()

    return asyncio.run(run())
