"""Moving a VM's memory and device state between QEMUs (migration), as commits and
restores use it (`snapshots.py` says which way when)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from vers_orchestrator.drivers.base import DriverError
from vers_orchestrator.drivers.qemu.qmp import QmpClient

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# 7.2 throttles migration to 128 MiB/s by default, which would stretch every commit's pause.
MIGRATION_BANDWIDTH = 100 * 1024 * MIB
MIGRATION_TIMEOUT_SECONDS = 300.0
# A live commit: the longest stop QEMU may plan for while the guest runs (ms), and how
# long the copy may go on before a longer stop is allowed.
DOWNTIME_LIMIT_MS = 5
CONVERGE_SECONDS = 3.0
FORCED_DOWNTIME_LIMIT_MS = 60_000


async def set_capabilities(
    qmp: QmpClient, *, ignore_shared: bool, pause_before_switchover: bool = False
) -> None:
    """The capabilities a migration depends on. Both ends must agree on `x-ignore-shared`
    (with it on, the stream also carries each RAM block's address); capabilities outlast
    a migration, so each one states the pause it wants too."""
    await qmp.execute(
        "migrate-set-capabilities",
        {
            "capabilities": [
                {"capability": "x-ignore-shared", "state": ignore_shared},
                {"capability": "pause-before-switchover", "state": pause_before_switchover},
            ]
        },
    )


async def migrate(qmp: QmpClient, uri: str, ignore_shared: bool) -> None:
    await set_capabilities(qmp, ignore_shared=ignore_shared)
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": MIGRATION_BANDWIDTH})
    await qmp.execute("migrate", {"uri": uri})
    await wait_for_migration(qmp)


async def migrate_live(
    qmp: QmpClient, uri: str, freeze_disk: Callable[[], Awaitable[tuple[str, ...]]]
) -> tuple[float, tuple[str, ...]]:
    """Copy a VM's memory to `uri` while it runs (pre-copy); QEMU then stops it for the
    pages written meanwhile and its devices. The disk layer is switched inside that stop
    (`pause-before-switchover`), so disk and memory are of the same instant. Returns when
    the stop began (time.monotonic(), seen within a poll) and the frozen disk chain; the
    caller continues the VM. Raises DriverError when the migration fails.

    A guest that writes memory faster than it is copied would never let the copy end:
    after CONVERGE_SECONDS the planned stop may be as long as the rest takes.
    """
    await set_capabilities(qmp, ignore_shared=False, pause_before_switchover=True)
    await qmp.execute(
        "migrate-set-parameters",
        {"max-bandwidth": MIGRATION_BANDWIDTH, "downtime-limit": DOWNTIME_LIMIT_MS},
    )
    await qmp.execute("migrate", {"uri": uri})
    started = time.monotonic()
    forced = False
    try:
        while True:
            info = await qmp.execute("query-migrate")
            status = info.get("status")
            if status == "pre-switchover":
                break
            if status in ("failed", "cancelled", "completed"):
                raise DriverError(f"migration {status}: {info.get('error-desc', 'no details')}")
            waited = time.monotonic() - started
            if waited > CONVERGE_SECONDS and not forced:
                log.warning("a live commit did not converge in %g s: stopping longer", waited)
                await qmp.execute(
                    "migrate-set-parameters", {"downtime-limit": FORCED_DOWNTIME_LIMIT_MS}
                )
                forced = True
            if waited > MIGRATION_TIMEOUT_SECONDS:
                raise DriverError(
                    f"migration did not finish within {MIGRATION_TIMEOUT_SECONDS:g} s"
                )
            await asyncio.sleep(0.002)
        stopped_at = time.monotonic()
        frozen = await freeze_disk()
        await qmp.execute("migrate-continue", {"state": "pre-switchover"})
        # The VM is stopped until this returns: look often.
        await wait_for_migration(qmp, poll_seconds=0.001)
    except BaseException:
        with contextlib.suppress(DriverError):
            await qmp.execute("migrate_cancel")
            await _wait_for_end(qmp)
        raise
    finally:
        # Capabilities outlast the migration: any later one (ours states its own, but a
        # tool's or an operator's by hand) would otherwise wait at the switchover.
        with contextlib.suppress(DriverError):
            await set_capabilities(qmp, ignore_shared=False)
    return stopped_at, frozen


async def _wait_for_end(qmp: QmpClient) -> None:
    """Until a cancelled migration has ended, so that the VM can be continued."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (await qmp.execute("query-migrate")).get("status") not in ("cancelling", "active"):
            return
        await asyncio.sleep(0.01)


async def wait_for_migration(qmp: QmpClient, poll_seconds: float = 0.005) -> None:
    """Until the migration has completed; raises DriverError when it failed, was
    cancelled or took MIGRATION_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + MIGRATION_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        info = await qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise DriverError(f"migration {status}: {info.get('error-desc', 'no details')}")
        await asyncio.sleep(poll_seconds)
    raise DriverError(f"migration did not finish within {MIGRATION_TIMEOUT_SECONDS:g} s")


async def settle(qmp: QmpClient, *, run: bool) -> None:
    """Leave a just-migrated VM running or paused.

    A completed migration hands the disks over to the destination; only `cont` takes them
    back, so a VM that should stay paused is continued and stopped again at once (it runs
    for about a millisecond).
    """
    await qmp.execute("cont")
    if not run:
        await qmp.execute("stop")
