"""What the process is (version, build) and whether it can serve (health)."""

from __future__ import annotations

import functools
from pathlib import Path

from vers_orchestrator.errors import DatabaseUnavailable
from vers_orchestrator.store import system as system_store
from vers_orchestrator.store.database import Database

EXECUTABLE_NAME = "orchestrator"
UNKNOWN_GIT_HASH = "unknown"


@functools.cache
def git_hash() -> str:
    """The commit of the checkout this package runs from, read from `.git` (no subprocess).

    An installed wheel has no checkout: `unknown`.
    """
    for directory in Path(__file__).resolve().parents:
        git = directory / ".git"
        if git.is_dir():
            return _resolve_head(git)
    return UNKNOWN_GIT_HASH


def _resolve_head(git: Path) -> str:
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.is_file():
            return loose.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    except OSError:
        pass
    return UNKNOWN_GIT_HASH


async def check_health(db: Database) -> None:
    """Raises `DatabaseUnavailable` unless the database answers a query."""
    try:
        await db.read(system_store.ping)
    except Exception as exc:
        raise DatabaseUnavailable() from exc
