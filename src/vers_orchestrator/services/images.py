"""Users' images: build jobs, the images they make, and the names `new_root` resolves
(`upstream-semantics-platform.md` §4; `decisions.md`).

Differences from the hosted service, all in `docs/decisions.md`: images belong to the
organization (every key of it lists, uses and deletes them; another organization's are
404); a job's `failed` carries the real reason, with no 120 s rule; names that the hosted
service accepts and then fails to build are refused at once; `description` is kept.

A build runs in the background of the server that accepted it, outside the event loop, at
most `max_image_builds` at once: fetch (registry pull, S3 download or the upload already on
disk), then — unless an image of the same content was built before — unpack and store
through the driver. A restart marks the jobs it cut short failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vers_orchestrator.auth import Principal
from vers_orchestrator.drivers import image_sources, tools
from vers_orchestrator.drivers.base import DriverError, StoredImage, VmDriver
from vers_orchestrator.drivers.base import ImageInUse as DriverImageInUse
from vers_orchestrator.errors import (
    ImageAlreadyExists,
    ImageInUse,
    ImageNotFound,
    InvalidBaseImageId,
    InvalidField,
    InvalidImageName,
    InvalidImageSize,
)
from vers_orchestrator.services.validation import clamp_page, validate_text
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import images as image_store
from vers_orchestrator.store.database import Database, Tx, UniqueViolation, utc_now
from vers_orchestrator.store.images import Image, Job, JobStatus

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "default"
MAX_NAME_BYTES = 128
# What the hosted service's nodes accept in `<key>/<name>` (§4): checked here, at once.
NAME_CHARACTERS = re.compile(r"[A-Za-z0-9._/-]+")
MAX_EXTRA_MIB = 32768
# Listed with every image: a list of 50 must stay small.
MAX_DESCRIPTION_BYTES = 4096
CREATE_DEFAULT_EXTRA_MIB = 256
UPLOAD_DEFAULT_EXTRA_MIB = 512
INTERRUPTED = "the server stopped during the build; create the image again"
INTERNAL = "internal error while building; the server's log has the details"

Fetch = Callable[[Path], image_sources.FetchedImage]


@dataclass(frozen=True, slots=True)
class ImagePage:
    images: list[Image]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class ImageStatus:
    image_name: str
    status: str
    size_mib: int
    error_message: str | None


def check_name(name: str) -> None:
    """Raises InvalidImageName (400): empty, over 128 bytes, or a name the hosted service's
    nodes refuse (characters beyond `A-Za-z0-9._/-`, `..`, `//`, a leading or trailing `/`)."""
    if not name or len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidImageName()
    if not NAME_CHARACTERS.fullmatch(name) or ".." in name or "//" in name:
        raise InvalidImageName()
    if name.startswith("/") or name.endswith("/"):
        raise InvalidImageName()


def check_extra_size(size_mib: int) -> None:
    if not 0 <= size_mib <= MAX_EXTRA_MIB:
        raise InvalidImageSize()


class Images:
    def __init__(
        self,
        db: Database,
        driver: VmDriver,
        settings: Settings,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """`progress` gets each build's stages as "[k/3] …" lines (the CLI's bar); the
        server's log gets them either way."""
        self._db = db
        self._driver = driver
        self._settings = settings
        self._progress = progress
        self._node = settings.vm_node
        self._slots = asyncio.Semaphore(settings.max_image_builds)
        self._builds: set[asyncio.Task[None]] = set()

    # -------------------------------------------------------------- the API's

    async def create(
        self,
        principal: Principal,
        image_name: str,
        source: dict[str, str],
        size_mib: int | None,
        description: str | None,
    ) -> Job:
        """Start building from `source` ({"type": "docker", "image_ref"} or {"type": "s3",
        "bucket", "key"}); returns the job, `creating`. Raises InvalidImageName,
        InvalidImageSize, InvalidField (description too long, a bucket outside
        `s3_buckets`), ImageAlreadyExists (an image or an unfinished job of the name)."""
        extra = CREATE_DEFAULT_EXTRA_MIB if size_mib is None else size_mib
        check_name(image_name)
        check_extra_size(extra)
        validate_text("description", description)  # NUL refused, as every description
        if description is not None and len(description.encode()) > MAX_DESCRIPTION_BYTES:
            raise InvalidField(f"description must be at most {MAX_DESCRIPTION_BYTES} bytes")
        if source["type"] == "docker":
            reference = source["image_ref"]
            fetch: Fetch = lambda work: self._pull(reference, work)  # noqa: E731
        else:
            bucket, key = source["bucket"], source["key"]
            allowed = self._settings.s3_buckets
            if allowed and bucket not in allowed:
                raise InvalidField(f"bucket '{bucket}' is not one this server builds images from")
            fetch = lambda work: self._download(bucket, key, work)  # noqa: E731
        job = await self._start(principal, image_name, source, extra, description)
        self._schedule(job, fetch)
        return job

    async def upload(
        self, principal: Principal, image_name: str, size_mib: int | None, tar: Path
    ) -> Job:
        """Start building from an uploaded tar at `tar` (which becomes the build's: it is
        removed once built or on any error). Raises as `create`."""
        try:
            extra = UPLOAD_DEFAULT_EXTRA_MIB if size_mib is None else size_mib
            check_name(image_name)
            check_extra_size(extra)
            job = await self._start(principal, image_name, {"type": "upload"}, extra, None)
        except BaseException:
            await asyncio.to_thread(tar.unlink, missing_ok=True)
            raise

        def fetch(work: Path) -> image_sources.FetchedImage:
            moved = work / "upload.tar"
            shutil.move(tar, moved)
            return image_sources.tarball(moved)

        self._schedule(job, fetch)
        return job

    def upload_file(self) -> Path:
        """A new empty file for an upload to be written to, where builds work."""
        directory = self._settings.image_builds_dir
        directory.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=directory)
        os.close(handle)
        return Path(name)

    async def list(self, principal: Principal, limit: int | None, offset: int | None) -> ImagePage:
        """The organization's images and public ones, newest first; `limit` and `offset`
        clamped as every paged list's."""
        limit, offset = clamp_page(limit, offset)
        found, total = await self._db.read(
            lambda tx: image_store.list_visible(tx, principal.org_id, limit, offset)
        )
        return ImagePage(found, total, limit, offset)

    async def status(self, principal: Principal, image_name: str) -> ImageStatus:
        """The hosted service's lookup order: the organization's image, else its newest job
        of the name, else a public image; ImageNotFound (404) otherwise."""

        async def find(tx: Tx) -> ImageStatus:
            image = await image_store.image_by_name(tx, principal.org_id, image_name)
            if image is not None:
                return ImageStatus(image_name, JobStatus.COMPLETED, image.size_mib, None)
            job = await image_store.newest_job(tx, principal.org_id, image_name)
            if job is not None:
                return ImageStatus(image_name, job.status, job.size_mib, job.error_message)
            public = await image_store.public_image_by_name(tx, image_name)
            if public is not None:
                return ImageStatus(image_name, JobStatus.COMPLETED, public.size_mib, None)
            raise ImageNotFound()

        return await self._db.read(find)

    async def delete(self, principal: Principal, base_image_id: str) -> tuple[bool, str]:
        """Remove the image and, when no other image shares them, its files; returns whether
        a row went and the id in canonical form. Raises
        InvalidBaseImageId (400), ImageNotFound (404; another organization's too), ImageInUse
        (409) while a VM or commit is made from it."""
        try:
            base_image_id = str(uuid.UUID(base_image_id))
        except ValueError:
            raise InvalidBaseImageId() from None
        image = await self._db.read(lambda tx: image_store.get_image(tx, base_image_id))
        if image is None or image.org_id != principal.org_id:
            raise ImageNotFound()

        # Files first: if they are in use, the row stays and nothing has changed. Files
        # another image of the same content shares stay too.
        shared = await self._db.read(
            lambda tx: image_store.storage_shared(tx, image.storage_key, besides=base_image_id)
        )
        if not shared:
            try:
                await self._driver.delete_image(image.storage_key)
            except DriverImageInUse:
                raise ImageInUse() from None
        deleted = await self._db.write(lambda tx: image_store.delete_image(tx, base_image_id))
        return deleted, base_image_id

    async def resolve(self, principal: Principal, image_name: str) -> StoredImage | None:
        """The stored image `new_root` boots for `image_name`: None for "default", else the
        organization's image of that name, else a public one; ImageNotFound otherwise."""
        if image_name == DEFAULT_IMAGE:
            return None

        async def find(tx: Tx) -> Image | None:
            own = await image_store.image_by_name(tx, principal.org_id, image_name)
            return own or await image_store.public_image_by_name(tx, image_name)

        image = await self._db.read(find)
        if image is None:
            raise ImageNotFound()
        return StoredImage(image.storage_key, image.size_mib)

    # ------------------------------------------------------------- lifecycle

    async def fail_interrupted(self) -> int:
        """At start-up, before serving: this node's jobs that a stop cut short are failed,
        and what their builds and unfinished uploads left on disk goes; returns how many
        jobs."""
        directory = self._settings.image_builds_dir
        if directory.exists():
            for leftover in await asyncio.to_thread(lambda: list(directory.iterdir())):
                if leftover.is_dir() and not leftover.is_symlink():
                    await asyncio.to_thread(shutil.rmtree, leftover, True)
                else:
                    await asyncio.to_thread(leftover.unlink, True)
        return await self._db.write(
            lambda tx: image_store.fail_unfinished_on_node(tx, self._node, INTERRUPTED, utc_now())
        )

    async def close(self) -> None:
        """Stop the builds in progress (their programs killed, so no thread outlives the
        server for long); their jobs are failed at the next start."""
        for task in list(self._builds):
            task.cancel()
        if self._builds:
            tools.stop_all()
        await asyncio.gather(*self._builds, return_exceptions=True)

    async def wait_for_builds(self) -> None:
        """Until every build started so far has ended (the CLI's `images build`)."""
        await asyncio.gather(*self._builds, return_exceptions=True)

    # ---------------------------------------------------------------- builds

    async def _start(
        self,
        principal: Principal,
        image_name: str,
        source: dict[str, str],
        extra: int,
        description: str | None,
    ) -> Job:
        now = utc_now()
        job = Job(
            job_id=str(uuid.uuid4()),
            org_id=principal.org_id,
            owner_id=principal.api_key_id,
            image_name=image_name,
            source_type=source["type"],
            source_config=dict(source),
            size_mib=extra,
            description=description,
            # Handed to this server's builder in the same transaction that records it, as
            # the hosted service marks a job `creating` once a node accepted it.
            status=JobStatus.CREATING,
            error_message=None,
            node=self._node,
            created_at=now,
            updated_at=now,
            completed_at=None,
        )

        async def insert(tx: Tx) -> None:
            taken = image_name == DEFAULT_IMAGE or (
                await image_store.image_by_name(tx, principal.org_id, image_name) is not None
            )
            if taken:
                raise ImageAlreadyExists(image_name)
            await image_store.insert_job(tx, job)

        try:
            await self._db.write(insert)
        except UniqueViolation:  # an unfinished job of the same name
            raise ImageAlreadyExists(image_name) from None
        return job

    def _schedule(self, job: Job, fetch: Fetch) -> None:
        task = asyncio.ensure_future(self._build(job, fetch))
        self._builds.add(task)
        task.add_done_callback(self._builds.discard)

    async def _build(self, job: Job, fetch: Fetch) -> None:
        name = f"{job.image_name} (job {job.job_id})"
        try:
            async with self._slots:
                log.info("image %s: building from %s", name, job.source_config)
                work = await self._work_folder()
                try:
                    stored = await self._make(job, fetch, work)
                    await self._complete(job, stored)
                    log.info("image %s: built, %d MiB", name, stored.size_mib)
                finally:
                    # After the job is complete: the user does not wait for it (measured
                    # at 2 % of a 100 MiB image's build, bench/image_bench.py).
                    await asyncio.to_thread(shutil.rmtree, work, True)
        except DriverError as exc:
            log.warning("image %s: failed: %s", name, exc)
            await self._fail(job, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("image %s: failed", name)
            await self._fail(job, INTERNAL)

    async def _work_folder(self) -> Path:
        directory = self._settings.image_builds_dir
        await asyncio.to_thread(lambda: directory.mkdir(parents=True, exist_ok=True))
        return Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="build-", dir=directory))

    async def _make(self, job: Job, fetch: Fetch, work: Path) -> StoredImage:
        steps: dict[str, float] = {}
        started = time.monotonic()
        self._announce(job, f"[1/3] fetching {_describe(job.source_config)}")
        fetched = await asyncio.to_thread(fetch, work)
        steps["fetch"] = time.monotonic() - started
        key = await self._driver.image_key(fetched.digest, job.size_mib)
        stored = await self._driver.find_image(key)
        if stored is not None:
            log.info("image %s: the same content was built before", job.image_name)
            return stored
        self._announce(job, "[2/3] unpacking")
        tree, config = await asyncio.to_thread(image_sources.unpack, fetched, work)
        steps["unpack"] = time.monotonic() - started - steps["fetch"]
        self._announce(job, "[3/3] laying it over the default image")
        stored = await self._driver.store_image(
            key,
            tree,
            env=config.env,
            workdir=config.workdir,
            size_mib=job.size_mib,
            progress=lambda line: self._announce(job, line),
        )
        steps["filesystem"] = time.monotonic() - started - steps["fetch"] - steps["unpack"]
        # One line per build, read by bench/image_bench.py.
        log.info(
            "image %s: steps %s",
            job.image_name,
            " ".join(f"{step}={seconds:.3f}s" for step, seconds in steps.items()),
        )
        return stored

    def _announce(self, job: Job, line: str) -> None:
        log.info("image %s: %s", job.image_name, line)
        if self._progress is not None:
            self._progress(line)

    def _pull(self, reference: str, work: Path) -> image_sources.FetchedImage:
        settings = self._settings
        return image_sources.pull(
            reference,
            work / "layout",
            auth_file=settings.registry_auth_file,
            insecure_registries=settings.insecure_registries,
        )

    def _download(self, bucket: str, key: str, work: Path) -> image_sources.FetchedImage:
        path = image_sources.download_s3(
            bucket, key, work / "object.tar", endpoint_url=self._settings.s3_endpoint_url
        )
        return image_sources.tarball(path)

    async def _complete(self, job: Job, stored: StoredImage) -> None:
        now = utc_now()
        image = Image(
            base_image_id=str(uuid.uuid4()),
            org_id=job.org_id,
            owner_id=job.owner_id,
            image_name=job.image_name,
            is_public=False,
            source_type=job.source_type,
            source_config=job.source_config,
            size_mib=stored.size_mib,
            description=job.description,
            storage_key=stored.key,
            created_at=now,
        )

        async def record(tx: Tx) -> None:
            await image_store.insert_image(tx, image)
            await image_store.set_job_status(tx, job.job_id, JobStatus.COMPLETED, now)

        await self._db.write(record)

    async def _fail(self, job: Job, reason: str) -> None:
        await self._db.write(
            lambda tx: image_store.set_job_status(
                tx, job.job_id, JobStatus.FAILED, utc_now(), reason
            )
        )


def _describe(source: dict[str, str]) -> str:
    if source["type"] == "docker":
        return source["image_ref"]
    if source["type"] == "s3":
        return f"s3://{source['bucket']}/{source['key']}"
    return "the upload"
