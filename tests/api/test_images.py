"""/api/v1/images: images from a registry (anonymous and behind basic auth), an upload and
S3, built by a real server with real skopeo/umoci/tar against a real registry and a real S3
server started here, used by `new_root` through the official SDK. The API answers are
checked on SQLite and PostgreSQL; VMs boot once, on SQLite."""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from vers_sdk import BadRequestError, NotFoundError
from vers_sdk.client import CreateNewRootVmParams

from tests.factories import in_database
from tests.image_sources import (
    Registry,
    S3Server,
    build_oci_image,
    push,
    rootfs_tarball,
)
from tests.support import (
    IMAGES_DIR,
    VERS_ORCHESTRATOR,
    Backend,
    Key,
    Server,
    error,
    make_key,
    sdk_call,
    shut_down,
    unique_name,
)
from vers_orchestrator.drivers.qemu.images import ensure_default_image
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import images as image_store
from vers_orchestrator.store.database import Database, utc_now

pytestmark = pytest.mark.slow

SLOW_CALL = {"timeout": 240.0}
ROOT_CONFIG = {"vcpu_count": 1, "mem_size_mib": 256}
UPLOAD_LIMIT = 32 * 1024 * 1024
APP_LAYERS: list[dict[str, Any]] = [
    {"/app/hello.txt": "hello from the image\n", "/opt/gone.txt": "removed by the next layer\n"},
    {"/opt/gone.txt": None, "/usr/local/bin/greet": ("#!/bin/sh\necho greetings\n", 0o755)},
    {"/app/data/second.txt": "third layer\n"},
]
APP_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "IMAGE_ONLY": "from the image",
    "SHARED": "image",
}
ROOTFS_FILES = {"/srv/uploaded.txt": "from a tarball\n", "/etc/motd": "not laid over the base's\n"}


