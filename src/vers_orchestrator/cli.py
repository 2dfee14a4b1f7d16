"""The `vers-orchestrator` command. Commands parse arguments and call services; no logic."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from vers_orchestrator.errors import VersError
from vers_orchestrator.settings import Settings, SettingsError
from vers_orchestrator.store.database import Database

T = TypeVar("T")
log = logging.getLogger("vers_orchestrator")


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # Every request writes an access-log line: skip what no line of ours prints (the
    # caller's source file, thread and process), as the logging HOWTO's "Optimization"
    # section describes.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Alembic narrates every migration step at INFO; keep the log about the server.
    if settings.log_level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    from vers_orchestrator.store.connect import open_database
    from vers_orchestrator.store.migrate import upgrade

    upgrade(settings)

    async def run() -> T:
        db = await open_database(settings)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from vers_orchestrator.api.http_server import HeadLimits, bounded_http_protocol
    from vers_orchestrator.app import create_app
    from vers_orchestrator.store.migrate import upgrade

    upgrade(settings)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    # Listen before the app starts: early connections wait in the backlog, not refused.
    listener.listen(2048)
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    config = uvicorn.Config(
        create_app(settings),
        loop="uvloop",
        http=bounded_http_protocol(
            HeadLimits(settings.header_timeout_seconds, settings.max_header_bytes)
        ),
        # Idle keep-alive connections close after this many seconds (uvicorn's default, made
        # explicit); a connection that has begun its next head is bounded by the head timeout.
        timeout_keep_alive=5,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        # Client addresses are not used, so X-Forwarded-* need not be parsed per request.
        proxy_headers=False,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    # uvicorn finishes in-flight requests on SIGTERM/SIGINT, then re-raises the signal to
    # whatever handler was there before. A no-op handler makes that a clean exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    # What exists now (modules, routes, schemas) lives as long as the process: keep the
    # cyclic garbage collector from scanning it again after every few thousand allocations.
    gc.freeze()
    log.info("listening on http://%s:%d", shown_host, port)
    server.run(sockets=[listener])
    log.info("stopped")
    return 0 if server.started else 1


def _keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.services import keys

    created = _with_database(
        settings,
        lambda db: keys.create(
            db,
            args.org,
            args.user,
            email=args.email,
            label=args.label,
            max_vcpus=args.max_vcpus,
            max_memory_mib=args.max_memory_mib,
            max_disk_mib=args.max_disk_mib,
        ),
    )
    if args.format == "json":
        print(
            json.dumps(
                {
                    "api_key": created.api_key,
                    "api_key_id": created.api_key_id,
                    "org_id": created.org_id,
                    "org_name": created.org_name,
                    "user_id": created.user_id,
                    "user_name": created.user_name,
                    "label": created.label,
                    "created_at": created.created_at.isoformat(),
                }
            )
        )
    else:
        print(f"API key for {created.user_name} in {created.org_name} (shown only once):")
        print(f"  {created.api_key}")
        print(f"key id {created.api_key_id}, organization id {created.org_id}")
    return 0


def _keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.services import keys

    found = _with_database(settings, lambda db: keys.list_keys(db, args.org))
    rows: list[dict[str, Any]] = [
        {
            "api_key_id": key.api_key_id,
            "org_name": key.org_name,
            "user_name": key.user_name,
            "label": key.label,
            "created_at": key.created_at.isoformat(),
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        for key in found
    ]
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    print(f"{'KEY ID':36}  {'ORGANIZATION':20}  {'USER':20}  {'STATUS':8}  LABEL")
    for row in rows:
        status = "revoked" if row["revoked_at"] else "active"
        print(
            f"{row['api_key_id']:36}  {row['org_name']:20}  {row['user_name']:20}"
            f"  {status:8}  {row['label'] or ''}"
        )
    return 0


def _keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.services import keys

    _with_database(settings, lambda db: keys.revoke(db, args.key_id))
    print(f"revoked {args.key_id}")
    return 0


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.store.migrate import upgrade

    upgrade(settings)
    print("database is at the newest schema")
    return 0


def _images_build_default(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.drivers.qemu.images import ImageBuildError, build_default_image

    try:
        image = build_default_image(
            settings.effective_images_dir, lambda line: print(line, file=sys.stderr, flush=True)
        )
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(image.directory)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vers-orchestrator",
        description="Control plane for branchable microVMs. Settings come from"
        " VERS_ORCHESTRATOR_* environment variables (DATA_DIR, DATABASE_URL, ...).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="upgrade the schema, then serve the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create an API key (and its org and user)")
    create.add_argument("--org", required=True, help="organization name")
    create.add_argument("--user", required=True, help="user name")
    create.add_argument("--email")
    create.add_argument("--label")
    create.add_argument("--max-vcpus", type=int, help="vCPUs the key's live VMs may use together")
    create.add_argument(
        "--max-memory-mib", type=int, help="MiB of RAM the key's live VMs may use together"
    )
    create.add_argument(
        "--max-disk-mib", type=int, help="MiB of disk the key's live VMs may have together"
    )
    create.add_argument("--format", choices=("text", "json"), default="text")
    create.set_defaults(run=_keys_create)

    listing = keys.add_parser("list", help="list API keys")
    listing.add_argument("--org", help="only this organization's keys")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    listing.set_defaults(run=_keys_list)

    revoke = keys.add_parser("revoke", help="revoke an API key")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)

    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", help="migrate the database to the newest schema").set_defaults(
        run=_db_upgrade
    )

    images = commands.add_parser("images", help="guest images").add_subparsers(
        dest="images_command", required=True
    )
    images.add_parser(
        "build-default",
        help="build the default guest image from Debian packages (needs root; about a minute)",
    ).set_defaults(run=_images_build_default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    try:
        result: int = args.run(settings, args)
    except VersError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
