"""What a command needs from the machine before it does its work, each lack one line.

A port in use, a data directory that cannot be written, a database that does not answer,
a missing QEMU: the CLI prints `StartupError`'s message (or `one_line(exc)` of what the
app's start-up raised) as `vers-orchestrator: error: …` and exits 2, without a traceback,
since none of these is a bug to report.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import sqlalchemy.exc

from vers_orchestrator.drivers.base import DriverError
from vers_orchestrator.settings import Settings

# Held shared by every server of a data directory and exclusively by `vms stop-all`, so
# that stop-all never runs beside a server that is using the VMs it stops.
LOCK_FILE = "server.lock"
# Raw ASGI, as api/asgi.py types it (nothing outside the app imports api).
Message = dict[str, Any]
RawReceive = Callable[[], Awaitable[Message]]
RawSend = Callable[[Message], Awaitable[None]]
RawApp = Callable[[Any, RawReceive, RawSend], Awaitable[None]]
DATABASE_ERRORS = (OSError, sqlite3.Error, asyncpg.PostgresError, sqlalchemy.exc.SQLAlchemyError)


class StartupError(Exception):
    """The machine is not as the command needs it; the message is one line for the user."""


def check_data_dir(settings: Settings) -> None:
    """Make the data directory if needed and prove that files can be written in it."""
    path = settings.data_dir
    try:
        if path.exists() and not path.is_dir():
            raise StartupError(f"data directory {path} is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        # Mode bits say little when running as root; writing a file says it all.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise StartupError(f"data directory {path} is not usable: {exc.strerror}") from None


@contextlib.contextmanager
def data_dir_lock(settings: Settings, *, exclusive: bool) -> Iterator[None]:
    """Shared for a server, exclusive for `vms stop-all`; refused, not waited for."""
    path = settings.data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = "a server is running" if exclusive else "vms stop-all is running"
            raise StartupError(f"{holder} on data directory {settings.data_dir}") from None
        yield
    finally:
        os.close(fd)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, before the app starts: early connections wait in the backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is in use (--port, or PORT= with make run, chooses another)"
            ) from None
        raise StartupError(f"cannot listen on {host} port {port}: {_reason(exc)}") from None
    return listener


def upgrade_database(settings: Settings) -> None:
    """Migrate the database to the newest schema: the first time a command connects."""
    from vers_orchestrator.store.migrate import upgrade

    if not settings.uses_postgres and settings.sqlite_path is None:
        raise StartupError(
            f"unsupported database URL {shown_url(settings.effective_database_url)}:"
            " use postgresql://… or sqlite:///…"
        )
    try:
        upgrade(settings)
    except DATABASE_ERRORS as exc:
        raise StartupError(
            f"cannot use the database {shown_url(settings.effective_database_url)}: {_reason(exc)}"
        ) from None


def one_line(exc: BaseException) -> str | None:
    """The message for a failure of the app's start-up that the machine, not a bug, caused
    (QEMU missing, KVM asked for but unusable, a database gone); None for anything else."""
    # Litestar runs the lifespan in a task group, whose error wraps the one raised.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, StartupError | DriverError):
        return str(exc)
    if isinstance(exc, OSError):
        return _reason(exc)
    if isinstance(exc, DATABASE_ERRORS):
        return f"the database failed at start-up: {_reason(exc)}"
    return None


def shown_url(url: str) -> str:
    """A database URL with its password hidden."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        return _reason(exc.orig)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return " ".join(str(exc).split()) or type(exc).__name__


class WatchedStartup:
    """The ASGI app with its start-up watched. uvicorn logs the traceback of a failed
    start-up and keeps the exception to itself; here the exception is kept for the CLI to
    print as one line, and `on_started` runs once the app is ready to serve."""

    def __init__(self, app: RawApp, on_started: Callable[[], None]) -> None:
        self.app = app
        self.failure: BaseException | None = None
        self._on_started = on_started
        self._started = False

    def __call__(self, scope: Any, receive: RawReceive, send: RawSend) -> Awaitable[None]:
        # Requests go straight to the app: no extra coroutine on their path.
        if scope["type"] == "lifespan":
            return self._lifespan(scope, receive, send)
        return self.app(scope, receive, send)

    async def _lifespan(self, scope: Any, receive: RawReceive, send: RawSend) -> None:
        async def watched(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._started = True
                self._on_started()
            elif message["type"] == "lifespan.startup.failed":
                message = {**message, "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException as exc:
            if not self._started:
                self.failure = exc
            raise
