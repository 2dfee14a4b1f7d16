"""What every command shares: logging, the database, one-line errors."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vers_orchestrator import startup
from vers_orchestrator.log_format import OneLineFormatter
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.database import Database

T = TypeVar("T")
PROG = "vers-orchestrator"
log = logging.getLogger("vers_orchestrator")


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    # Every request writes an access-log line: skip what no line of ours prints (the
    # caller's source file, thread and process), as the logging HOWTO's "Optimization"
    # section describes.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Alembic narrates every migration step at INFO, uvicorn its start and stop, which our
    # own lines say (`listening on …`, `stopped`): keep the log about the server.
    if settings.log_level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    # `serve` says why a start-up failed, in one line of its own.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: record.msg != "Application startup failed. Exiting."
    )


def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    from vers_orchestrator.store.connect import open_database

    startup.upgrade_database(settings)

    async def run() -> T:
        db = await open_database(settings)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
