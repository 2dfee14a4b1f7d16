"""`images build-default` and `images build`: guest images from the command line."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

from vers_orchestrator import startup
from vers_orchestrator.cli.common import error, with_database
from vers_orchestrator.settings import Settings
from vers_orchestrator.store.database import Database


def build_default(settings: Settings, args: argparse.Namespace) -> int:
    from vers_orchestrator.console import stage_bar
    from vers_orchestrator.drivers.qemu.images import (
        ImageBuildError,
        build_default_image,
        ensure_default_image,
    )

    build = ensure_default_image if args.if_missing else build_default_image
    try:
        with stage_bar() as progress:
            image = build(settings.effective_images_dir, progress)
    except ImageBuildError as exc:
        error(str(exc))
        return 1
    print(image.directory)
    return 0


def build(settings: Settings, args: argparse.Namespace) -> int:
    """The same build as `POST /api/v1/images/create`, run here with a progress bar, for
    the organization of the key in VERS_API_KEY (as the SDK and the CLI of the hosted
    service read it)."""
    from vers_orchestrator.console import stage_bar
    from vers_orchestrator.drivers import create_driver
    from vers_orchestrator.services.images import Images
    from vers_orchestrator.services.keys import Authenticator

    token = os.environ.get("VERS_API_KEY", "").strip()
    if not token:
        error(
            "set VERS_API_KEY to a key of the organization the image is for"
            " (`vers-orchestrator keys create --org ORG --user USER --format token`)"
        )
        return 2

    async def build(db: Database, progress: Callable[[str], None]) -> tuple[str, int | None]:
        caller = await Authenticator(db, 0).authenticate(f"Bearer {token}")
        driver = create_driver(settings)
        images = Images(db, driver, settings, progress)
        try:
            source = {"type": "docker", "image_ref": args.image_ref}
            await images.create(caller, args.name, source, args.size_mib, None)
            await images.wait_for_builds()
            status = await images.status(caller, args.name)
        finally:
            await images.close()
            await driver.close()
        if status.status != "completed":
            return status.error_message or status.status, None
        return "", status.size_mib

    startup.check_data_dir(settings)
    # The bar says what the build does; the server's INFO lines would only break it up,
    # and a failure is said once, below.
    if settings.log_level != "DEBUG":
        logging.getLogger("vers_orchestrator").setLevel(logging.ERROR)
    with startup.data_dir_lock(settings, exclusive=False), stage_bar() as progress:
        failure, size_mib = with_database(settings, lambda db: build(db, progress))
        if size_mib is not None:
            progress(f"image ready: {args.name}")
    if size_mib is None:
        error(f"building {args.name} failed: {failure}")
        return 1
    print(f"{args.name}: {size_mib} MiB; start VMs from it with vm_config.image_name")
    return 0
