"""Where the files of a user's image come from: an OCI/Docker registry, an S3 object or an
uploaded tarball, fetched and unpacked into a plain directory tree by well-kept tools.

- Registry images are pulled with `skopeo copy` into an OCI image layout and unpacked with
  `umoci unpack`, which applies layers and whiteouts as the OCI image spec says.
- Tarballs (S3 objects, uploads) are a whole root filesystem, optionally gzip/xz/zstd
  compressed, extracted by GNU tar (which finds the compression itself and refuses `..`
  and absolute member names).

Every step is blocking (run it in a thread) and raises `ImageSourceError` or
`tools.ToolError`, whose message is the reason a user reads in the job's `error_message`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vers_orchestrator.drivers import tools
from vers_orchestrator.drivers.base import DriverError

# The tag skopeo gives the pulled image inside its layout.
LAYOUT_TAG = "latest"
# The parts of a reference: [registry[:port]/]path[:tag][@digest] (distribution's grammar,
# loosely: skopeo checks the rest and its message is passed on).
REFERENCE = re.compile(r"^[a-z0-9][a-z0-9._:/@+-]*$", re.IGNORECASE)
# What a tarball may unpack to: the hosted service's largest filesystem (§4).
MAX_UNPACKED_BYTES = 65536 << 20
COPIES_WHILE_BUILDING = 3
# Left free for the database, VM layers and everything else on the disk.
RESERVED_DISK_BYTES = 1 << 30
RESERVED_INODES = 100_000
SKOPEO_MESSAGE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
DIGEST_CHUNK = 1 << 20


class ImageSourceError(DriverError):
    """The image's files could not be fetched or unpacked; the message says why."""


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What an OCI image says about how its programs run (its `config.Env` and
    `config.WorkingDir`); empty for tarballs."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """A source on local disk: an OCI layout (`kind` "oci") or a tar file ("tar").
    `digest` ("sha256:<hex>") names its content: the manifest's for OCI, the file's for tar."""

    kind: str
    path: Path
    digest: str


def registry_of(reference: str) -> str:
    """The registry host[:port] a reference names; Docker Hub for bare names (`python:3.12`,
    `team/app`), as Docker reads them: the first component is a registry when it has a `.`
    or a `:` or is `localhost`."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def check_reference(reference: str) -> None:
    """Raises ImageSourceError for what can never be a reference (spaces, control
    characters, a leading `-`), before a tool sees it."""
    if not REFERENCE.fullmatch(reference) or len(reference) > 512:
        raise ImageSourceError(f"invalid image reference: {reference!r}")


def pull(
    reference: str,
    destination: Path,
    *,
    auth_file: Path | None,
    insecure_registries: frozenset[str],
) -> FetchedImage:
    """Pull `reference` into an OCI layout at `destination` (which must not exist) with
    `skopeo copy`; credentials from `auth_file` (containers-style `auth.json`), plain HTTP for
    registries in `insecure_registries` ("host:port"), linux/amd64 from multi-platform images.
    Raises ImageSourceError with skopeo's reason (manifest unknown, unauthorized, connection
    refused …)."""
    check_reference(reference)
    command = ["skopeo", "--override-os", "linux", "--override-arch", "amd64", "copy", "-q"]
    if auth_file is not None:
        command += ["--src-authfile", str(auth_file)]
    if registry_of(reference) in insecure_registries:
        command.append("--src-tls-verify=false")
    command += [f"docker://{reference}", f"oci:{destination}:{LAYOUT_TAG}"]
    tools.run(command, f"pulling {reference}", explain=_reason)
    manifest = _manifest_descriptor(destination)
    return FetchedImage("oci", destination, str(manifest["digest"]))


