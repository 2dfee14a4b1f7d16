"""The `vers-orchestrator` command. Commands parse arguments and call services; no logic."""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import signal
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from vers_orchestrator import __version__, startup
from vers_orchestrator.cli import deploy as deploy_command
from vers_orchestrator.cli import images as images_commands
from vers_orchestrator.cli.common import PROG, configure_logging, error, log, with_database
from vers_orchestrator.errors import VersError
from vers_orchestrator.settings import Settings, SettingsError
from vers_orchestrator.store.database import Database


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from vers_orchestrator.api.http_server import HeadLimits, bounded_http_protocol
    from vers_orchestrator.app import create_app

    # The cheapest checks first, so that a mistake is reported before any slow work.
    startup.check_data_dir(settings)
    with startup.data_dir_lock(settings, exclusive=False):
        listener = startup.listen(args.host, args.port)
        edge_listener = None
        if settings.edge_port:
            edge_listener = startup.listen(settings.edge_host, settings.edge_port)
        startup.upgrade_database(settings)
        host, port = listener.getsockname()[:2]
        shown_host = f"[{host}]" if listener.family == socket.AF_INET6 else host
        base_url = f"http://{shown_host}:{port}"

        def started() -> None:
            log.info("listening on %s (API docs at %s/docs)", base_url, base_url)
            if settings.edge_port:
                scheme = "https" if settings.edge_tls_cert else "http"
                log.info(
                    "edge listening on %s:%d: VMs at %s://<vm_id>.vm.%s:%d",
                    settings.edge_host,
                    settings.edge_port,
                    scheme,
                    settings.edge_base_domain,
                    settings.edge_port,
                )

        app = startup.WatchedStartup(create_app(settings, edge_listener), started)
        config = uvicorn.Config(
            app,
            loop="uvloop",
            # WatchedStartup hands requests on without a coroutine of its own, which would
            # make uvicorn's guess of the interface say ASGI 2.
            interface="asgi3",
            http=bounded_http_protocol(
                HeadLimits(
                    settings.header_timeout_seconds,
                    settings.max_header_bytes,
                    settings.body_timeout_seconds,
                )
            ),
            # Idle keep-alive connections close after this many seconds (uvicorn's default,
            # made explicit); a connection that has begun its next head is bounded by the
            # head timeout.
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
        # uvicorn finishes in-flight requests on SIGTERM/SIGINT, then re-raises the signal
        # to whatever handler was there before. A no-op handler makes that a clean exit 0.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: None)
        # What exists now (modules, routes, schemas) lives as long as the process: keep the
        # cyclic garbage collector from scanning it again after every few thousand
        # allocations.
        gc.freeze()
        try:
            server.run(sockets=[listener])
        except SystemExit:
            # uvicorn exits (3) when the app's start-up fails: say why instead, below.
            if app.failure is None:
                raise
    if app.failure is not None:
        message = startup.one_line(app.failure)
        if message is None:
            log.error("start-up failed", exc_info=app.failure)
            return 1
        raise startup.StartupError(message)
    log.info(
        "stopped; its VMs keep running (the next start finds them;"
        " `vers-orchestrator vms stop-all` stops them)"
    )
    return 0 if server.started else 1


def _keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.services import keys

    created = with_database(
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
    elif args.format == "token":
        print(created.api_key)  # for `export VERS_API_KEY=$(… --format token)`
    else:
        print(f"API key for {created.user_name} in {created.org_name} (shown only once):")
        print(f"  {created.api_key}")
        print(f"key id {created.api_key_id}, organization id {created.org_id}")
    return 0


def _keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.services import keys

    found = with_database(settings, lambda db: keys.list_keys(db, args.org))
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

    with_database(settings, lambda db: keys.revoke(db, args.key_id))
    print(f"revoked {args.key_id}")
    return 0


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.store.migrate import upgrade

    upgrade(settings)
    print("database is at the newest schema")
    return 0


def _vms_stop_all(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.drivers import create_driver
    from vers_orchestrator.services.vms import Vms

    async def stop_all(db: Database) -> list[str]:
        driver = create_driver(settings)
        vms = Vms(db, driver, settings)
        try:
            return await vms.stop_all()
        finally:
            await vms.close()
            await driver.close()

    startup.check_data_dir(settings)
    with startup.data_dir_lock(settings, exclusive=True):
        stopped = with_database(settings, stop_all)
    for vm_id in stopped:
        print(f"stopped {vm_id}")
    if stopped:
        print(f"{len(stopped)} stopped; listed as dead until deleted through the API")
    else:
        print("no VM was running")
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in `--help`; options that must be given say so instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        if "(default: " in text:
            return text
        if action.default is None and action.option_strings:
            return f"{text} (default: none)"
        return super()._get_help_string(action)


class _Commands:
    """Adds commands, and remembers each for the list at the end of `--help`."""

    def __init__(self) -> None:
        self.listed: list[tuple[str, str]] = []

    def add(
        self,
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        help: str,
        run: Callable[[Settings, argparse.Namespace], int] | None,
        more: str = "",
    ) -> argparse.ArgumentParser:
        """A command (`run` given) or a group of commands (`run` None); `more` goes after
        `help` in the command's own `--help`."""
        description = f"{help[0].upper()}{help[1:]}. {more}".strip()
        parser = group.add_parser(
            name, help=help, description=_wrap(description), formatter_class=_HelpFormatter
        )
        if run is not None:
            self.listed.append((parser.prog.removeprefix(PROG).strip(), help))
            parser.set_defaults(run=run)
        return parser


def _wrap(text: str) -> str:
    # The help formatter keeps descriptions as written, for the list of commands.
    return textwrap.fill(text, width=min(shutil.get_terminal_size().columns, 100) - 2)


def build_parser() -> argparse.ArgumentParser:
    return _build_parser()[0]


def command_names() -> list[str]:
    """Every command, as the end of `--help` lists them: `serve`, `keys create` …"""
    return [name for name, _ in _build_parser()[1].listed]


def _build_parser() -> tuple[argparse.ArgumentParser, _Commands]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s [-h] [--version] COMMAND ...",
        description=_wrap(
            "Control plane for branchable microVMs. Settings come from VERS_ORCHESTRATOR_*"
            " environment variables (DATA_DIR, DATABASE_URL, ...; see README.md). Each"
            " command has its own --help."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # The epilog lists the commands; argparse's own list would name only the groups.
    top = parser.add_subparsers(dest="command", required=True, help=argparse.SUPPRESS, prog=PROG)
    commands = _Commands()

    serve = commands.add(top, "serve", "upgrade the schema, then serve the API", _serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks one")

    keys = commands.add(top, "keys", "manage API keys", None).add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    create = commands.add(keys, "create", "create an API key (and its org and user)", _keys_create)
    create.add_argument("--org", required=True, help="organization name")
    create.add_argument("--user", required=True, help="user name")
    create.add_argument("--email", help="the user's email address")
    create.add_argument("--label", help="a note to tell the key from others")
    create.add_argument(
        "--max-vcpus",
        type=int,
        help="vCPUs the key's live VMs may use together (default: no limit)",
    )
    create.add_argument(
        "--max-memory-mib",
        type=int,
        help="MiB of RAM the key's live VMs may use together (default: no limit)",
    )
    create.add_argument(
        "--max-disk-mib",
        type=int,
        help="MiB of disk the key's live VMs may have together (default: no limit)",
    )
    create.add_argument(
        "--format",
        choices=("text", "json", "token"),
        default="text",
        help="output format; token: the key alone",
    )

    listing = commands.add(keys, "list", "list API keys", _keys_list)
    listing.add_argument("--org", help="only this organization's keys (default: all)")
    listing.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    revoke = commands.add(keys, "revoke", "revoke an API key", _keys_revoke)
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")

    db = commands.add(top, "db", "database maintenance", None).add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    commands.add(db, "upgrade", "migrate the database to the newest schema", _db_upgrade)

    images = commands.add(top, "images", "guest images", None).add_subparsers(
        dest="images_command", required=True, metavar="COMMAND"
    )
    build_default = commands.add(
        images,
        "build-default",
        "build the default guest image from Debian packages (needs root)",
        images_commands.build_default,
        more="It takes about a minute; VMs made before keep the image they have.",
    )
    build_default.add_argument(
        "--if-missing",
        action="store_true",
        help="build only when there is no default image yet (what `make run` does)",
    )
    build = commands.add(
        images,
        "build",
        "build an image from a registry (`python:3.12`, `host:5000/team/app:1`)",
        images_commands.build,
        more="For the organization of the key in VERS_API_KEY, as POST /api/v1/images/create"
        " does; the image's files are laid over the default image's. Registry credentials"
        " and plain-HTTP registries come from VERS_ORCHESTRATOR_REGISTRY_AUTH_FILE and"
        " VERS_ORCHESTRATOR_INSECURE_REGISTRIES.",
    )
    build.add_argument("image_ref", metavar="IMAGE_REF", help="the image's reference")
    build.add_argument("--name", required=True, help="the image's name in the organization")
    build.add_argument(
        "--size-mib", type=int, default=256, help="free space in MiB beyond the files"
    )

    vms = commands.add(top, "vms", "VMs on this machine", None).add_subparsers(
        dest="vms_command", required=True, metavar="COMMAND"
    )
    commands.add(
        vms,
        "stop-all",
        "stop every VM of this data directory's server",
        _vms_stop_all,
        more="VMs keep running when the server stops; this stops them, with the server"
        " stopped (it refuses while one runs). Their QEMU processes and disks go, their"
        " commits stay; they are listed as dead until deleted through the API.",
    )

    deploy = commands.add(
        top,
        "deploy",
        "deploy OWNER/REPO from the git host into a new VM, showing each step",
        deploy_command.deploy,
        more="Through a running server (VERS_BASE_URL, VERS_API_KEY), as POST /api/v1/deploy"
        " does; the repository comes from VERS_ORCHESTRATOR_DEPLOY_GIT_BASE_URL on that"
        " server. Exits 0 once the application serves, 1 when a step fails.",
    )
    deploy.add_argument("repo", metavar="OWNER/REPO", help="the repository")
    deploy.add_argument("--name", help="the project's name (default: the repository's)")
    deploy.add_argument("--branch", help="the branch (default: the repository's default)")
    deploy.add_argument(
        "--install",
        dest="install_command",
        help="install command, run by sh in the working directory",
    )
    deploy.add_argument(
        "--build", dest="build_command", help="build command, run by sh in the working directory"
    )
    deploy.add_argument(
        "--run",
        dest="run_command",
        help="the command that serves the app (default: the files, on port 80)",
    )
    deploy.add_argument(
        "--workdir", dest="working_directory", help="folder of the repository the commands run in"
    )

    width = max(len(name) for name, _ in commands.listed)
    parser.epilog = "commands:\n" + "\n".join(
        f"  {name:{width}}  {help}" for name, help in commands.listed
    )
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        error(str(exc))
        return 2
    configure_logging(settings)
    try:
        result: int = args.run(settings, args)
    except startup.StartupError as exc:
        error(str(exc))
        return 2
    except VersError as exc:
        error(exc.message)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