@dataclass
class World:
    backend: Backend
    server: Server
    key: Key
    registry: Registry
    private: Registry
    # A registry whose password the server's auth file gets wrong.
    locked: Registry
    s3: S3Server
    work: Path

    def sdk(self, call: Any, key: Key | None = None) -> Any:
        return sdk_call(self.server, (key or self.key).token, call, **SLOW_CALL)

    def client(self, key: Key | None = None) -> httpx.Client:
        client = self.server.client((key or self.key).token)
        client.timeout = httpx.Timeout(240.0)
        return client

    def create(self, name: str, source: dict[str, str], **extra: Any) -> httpx.Response:
        with self.client() as client:
            return client.post(
                "/api/v1/images/create", json={"image_name": name, "source": source, **extra}
            )

    def built(self, name: str, key: Key | None = None, timeout: float = 180) -> Any:
        """The image's status once its build has ended."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.sdk(lambda c: c.get_image_status(name), key)
            if status["status"] in ("completed", "failed") or time.monotonic() > deadline:
                return status
            time.sleep(0.3)

    def docker(self, reference: str) -> dict[str, str]:
        return {"type": "docker", "image_ref": reference}


@pytest.fixture(scope="module")
def world(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ensure_default_image(IMAGES_DIR, lambda line: print(line, file=sys.stderr, flush=True))
    work = tmp_path_factory.mktemp("images")
    registry = Registry(work / "registry").start()
    private = Registry(work / "private", username="team", password="s3cret").start()
    locked = Registry(work / "locked", username="team", password="right").start()
    s3 = S3Server(work / "s3").start()
    try:
        build_oci_image(work / "app", APP_LAYERS, env=APP_ENV, workdir="/app")
        push(work / "app", registry, "team/app:1")
        push(work / "app", private, "team/app:1", auth=private.credentials)
        push(work / "app", locked, "team/app:1", auth=locked.credentials)
        auth_file = work / "auth.json"
        private.write_auth_file(auth_file)
        # One file for both: the locked registry's entry has the wrong password.
        wrong = work / "wrong.json"
        locked.write_auth_file(wrong, password="wrong")
        _merge_auth_files(auth_file, wrong)
        rootfs_tarball(work / "rootfs.tar.gz", ROOTFS_FILES, compression="gz")
        s3.put_object("images", "rootfs.tar.gz", (work / "rootfs.tar.gz").read_bytes())
        created = Backend.create(
            backend.kind,
            work / "backend",
            INSECURE_REGISTRIES=f"{registry.host},{private.host},{locked.host}",
            REGISTRY_AUTH_FILE=str(auth_file),
            MAX_IMAGE_UPLOAD_BYTES=str(UPLOAD_LIMIT),
            MAX_IMAGE_BUILDS="2",
            S3_BUCKETS="images,no-such-bucket",
            # Relative, as `./data` is by default: disk layers must still name images
            # absolutely (the server runs in this process's working directory).
            IMAGES_DIR=os.path.relpath(IMAGES_DIR),
        )
        created.env.update(s3.environment())
        server = Server(created, work / "server.log").start()
    except BaseException:
        for component in (registry, private, locked, s3):
            component.stop()
        raise
    world = World(created, server, make_key(created), registry, private, locked, s3, work)
    try:
        yield world
    finally:
        try:
            leftovers = shut_down(server, created, world.key.token)
        finally:
            for component in (registry, private, locked, s3):
                component.stop()
        assert leftovers == [], "VMs outlived the module"


def _merge_auth_files(into: Path, other: Path) -> None:
    merged = json.loads(into.read_text())
    merged["auths"].update(json.loads(other.read_text())["auths"])
    into.write_text(json.dumps(merged))


def _only_on_sqlite(world: World) -> None:
    if world.backend.kind != "sqlite":
        pytest.skip("VMs boot once, on SQLite; the API answers are checked on both")


# ------------------------------------------------------------------------ builds


class TestBuilds:
    def test_a_registry_image_builds_and_is_listed(self, world: World) -> None:
        name = unique_name("app")
        reference = f"{world.registry.host}/team/app:1"
        started = world.sdk(
            lambda c: c.create_image(
                {"image_name": name, "source": world.docker(reference), "description": "ours"}
            )
        )
        assert started == {"job_id": started["job_id"], "image_name": name, "status": "creating"}
        uuid.UUID(started["job_id"])
        status = world.built(name)
        assert status == {
            "image_name": name,
            "status": "completed",
            "size_mib": status["size_mib"],
            "error_message": None,
        }
        # The default base, the image's files and 256 MiB free, with ext4's own needs.
        assert 256 + 140 <= status["size_mib"] <= 256 + 400
        listed = world.sdk(lambda c: c.list_images())
        [info] = [image for image in listed["images"] if image["image_name"] == name]
        assert info == {
            "base_image_id": info["base_image_id"],
            "image_name": name,
            "owner_id": world.key.api_key_id,
            "is_public": False,
            "source_type": "docker",
            "size_mib": status["size_mib"],
            "description": "ours",
            "created_at": info["created_at"],
        }
        assert info["created_at"].endswith("+00:00")
        assert (listed["limit"], listed["offset"]) == (50, 0)

    def test_a_name_with_slashes_is_one_path_segment(self, world: World) -> None:
        name = f"team/{unique_name('app')}"
        made = world.create(name, world.docker(f"{world.registry.host}/team/app:1"))
        assert made.status_code == 201
        path = f"/api/v1/images/{name.replace('/', '%2F')}/status"
        with world.client() as client:
            for _ in range(600):
                status = client.get(path)
                if status.json().get("status") != "creating":
                    break
                time.sleep(0.2)
        assert (status.status_code, status.json()["image_name"]) == (200, name)
        assert status.json()["status"] == "completed"

    def test_a_private_registry_with_the_auth_file(self, world: World) -> None:
        name = unique_name("private")
        made = world.create(name, world.docker(f"{world.private.host}/team/app:1"))
        assert made.status_code == 201
        assert world.built(name)["status"] == "completed"

    def test_the_same_content_is_stored_once(self, world: World) -> None:
        reference = world.docker(f"{world.registry.host}/team/app:1")
        first, second = unique_name("same"), unique_name("same")
        for name in (first, second):
            assert world.create(name, reference, size_mib=100).status_code == 201
        assert world.built(first)["status"] == world.built(second)["status"] == "completed"
        assert world.built(first)["size_mib"] == world.built(second)["size_mib"]
        stored = _stored_images()
        third = unique_name("same")
        assert world.create(third, reference, size_mib=100).status_code == 201
        assert world.built(third)["status"] == "completed"
        assert _stored_images() == stored

    def test_an_s3_object(self, world: World) -> None:
        name = unique_name("s3")
        source = {"type": "s3", "bucket": "images", "key": "rootfs.tar.gz"}
        assert world.create(name, source, size_mib=0).status_code == 201
        status = world.built(name)
        assert (status["status"], status["error_message"]) == ("completed", None)

    def test_an_upload_as_multipart_and_as_a_raw_tar(self, world: World) -> None:
        tar = (world.work / "rootfs.tar.gz").read_bytes()
        form, raw = unique_name("form"), unique_name("raw")
        with world.client() as client:
            by_form = client.post(
                "/api/v1/images/upload",
                params={"image_name": form, "size_mib": "64"},
                files={"other": ("x.txt", b"skipped"), "tarball": ("rootfs.tar.gz", tar)},
            )
            by_body = client.post(
                "/api/v1/images/upload",
                params={"image_name": raw},
                content=_zstd(gzip.decompress(tar)),
                headers={"Content-Type": "application/x-tar"},
            )
        for response, name in ((by_form, form), (by_body, raw)):
            assert response.status_code == 201, response.text
            assert response.json() == {
                "job_id": response.json()["job_id"],
                "image_name": name,
                "status": "creating",
            }
            status = world.built(name)
            assert (status["status"], status["error_message"]) == ("completed", None)
        with world.client() as client:
            listed = client.get("/api/v1/images", params={"limit": 1000}).json()["images"]
        assert {
            i["image_name"]: i["source_type"] for i in listed if i["image_name"] in (form, raw)
        } == {
            form: "upload",
            raw: "upload",
        }


def _stored_images() -> set[str]:
    return {path.name for path in (IMAGES_DIR / "built").iterdir() if not path.name.startswith(".")}


def _zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


class TestFailures:
    """A build that fails says why, in the words of the tool that failed."""

    @pytest.mark.parametrize(
        ("reference", "reason"),
        [
            ("{registry}/team/app:missing", "manifest unknown"),
            ("{registry}/team/nothing:1", "manifest unknown"),
            ("{locked}/team/app:1", "unauthorized: authentication required"),
            ("127.0.0.1:9/team/app:1", "connection refused"),
            ("bad reference", "invalid image reference: 'bad reference'"),
            ("-oops", "invalid image reference: '-oops'"),
        ],
    )
    def test_registry_failures(self, world: World, reference: str, reason: str) -> None:
        name = unique_name("broken")
        filled = reference.format(registry=world.registry.host, locked=world.locked.host)
        assert world.create(name, world.docker(filled)).status_code == 201
        status = world.built(name)
        assert (status["status"], status["size_mib"]) == ("failed", 256)
        assert reason in status["error_message"], status

    def test_s3_failures(self, world: World) -> None:
        missing, bucketless = unique_name("s3"), unique_name("s3")
        world.create(missing, {"type": "s3", "bucket": "images", "key": "nope.tar"})
        world.create(bucketless, {"type": "s3", "bucket": "no-such-bucket", "key": "x.tar"})
        assert world.built(missing)["error_message"] == (
            "downloading s3://images/nope.tar: no such object"
        )
        assert world.built(bucketless)["error_message"] == (
            "downloading s3://no-such-bucket/x.tar: no such bucket"
        )

    def test_a_tarball_whose_files_would_not_fit(self, world: World) -> None:
        # 10 KB of archive, 100 GiB of (sparse) file: refused from its listing, before a
        # byte is written.
        sparse = world.work / "sparse"
        (sparse / "opt").mkdir(parents=True)
        with open(sparse / "opt" / "huge", "wb") as file:
            file.truncate(100 << 30)
        tar = world.work / "bomb.tar.gz"
        subprocess.run(["tar", "--sparse", "-C", str(sparse), "-czf", str(tar), "opt"], check=True)
        assert tar.stat().st_size < 100_000
        name = unique_name("bomb")
        with world.client() as client:
            sent = client.post(
                "/api/v1/images/upload", params={"image_name": name}, content=tar.read_bytes()
            )
        assert sent.status_code == 201
        status = world.built(name)
        assert (status["status"], status["error_message"]) == (
            "failed",
            "the tarball holds 102400 MiB of files, more than 65536",
        )

    def test_many_small_files_have_inodes_enough(self, world: World) -> None:
        name = unique_name("many")
        tar = world.work / f"{name}.tar.gz"
        with tarfile.open(tar, "w:gz") as archive:
            for number in range(60_000):
                entry = tarfile.TarInfo(f"app/node_modules/m{number % 300}/f{number}.js")
                entry.size = 1
                archive.addfile(entry, io.BytesIO(b"x"))
        with world.client() as client:
            sent = client.post(
                "/api/v1/images/upload", params={"image_name": name}, content=tar.read_bytes()
            )
        assert sent.status_code == 201
        status = world.built(name)
        assert (status["status"], status["error_message"]) == ("completed", None)

    def test_only_the_servers_buckets(self, world: World) -> None:
        source = {"type": "s3", "bucket": "someone-elses", "key": "rootfs.tar.gz"}
        refused = world.create(unique_name("s3"), source)
        assert (refused.status_code, refused.json()) == (
            400,
            error("bucket 'someone-elses' is not one this server builds images from"),
        )

    def test_a_corrupt_tarball(self, world: World) -> None:
        name = unique_name("corrupt")
        tar = (world.work / "rootfs.tar.gz").read_bytes()
        with world.client() as client:
            response = client.post(
                "/api/v1/images/upload", params={"image_name": name}, content=tar[: len(tar) // 2]
            )
        assert response.status_code == 201
        status = world.built(name)
        assert status["status"] == "failed"
        assert status["error_message"].startswith("reading the tarball: ")
        assert "Unexpected EOF" in status["error_message"] or "gzip" in status["error_message"]

    def test_a_failed_name_can_be_used_again(self, world: World) -> None:
        name = unique_name("again")
        world.create(name, world.docker(f"{world.registry.host}/team/app:missing"))
        assert world.built(name)["status"] == "failed"
        assert (
            world.create(name, world.docker(f"{world.registry.host}/team/app:1")).status_code == 201
        )
        assert world.built(name)["status"] == "completed"


# -------------------------------------------------------------------- validation


class TestValidation:
    @pytest.mark.parametrize(
        "name", ["", "x" * 129, "a b", "../up", "a//b", "/lead", "trail/", "é"]
    )
    def test_invalid_names(self, world: World, name: str) -> None:
        response = world.create(name, world.docker("busybox"))
        assert (response.status_code, response.json()) == (400, error("invalid image name"))

    @pytest.mark.parametrize("size", [-1, 32769])
    def test_invalid_sizes(self, world: World, size: int) -> None:
        response = world.create(unique_name("size"), world.docker("busybox"), size_mib=size)
        assert (response.status_code, response.json()) == (
            400,
            error("invalid additional capacity: must be between 0 MiB and 32768 MiB"),
        )

    def test_a_name_taken_by_an_image_a_build_or_default(self, world: World) -> None:
        name = unique_name("taken")
        reference = world.docker(f"{world.registry.host}/team/app:1")
        assert world.create(name, reference).status_code == 201
        # While building and once built alike.
        for _ in range(2):
            again = world.create(name, reference)
            assert (again.status_code, again.json()) == (
                409,
                error(f"image name already exists: {name}"),
            )
            world.built(name)
        default = world.create("default", reference)
        assert (default.status_code, default.json()) == (
            409,
            error("image name already exists: default"),
        )

    @pytest.mark.parametrize(
        "source", [{"type": "upload"}, {"type": "docker"}, {"type": "s3", "bucket": "b"}, None]
    )
    def test_a_source_the_contract_does_not_have_is_422(
        self, world: World, source: dict[str, str] | None
    ) -> None:
        with world.client() as client:
            body = {"image_name": unique_name("t"), "source": source}
            response = client.post("/api/v1/images/create", json=body)
        assert response.status_code == 422
        assert response.json()["error"].startswith(
            "Failed to deserialize the JSON body into the target type: "
        )

    def test_a_description_is_at_most_4096_bytes(self, world: World) -> None:
        source = world.docker(f"{world.registry.host}/team/app:1")
        long = world.create(unique_name("d"), source, description="é" * 2049)
        assert (long.status_code, long.json()) == (
            400,
            error("description must be at most 4096 bytes"),
        )
        # PostgreSQL cannot store NUL in text: refused like every description.
        nul = world.create(unique_name("d"), source, description="a\x00b")
        assert (nul.status_code, nul.json()) == (
            400,
            error("description must not contain NUL characters"),
        )

    def test_status_and_delete_of_what_does_not_exist(self, world: World) -> None:
        with pytest.raises(NotFoundError) as missing:
            world.sdk(lambda c: c.get_image_status(unique_name("none")))
        assert missing.value.body == error("image not found")
        with world.client() as client:
            bad = client.delete("/api/v1/images/images/not-a-uuid")
            unknown = client.delete(f"/api/v1/images/images/{uuid.uuid4()}")
        assert (bad.status_code, bad.json()) == (400, error("Invalid base_image_id format"))
        assert (unknown.status_code, unknown.json()) == (404, error("image not found"))

    def test_the_sdks_upload_is_told_what_to_send(self, world: World) -> None:
        with pytest.raises(BadRequestError) as refused:
            world.sdk(lambda c: c.upload_image({"image_name": "x"}))
        assert refused.value.body["error"].startswith("upload a tar of a whole root filesystem")

    def test_upload_refusals(self, world: World) -> None:
        with world.client() as client:
            nameless = client.post("/api/v1/images/upload", content=b"x")
            fieldless = client.post(
                "/api/v1/images/upload",
                params={"image_name": unique_name("u")},
                files={"other": ("x", b"x")},
            )
            too_large = client.post(
                "/api/v1/images/upload",
                params={"image_name": unique_name("u")},
                content=b"\0" * (UPLOAD_LIMIT + 1),
            )
            bad_name = client.post(
                "/api/v1/images/upload", params={"image_name": "a b"}, content=b"x"
            )
            bad_size = client.post(
                "/api/v1/images/upload", params={"image_name": "ok", "size_mib": "x"}
            )
            long_size = client.post(
                "/api/v1/images/upload", params={"image_name": "ok", "size_mib": "9" * 5000}
            )
            many_parts = client.post(
                "/api/v1/images/upload",
                params={"image_name": unique_name("u")},
                files=[(f"part{n}", ("x", b"x")) for n in range(1001)],
            )
        assert (nameless.status_code, nameless.json()) == (
            400,
            error("Failed to deserialize query string: missing field `image_name`"),
        )
        assert (fieldless.status_code, fieldless.json()) == (
            400,
            error("No file field found in upload. Use field name 'file' or 'tarball'."),
        )
        assert (too_large.status_code, too_large.json()) == (
            413,
            error(f"the upload is larger than {UPLOAD_LIMIT} bytes"),
        )
        assert (bad_name.status_code, bad_name.json()) == (400, error("invalid image name"))
        for refused in (bad_size, long_size):
            assert refused.status_code == 400
            assert refused.json()["error"].startswith("Failed to deserialize query string")
        assert many_parts.status_code == 400
        assert many_parts.json()["error"].startswith("Failed to read upload: ")
        # Nothing refused is left on disk.
        uploads = world.backend.env["VERS_ORCHESTRATOR_DATA_DIR"]
        assert list(Path(uploads, "image-builds").glob("upload-*")) == []


# ---------------------------------------------------------------- organizations


class TestOrganizations:
    def test_every_key_of_the_organization_shares_images_no_one_else_sees_them(
        self, world: World
    ) -> None:
        name = unique_name("shared")
        world.create(name, world.docker(f"{world.registry.host}/team/app:1"))
        assert world.built(name)["status"] == "completed"
        colleague = make_key(world.backend, org=world.key.org_name)
        stranger = make_key(world.backend)
        assert world.built(name, colleague)["status"] == "completed"
        listed = world.sdk(lambda c: c.list_images(), colleague)
        [image] = [i for i in listed["images"] if i["image_name"] == name]
        assert world.sdk(lambda c: c.list_images(), stranger) == {
            "images": [],
            "total": 0,
            "limit": 50,
            "offset": 0,
        }
        with pytest.raises(NotFoundError):
            world.sdk(lambda c: c.get_image_status(name), stranger)
        with world.client(stranger) as client:
            theirs = client.delete(f"/api/v1/images/images/{image['base_image_id']}")
            boot = client.post("/api/v1/vm/new_root", json={"vm_config": {"image_name": name}})
        assert (theirs.status_code, theirs.json()) == (404, error("image not found"))
        assert (boot.status_code, boot.json()) == (404, error("image not found"))
        # The colleague may delete it; afterwards its last job still answers completed.
        deleted = world.sdk(lambda c: c.delete_image(image["base_image_id"]), colleague)
        assert deleted == {"deleted": True, "base_image_id": image["base_image_id"]}
        assert world.built(name)["status"] == "completed"


# -------------------------------------------------------------------------- VMs


class TestVms:
    def test_a_vm_from_a_registry_image(self, world: World) -> None:
        _only_on_sqlite(world)
        name = unique_name("vm")
        world.create(name, world.docker(f"{world.registry.host}/team/app:1"))
        assert world.built(name)["status"] == "completed"
        with world.client() as client:
            put = client.put(
                "/api/v1/env_vars", json={"vars": {"USER_VAR": "mine", "SHARED": "user"}}
            )
            assert put.status_code == 200
        vm = world.sdk(
            lambda c: c.create_new_root_vm(
                {"vm_config": {**ROOT_CONFIG, "image_name": name}},
                CreateNewRootVmParams(wait_boot=True),
            )
        )["vm_id"]
        script = (
            "pwd; cat hello.txt data/second.txt; greet; ls /opt;"
            " echo $IMAGE_ONLY/$SHARED/$USER_VAR; command -v python3"
        )
        result = world.sdk(lambda c: c.exec_vm(vm, {"command": ["sh", "-c", script]}))
        assert (result["exit_code"], result["stderr"]) == (0, "")
        assert result["stdout"] == (
            "/app\nhello from the image\nthird layer\ngreetings\n"
            "from the image/user/mine\n/usr/bin/python3\n"
        )
        # The exec's own env and working directory win over the image's.
        own = world.sdk(
            lambda c: c.exec_vm(
                vm,
                {
                    "command": ["sh", "-c", "pwd; echo $SHARED"],
                    "env": {"SHARED": "request"},
                    "working_dir": "/tmp",
                },
            )
        )
        assert own["stdout"] == "/tmp\nrequest\n"
        world.sdk(lambda c: c.delete_vm(vm))

    def test_vms_from_an_upload_and_from_s3(self, world: World) -> None:
        _only_on_sqlite(world)
        upload, s3 = unique_name("up"), unique_name("s3")
        with world.client() as client:
            sent = client.post(
                "/api/v1/images/upload",
                params={"image_name": upload},
                files={"file": ("rootfs.tar.gz", (world.work / "rootfs.tar.gz").read_bytes())},
            )
        assert sent.status_code == 201
        world.create(s3, {"type": "s3", "bucket": "images", "key": "rootfs.tar.gz"})
        for name in (upload, s3):
            assert world.built(name)["status"] == "completed"
            vm = world.sdk(
                lambda c, name=name: c.create_new_root_vm(
                    {"vm_config": {**ROOT_CONFIG, "image_name": name}},
                    CreateNewRootVmParams(wait_boot=True),
                )
            )["vm_id"]
            result = world.sdk(
                lambda c, vm=vm: c.exec_vm(
                    vm,
                    {
                        "command": [
                            "sh",
                            "-c",
                            "cat /srv/uploaded.txt; pwd; grep -c . /etc/motd || :",
                        ]
                    },
                )
            )
            # The base's own /etc/motd stays (its files win, as on the hosted service).
            assert result["stdout"].startswith("from a tarball\n/root\n"), result
            assert (
                "not laid over"
                not in world.sdk(lambda c, vm=vm: c.exec_vm(vm, {"command": ["cat", "/etc/motd"]}))[
                    "stdout"
                ]
            )
            world.sdk(lambda c, vm=vm: c.delete_vm(vm))

    def test_an_image_keeps_the_bases_modes_owners_and_special_bits(self, world: World) -> None:
        _only_on_sqlite(world)
        name = unique_name("modes")
        tar = world.work / f"{name}.tar"
        with tarfile.open(tar, "w") as archive:
            # Directories the base has, with other modes and owners; a setuid file.
            for path, mode, uid in (("etc", 0o777, 1000), ("tmp", 0o700, 1000), ("opt", 0o700, 7)):
                entry = tarfile.TarInfo(path)
                entry.type, entry.mode, entry.uid, entry.gid = tarfile.DIRTYPE, mode, uid, uid
                archive.addfile(entry)
            program = tarfile.TarInfo("srv/setuid-program")
            program.mode, program.size = 0o4755, 3
            archive.addfile(program, io.BytesIO(b"#!\n"))
        with world.client() as client:
            sent = client.post(
                "/api/v1/images/upload", params={"image_name": name}, content=tar.read_bytes()
            )
        assert sent.status_code == 201
        assert world.built(name)["status"] == "completed"
        # Builds are closed to the host's other users: they hold setuid files.
        for folder in ("built", "base-trees"):
            assert stat.S_IMODE((IMAGES_DIR / folder).stat().st_mode) == 0o700
        vm = world.sdk(
            lambda c: c.create_new_root_vm(
                {"vm_config": {**ROOT_CONFIG, "image_name": name}},
                CreateNewRootVmParams(wait_boot=True),
            )
        )["vm_id"]
        script = "stat -c '%n %a %u' /etc /tmp /opt /usr/bin/su /usr/bin/passwd /srv/setuid-program"
        result = world.sdk(lambda c: c.exec_vm(vm, {"command": ["sh", "-c", script]}))
        assert result["stdout"] == (
            "/etc 755 0\n/tmp 1777 0\n/opt 755 0\n/usr/bin/su 4755 0\n"
            "/usr/bin/passwd 4755 0\n/srv/setuid-program 4755 0\n"
        ), result
        world.sdk(lambda c: c.delete_vm(vm))

    def test_an_image_in_use_by_a_vm_or_a_commit_is_not_deleted(self, world: World) -> None:
        _only_on_sqlite(world)
        name = unique_name("used")
        world.create(name, world.docker(f"{world.registry.host}/team/app:1"), size_mib=32)
        assert world.built(name)["status"] == "completed"
        [image] = [
            i for i in world.sdk(lambda c: c.list_images())["images"] if i["image_name"] == name
        ]
        image_id = image["base_image_id"]
        vm = world.sdk(
            lambda c: c.create_new_root_vm(
                {"vm_config": {**ROOT_CONFIG, "image_name": name}},
                CreateNewRootVmParams(wait_boot=True),
            )
        )["vm_id"]
        commit = world.sdk(lambda c: c.commit_vm(vm, {}))["commit_id"]
        with world.client() as client:
            while_running = client.delete(f"/api/v1/images/images/{image_id}")
            assert client.delete(f"/api/v1/vm/{vm}").status_code == 200
            while_committed = client.delete(f"/api/v1/images/images/{image_id}")
            assert client.delete(f"/api/v1/commits/{commit}").status_code in (200, 204)
            after = client.delete(f"/api/v1/images/images/{image_id}")
            again = client.delete(f"/api/v1/images/images/{image_id}")
        for refused in (while_running, while_committed):
            assert (refused.status_code, refused.json()) == (409, error("image is in use by VMs"))
        assert (after.status_code, after.json()) == (
            200,
            {"deleted": True, "base_image_id": image_id},
        )
        assert (again.status_code, again.json()) == (404, error("image not found"))

    def test_a_disk_smaller_than_the_image_is_refused(self, world: World) -> None:
        name = unique_name("small")
        world.create(name, world.docker(f"{world.registry.host}/team/app:1"))
        size = world.built(name)["size_mib"]
        with world.client() as client:
            response = client.post(
                "/api/v1/vm/new_root",
                json={"vm_config": {**ROOT_CONFIG, "image_name": name, "fs_size_mib": size - 1}},
            )
        assert (response.status_code, response.json()) == (
            400,
            error(f"fs_size_mib must be at least {size} for image {name!r} (its file system)"),
        )


# ------------------------------------------------------------------- restarts


def test_a_build_cut_short_by_a_stop_is_failed_at_start_up(world: World) -> None:
    node = Settings.from_env(world.backend.env).vm_node
    now = utc_now()
    job = image_store.Job(
        job_id=str(uuid.uuid4()),
        org_id=world.key.org_id,
        owner_id=world.key.api_key_id,
        image_name=unique_name("cut"),
        source_type="docker",
        source_config={"type": "docker", "image_ref": "busybox"},
        size_mib=256,
        description=None,
        status=image_store.JobStatus.CREATING,
        error_message=None,
        node=node,
        created_at=now,
        updated_at=now,
        completed_at=None,
    )

    async def insert(db: Database) -> None:
        await db.write(lambda tx: image_store.insert_job(tx, job))

    in_database(world.backend, insert)
    assert world.built(job.image_name, timeout=0)["status"] == "creating"
    world.server.stop()
    # What a build and an upload cut short leave.
    builds = Path(world.backend.env["VERS_ORCHESTRATOR_DATA_DIR"], "image-builds")
    (builds / "build-cut" / "layout").mkdir(parents=True)
    (builds / "upload-cut.tar").write_bytes(b"half")
    # A staging folder of a build cut short, and one of another server building now (the
    # images folder is shared): only the first goes.
    cut = IMAGES_DIR / "built" / f".{'0' * 64}.partial-cut"
    building = IMAGES_DIR / "built" / f".{'1' * 64}.partial-building"
    cut.mkdir()
    building.mkdir()
    held = os.open(building, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        world.server.start()
        assert (cut.exists(), building.exists()) == (False, True)
    finally:
        os.close(held)
        building.rmdir()
    assert list(builds.iterdir()) == []
    assert world.built(job.image_name, timeout=0) == {
        "image_name": job.image_name,
        "status": "failed",
        "size_mib": 256,
        "error_message": "the server stopped during the build; create the image again",
    }


class TestCli:
    def run(self, world: World, *args: str, key: Key | None = None) -> Any:
        env = {**world.backend.env, "VERS_API_KEY": key.token if key else ""}
        return subprocess.run(
            [VERS_ORCHESTRATOR, "images", "build", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def test_images_build_for_the_keys_organization(self, world: World) -> None:
        name = unique_name("cli")
        done = self.run(world, f"{world.registry.host}/team/app:1", "--name", name, key=world.key)
        assert done.returncode == 0, done.stderr
        status = world.built(name)
        assert status["status"] == "completed"
        assert done.stdout == (
            f"{name}: {status['size_mib']} MiB; start VMs from it with vm_config.image_name\n"
        )

    def test_a_failed_build_and_a_missing_key(self, world: World) -> None:
        name = unique_name("cli")
        missing = f"{world.registry.host}/team/app:missing"
        failed = self.run(world, missing, "--name", name, key=world.key)
        assert failed.returncode == 1
        assert failed.stderr.splitlines()[-1] == (
            f"vers-orchestrator: error: building {name} failed: pulling {missing}:"
            f" initializing source docker://{missing}: reading manifest missing in"
            f" {world.registry.host}/team/app: manifest unknown: manifest unknown"
        )
        keyless = self.run(world, missing, "--name", name)
        assert (keyless.returncode, keyless.stdout) == (2, "")
        assert keyless.stderr.startswith("vers-orchestrator: error: set VERS_API_KEY")


def test_a_stop_during_a_build_ends_it_at_once(world: World) -> None:
    # A registry that accepts connections and never answers: the pull hangs.
    with socket.create_server(("127.0.0.1", 0)) as tarpit:
        name = unique_name("hung")
        reference = f"127.0.0.1:{tarpit.getsockname()[1]}/team/app:1"
        assert world.create(name, world.docker(reference)).status_code == 201
        time.sleep(1)  # skopeo is waiting for the registry
        started = time.monotonic()
        world.server.stop()
        stopped_in = time.monotonic() - started
    world.server.start()
    assert stopped_in < 5, stopped_in
    status = world.built(name, timeout=0)
    assert (status["status"], status["error_message"]) == (
        "failed",
        "the server stopped during the build; create the image again",
    )
