"""Units of work on the real databases: each one all or nothing, even inside a batch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from tests.support import Backend, unique_name
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import identity
from vers_orchestrator.store.connect import open_database
from vers_orchestrator.store.database import Database, Tx, UniqueViolation, utc_now
from vers_orchestrator.store.migrate import upgrade

T = TypeVar("T")


def with_database(backend: Backend, work: Callable[[Database], Awaitable[T]]) -> T:
    settings = Settings.from_env(backend.env)
    upgrade(settings)

    async def run() -> T:
        db = await open_database(settings)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def insert_org(name: str) -> Callable[[Tx], Awaitable[identity.Organization]]:
    return lambda tx: identity.insert_organization(tx, str(uuid.uuid4()), name, utc_now())


def existing(backend: Backend, names: list[str]) -> list[str]:
    async def work(db: Database) -> list[str]:
        found = [
            await db.read(lambda tx, n=n: identity.get_organization_by_name(tx, n)) for n in names
        ]
        return [org.name for org in found if org is not None]

    return with_database(backend, work)


class TestUnitsOfWork:
    def test_concurrent_units_commit_and_a_failing_one_rolls_back_alone(
        self, fresh_backend: Backend
    ) -> None:
        names = [unique_name("org") for _ in range(20)]
        rival = names[7].upper()  # the same name to the case-insensitive index

        async def work(db: Database) -> list[object]:
            # On SQLite they land in one batch of the group commit; on PostgreSQL they
            # race, so either of the two rivals may be the one that fails.
            units = [insert_org(name) for name in [*names, rival]]
            return await asyncio.gather(*(db.write(u) for u in units), return_exceptions=True)

        outcomes = with_database(fresh_backend, work)
        kinds = [type(outcome).__name__ for outcome in outcomes]
        others = kinds[:7] + kinds[8:20]
        assert others == ["Organization"] * 19
        assert sorted([kinds[7], kinds[20]]) == ["Organization", "UniqueViolation"]
        winner = names[7] if kinds[7] == "Organization" else rival
        # Reopened: everything but the failed unit was committed.
        assert existing(fresh_backend, names) == [*names[:7], winner, *names[8:]]

    def test_unit_that_raises_leaves_nothing_behind(self, fresh_backend: Backend) -> None:
        first, second = unique_name("org"), unique_name("org")

        async def half_done(tx: Tx) -> None:
            await insert_org(first)(tx)
            await insert_org(second)(tx)
            raise RuntimeError("changed my mind")

        async def work(db: Database) -> None:
            with pytest.raises(RuntimeError, match="changed my mind"):
                await db.write(half_done)

        with_database(fresh_backend, work)
        assert existing(fresh_backend, [first, second]) == []

    def test_unique_violation_is_reported_as_such(self, fresh_backend: Backend) -> None:
        name = unique_name("org")

        async def work(db: Database) -> None:
            await db.write(insert_org(name))
            with pytest.raises(UniqueViolation):
                await db.write(insert_org(name))

        with_database(fresh_backend, work)
        assert existing(fresh_backend, [name]) == [name]
