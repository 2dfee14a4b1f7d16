"""`create_app(settings)`: the ASGI application, with its store opened in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

from litestar import Litestar, Router
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from vers_orchestrator import __version__
from vers_orchestrator.api import (
    commit_tags,
    commits,
    deploy,
    docs,
    domains,
    env_vars,
    identity,
    images,
    openapi,
    public,
    repositories,
    system,
    vm_guest,
    vm_snapshots,
    vms,
)
from vers_orchestrator.api.access_log import AccessLog
from vers_orchestrator.api.bodies import BodyRequest
from vers_orchestrator.api.errors import EXCEPTION_HANDLERS
from vers_orchestrator.api.middleware import ApiMiddleware, RequestContextMiddleware
from vers_orchestrator.api.responses import JsonResponse
from vers_orchestrator.api.runtime import RUNTIME_KEY, Runtime
from vers_orchestrator.drivers import create_driver
from vers_orchestrator.edge.proxy import EdgeProxy, TlsFiles
from vers_orchestrator.services import idempotency
from vers_orchestrator.services.deploy import Deploys
from vers_orchestrator.services.domains import Domains
from vers_orchestrator.services.edge import EdgeRoutes
from vers_orchestrator.services.images import Images
from vers_orchestrator.services.keys import Authenticator
from vers_orchestrator.services.vms import Vms
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.connect import open_database
from vers_orchestrator.store.database import Database

log = logging.getLogger("vers_orchestrator")

IDEMPOTENCY_PURGE_INTERVAL_SECONDS = 3600


async def _purge_idempotency_records(db: Database, ttl: timedelta) -> None:
    while True:
        try:
            removed = await idempotency.purge_expired(db, ttl)
            if removed:
                log.info("purged %d expired idempotency records", removed)
        except Exception:
            log.exception("purging expired idempotency records failed")
        await asyncio.sleep(IDEMPOTENCY_PURGE_INTERVAL_SECONDS)


def _tls_files(settings: Settings) -> TlsFiles | None:
    if settings.edge_tls_cert is None or settings.edge_tls_key is None:
        return None
    return TlsFiles(settings.edge_tls_cert, settings.edge_tls_key)


def create_app(
    settings: Settings, edge_listener: socket.socket | None = None
) -> RequestContextMiddleware:
    """The API; with `edge_listener` (bound, listening) the edge proxy serves on it too,
    in the same event loop, for as long as the app runs."""
    access_log = AccessLog(
        sys.stderr, enabled=logging.getLevelName(settings.log_level) <= logging.INFO
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        db = await open_database(settings)
        driver = create_driver(settings)
        image_service = Images(db, driver, settings)
        vm_service = Vms(db, driver, settings, image_service)
        try:
            # VMs keep running while the server is down: find them again before serving.
            await vm_service.reconcile()
            deploy_service = Deploys(db, vm_service, settings)
            cut_short = await deploy_service.fail_interrupted()
            if cut_short:
                log.warning("deploys cut short by the last stop, marked failed: %d", cut_short)
            interrupted = await image_service.fail_interrupted()
            if interrupted:
                log.warning(
                    "image builds cut short by the last stop, marked failed: %d", interrupted
                )
            # A first VM should not wait for the image a first request would build.
            driver.warm_up()
        except BaseException:
            await driver.close()
            await db.close()
            raise
        authenticator = Authenticator(db, settings.auth_cache_seconds)
        domain_service = Domains(db, settings.domain_check)
        app.state[RUNTIME_KEY] = Runtime(
            settings=settings,
            db=db,
            authenticator=authenticator,
            vms=vm_service,
            images=image_service,
            domains=domain_service,
            deploys=deploy_service,
        )
        tasks = [
            asyncio.create_task(
                _purge_idempotency_records(db, timedelta(seconds=settings.idempotency_ttl_seconds))
            ),
            asyncio.create_task(authenticator.watch_revocations()),
        ]
        edge = None
        if edge_listener is not None:
            routes = EdgeRoutes(db, driver, vm_service, settings.edge_base_domain, settings.vm_node)
            domain_service.on_delete(routes.forget)
            edge = EdgeProxy(
                routes,
                tls=_tls_files(settings),
                max_header_bytes=settings.max_header_bytes,
                head_timeout_seconds=settings.header_timeout_seconds,
            )
            await edge.start(edge_listener)
        try:
            yield
        finally:
            if edge is not None:
                await edge.stop()
            await deploy_service.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await image_service.close()
            await vm_service.close()
            await driver.close()
            await db.close()
            access_log.flush()

    # The middleware sits on this router, not the app: the interactive docs that Litestar
    # adds beside it stay public without a per-request path check.
    api = Router(
        path="/",
        # Litestar's middleware types are TypedDict unions; ApiMiddleware takes plain dicts.
        middleware=[DefineMiddleware(cast(Any, ApiMiddleware))],
        response_class=JsonResponse,
        route_handlers=[
            repositories.create_repository,
            repositories.list_repositories,
            repositories.get_repository,
            repositories.delete_repository,
            repositories.set_repository_visibility,
            repositories.list_repo_tags,
            repositories.create_repo_tag,
            repositories.get_repo_tag,
            repositories.update_repo_tag,
            repositories.delete_repo_tag,
            public.list_public_repositories,
            public.get_public_repository,
            public.list_public_repo_tags,
            public.get_public_repo_tag,
            env_vars.list_env_vars,
            env_vars.set_env_vars,
            env_vars.delete_env_var,
            domains.list_domains,
            domains.create_domain,
            domains.get_domain,
            domains.delete_domain,
            deploy.deploy_handler,
            deploy.get_deploy_status,
            images.list_images,
            images.create_image,
            images.get_image_status,
            images.delete_image,
            commit_tags.list_tags,
            commit_tags.create_tag,
            commit_tags.get_tag,
            commit_tags.update_tag,
            commit_tags.delete_tag,
            commits.list_commits,
            commits.list_public_commits,
            commits.update_commit,
            commits.delete_commit,
            commits.list_parent_commits,
            vms.create_new_root_vm,
            vms.list_vms,
            vms.list_vms_plural,
            vms.vm_status,
            vms.get_vm_metadata,
            vms.update_vm_state,
            vms.delete_vm,
            vms.resize_vm_disk,
            vms.label_vm,
            vms.replace_vm_labels,
            vms.delete_vm_label,
            vm_guest.exec_vm_stream_attach,
            vm_guest.vm_logs,
            vm_guest.ssh_key,
            vm_snapshots.commit_vm,
            vm_snapshots.restore_from_commit,
            vm_snapshots.branch_vm,
            vm_snapshots.branch_by_vm,
            vm_snapshots.branch_by_commit,
            vm_snapshots.branch_by_tag,
            vm_snapshots.branch_by_ref,
            vm_snapshots.fork_repository,
            identity.whoami_handler,
            identity.validate_key,
            system.version_handler,
            system.health,
            openapi.openapi_document,
        ],
    )
    # The routes that carry files or stdin take larger bodies than the rest (a path's
    # methods must all be on one router).
    bulk = Router(
        path="/",
        middleware=[DefineMiddleware(cast(Any, ApiMiddleware))],
        response_class=JsonResponse,
        request_max_body_size=settings.max_bulk_body_bytes,
        route_handlers=[
            vm_guest.exec_vm,
            vm_guest.exec_vm_stream,
            vm_guest.read_file_vm,
            vm_guest.write_file_vm,
        ],
    )
    # Uploads of images stream to disk; their size is checked against their own setting.
    uploads = Router(
        path="/",
        middleware=[DefineMiddleware(cast(Any, ApiMiddleware))],
        response_class=JsonResponse,
        request_max_body_size=settings.max_image_upload_bytes,
        route_handlers=[images.upload_image],
    )
    app = Litestar(
        route_handlers=[api, bulk, uploads, docs.swagger_ui_assets()],
        request_class=BodyRequest,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="Orchestrator Control Plane API",
            version=__version__,
            path="/docs",
            render_plugins=[docs.swagger_ui()],
            components=Components(
                security_schemes={
                    "bearer_auth": SecurityScheme(
                        type="http", scheme="bearer", bearer_format="Token"
                    )
                }
            ),
        ),
    )
    return RequestContextMiddleware(app, access_log)
