"""The database's own health."""

from __future__ import annotations

from vers_orchestrator.store.database import Tx


async def ping(tx: Tx) -> None:
    await tx.fetch_value("SELECT 1")