def download_s3(bucket: str, key: str, destination: Path, *, endpoint_url: str | None) -> Path:
    """Download s3://bucket/key to `destination` with boto3 (region and credentials from
    its standard AWS_* settings; `endpoint_url` for any S3-compatible store). Raises
    ImageSourceError: no such bucket or key, access denied, endpoint unreachable."""
    import boto3  # slow to import; only builds need it
    import botocore.exceptions

    where = f"s3://{bucket}/{key}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint_url)
        client.download_file(bucket, key, str(destination))
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("404", "NoSuchKey"):
            # download_file asks HEAD of the object, whose 404 does not say which is missing.
            missing = "bucket" if not _bucket_exists(client, bucket) else "object"
            raise ImageSourceError(f"downloading {where}: no such {missing}") from exc
        if code == "NoSuchBucket":
            raise ImageSourceError(f"downloading {where}: no such bucket") from exc
        if code in ("403", "AccessDenied"):
            raise ImageSourceError(f"downloading {where}: access denied") from exc
        raise ImageSourceError(f"downloading {where}: {error.get('Message') or exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise ImageSourceError(f"downloading {where}: {exc}") from exc
    except OSError as exc:
        raise ImageSourceError(f"downloading {where}: {exc.strerror or exc}") from exc
    return destination


def _bucket_exists(client: Any, bucket: str) -> bool:
    import botocore.exceptions

    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code", "")) not in ("404", "NoSuchBucket")
    return True


def tarball(path: Path) -> FetchedImage:
    """A tar file on disk, named by its SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(DIGEST_CHUNK):
            digest.update(chunk)
    return FetchedImage("tar", path, f"sha256:{digest.hexdigest()}")


def unpack(fetched: FetchedImage, work: Path) -> tuple[Path, ImageConfig]:
    """Unpack into a new directory under `work`; returns the root filesystem's directory
    and the image's config. Raises ImageSourceError (tar not valid, layer corrupt …)."""
    if fetched.kind == "oci":
        bundle = work / "bundle"
        tools.run(
            ["umoci", "unpack", "--image", f"{fetched.path}:{LAYOUT_TAG}", str(bundle)],
            "unpacking the image",
            explain=_reason,
        )
        return bundle / "rootfs", _oci_config(fetched.path)
    check_room(fetched.path, work)
    tree = work / "rootfs"
    tree.mkdir()
    tools.run(
        [
            "tar", "-x", "-f", str(fetched.path), "-C", str(tree),
            "--numeric-owner", "--same-owner", "--same-permissions",
            "--xattrs", "--xattrs-include=*", "--no-overwrite-dir",
        ],
        "unpacking the tarball",
        explain=_reason,
    )  # fmt: skip
    return tree, ImageConfig()


def check_room(tarball: Path, work: Path) -> None:
    """Refuse a tarball whose files would not fit: a 4 MB gzip can hold 4 GB of zeros and a
    700 KB xz a million files, and a build holds its files about three times at once
    (unpacked, laid over the base, in the filesystem). Reads the archive's listing
    (`tar -tv`, which decompresses but writes nothing). Raises ImageSourceError."""
    listing = tools.run(
        ["tar", "-t", "-v", "--numeric-owner", "-f", str(tarball)],
        "reading the tarball",
        explain=_reason,
    ).stdout
    files = 0
    size = 0
    for line in listing.splitlines():
        fields = line.split(None, 3)
        files += 1
        if len(fields) >= 3 and fields[2].isdigit():
            size += int(fields[2])
    if size > MAX_UNPACKED_BYTES:
        raise ImageSourceError(
            f"the tarball holds {size >> 20} MiB of files, more than {MAX_UNPACKED_BYTES >> 20}"
        )
    room = os.statvfs(work)
    free = room.f_bavail * room.f_frsize
    if size * COPIES_WHILE_BUILDING + RESERVED_DISK_BYTES > free:
        raise ImageSourceError(
            f"no space left on the server for this image: its {size >> 20} MiB of files need"
            f" about {(size * COPIES_WHILE_BUILDING + RESERVED_DISK_BYTES) >> 20} MiB free,"
            f" {free >> 20} MiB are"
        )
    if files * COPIES_WHILE_BUILDING + RESERVED_INODES > room.f_favail:
        raise ImageSourceError(
            f"no space left on the server for this image: its {files} files need about"
            f" {files * COPIES_WHILE_BUILDING + RESERVED_INODES} free inodes,"
            f" {room.f_favail} are"
        )


def _manifest_descriptor(layout: Path) -> dict[str, object]:
    try:
        index = json.loads((layout / "index.json").read_text())
        descriptor: dict[str, object] = index["manifests"][0]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise ImageSourceError(f"the pulled image has no manifest: {exc}") from exc
    return descriptor


def _blob(layout: Path, digest: object) -> dict[str, object]:
    algorithm, _, hexdigest = str(digest).partition(":")
    loaded: dict[str, object] = json.loads((layout / "blobs" / algorithm / hexdigest).read_bytes())
    return loaded


def _oci_config(layout: Path) -> ImageConfig:
    """`config.Env` ("K=V" strings) and `config.WorkingDir` of the pulled image."""
    try:
        manifest = _blob(layout, _manifest_descriptor(layout)["digest"])
        descriptor = manifest["config"]
        assert isinstance(descriptor, dict)
        config = _blob(layout, descriptor["digest"]).get("config") or {}
        assert isinstance(config, dict)
    except (OSError, ValueError, KeyError, AssertionError) as exc:
        raise ImageSourceError(f"the image's config cannot be read: {exc}") from exc
    env: dict[str, str] = {}
    for entry in config.get("Env") or []:
        key, equals, value = str(entry).partition("=")
        if equals and key:
            env[key] = value
    workdir = config.get("WorkingDir") or None
    return ImageConfig(env, None if workdir is None else str(workdir))


def _reason(stderr: str) -> str:
    """The tool's own message: skopeo's and umoci's `msg="…"`, tar's last lines."""
    if "No space left" in stderr or "Wrote only" in stderr:
        return f"no space left on the server's disk ({tools.last_lines(stderr)})"
    found: list[str] = SKOPEO_MESSAGE.findall(stderr)
    if found:
        return found[-1].replace('\\"', '"').replace("\\\\", "\\")
    return tools.last_lines(stderr)
