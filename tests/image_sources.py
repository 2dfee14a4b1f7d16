"""Real image sources for the base-image tests: a registry, OCI images, S3 and tarballs.

Everything runs on this machine and is started by the tests themselves: a CNCF
Distribution registry (`docker-registry`), images built with `umoci` and pushed with
`skopeo`, a moto S3 server in a subprocess, and root filesystem tarballs. No Docker Hub.

`python tests/image_sources.py` checks them end to end without pytest.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import boto3
import botocore.exceptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Dummy credentials: moto accepts any, but boto3 refuses to sign without some.
S3_ACCESS_KEY_ID = "testing"
S3_SECRET_ACCESS_KEY = "testing"
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class Symlink:
    """A symbolic link pointing at `target` (absolute or relative, not resolved)."""

    target: str


@dataclass(frozen=True)
class OpaqueDirectory:
    """A directory replaced whole: nothing below it from earlier layers stays visible.

    `files` maps paths relative to the directory ("bin/tool") to their content, the same
    kinds as in a layer. In an OCI layer it becomes an opaque whiteout (`.wh..wh..opq`).
    """

    files: Mapping[str, FileContent | Symlink]


# A file's content; text is written as UTF-8. A (content, mode) tuple sets the mode,
# otherwise files are 0644.
FileContent = bytes | str | tuple[bytes | str, int]
# None deletes the path (a whiteout in the layer).
LayerEntry = FileContent | Symlink | OpaqueDirectory | None
Layer = Mapping[str, LayerEntry]


class CommandFailed(RuntimeError):
    """A helper program (umoci, skopeo, zstd …) exited with a non-zero status."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(command)} exited with {returncode}:\n{stderr}")
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr


def run(*command: str | Path) -> str:
    """Runs a program to completion; returns its stdout, raises CommandFailed."""
    args = [str(part) for part in command]
    completed = subprocess.run(args, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise CommandFailed(args, completed.returncode, completed.stderr)
    return completed.stdout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _ServerProcess:
    """A helper server in a subprocess, its output in a log file; stopped on `with` exit."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(
        self, command: Sequence[str], ready_url: str, ready: set[int], timeout: float
    ) -> None:
        """Starts `command` and waits until `ready_url` answers with a status in `ready`."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        # `with Registry(...).start()` enters only after start returns, so clean up here.
        try:
            self._wait_until_ready(ready_url, ready, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, url: str, ready: set[int], timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{url}: server exited early:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                    status: int = response.status
            except urllib.error.HTTPError as refused:
                status = refused.code
            except OSError:
                time.sleep(0.05)
                continue
            if status in ready:
                return
            raise RuntimeError(f"{url} answered {status}:\n{self.log_text()}")
        raise RuntimeError(f"{url} did not answer in {timeout} s:\n{self.log_text()}")

    def stop(self, timeout: float = 10) -> None:
        """Stops the process (SIGTERM, then SIGKILL after `timeout` seconds) and reaps it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class Registry(_ServerProcess):
    """A Distribution registry (`docker-registry`) on 127.0.0.1 over plain HTTP.

    Its config, blobs, htpasswd file and `registry.log` live in `directory`. With
    `username` and `password` it requires HTTP basic auth (htpasswd, bcrypt); clients
    must then send credentials, which Distribution 2.8 accepts over plain HTTP.

    Use as `with Registry(tmp_path).start() as registry:`; `host` is "127.0.0.1:PORT",
    the form image references and skopeo use. `start` raises RuntimeError with the log
    if the registry exits or is not answering `GET /v2/` within the timeout.
    """

    def __init__(
        self, directory: Path, *, username: str | None = None, password: str | None = None
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory / "registry.log")
        self.directory = directory
        self.username = username
        self.password = password
        self.port = 0
        self.host = ""

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password) when the registry requires auth, for `push(auth=...)`."""
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    def start(self, timeout: float = 30) -> Self:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = [
            "version: 0.1",
            "log:",
            "  level: info",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {json.dumps(str(self.directory / 'storage'))}",
            "http:",
            f"  addr: {self.host}",
        ]
        if self.credentials is not None:
            htpasswd_path = self.directory / "htpasswd"
            htpasswd_path.write_text(run("htpasswd", "-Bbn", *self.credentials))
            config += [
                "auth:",
                "  htpasswd:",
                "    realm: vers-orchestrator-tests",
                f"    path: {json.dumps(str(htpasswd_path))}",
            ]
        config_path = self.directory / "registry-config.yml"
        config_path.write_text("\n".join(config) + "\n")
        # 401 is ready too: an auth registry challenges even the version check.
        command = ["docker-registry", "serve", str(config_path)]
        self._spawn(command, f"http://{self.host}/v2/", {200, 401}, timeout)
        return self

    def write_auth_file(
        self, path: Path, *, username: str | None = None, password: str | None = None
    ) -> None:
        """Writes a containers-auth.json (as `skopeo login` would) for this registry.

        The registry's own credentials unless others are given (e.g. a wrong password).
        Raises ValueError when there are none.
        """
        username = username if username is not None else self.username
        password = password if password is not None else self.password
        if username is None or password is None:
            raise ValueError("this registry has no credentials; pass username and password")
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}, indent=2) + "\n")


def _relative(path: str) -> PurePosixPath:
    """Turns "/app/x" into "app/x"; ValueError for paths that would escape the root."""
    relative = PurePosixPath(path.lstrip("/"))
    if not relative.parts or ".." in relative.parts:
        raise ValueError(f"not a path inside the image: {path!r}")
    return relative


def _write_entry(root: Path, path: PurePosixPath, content: FileContent | Symlink) -> None:
    """Creates one file or symlink under `root`, parents as 0755 directories."""
    target = root / path
    parent = root
    for part in path.parts[:-1]:
        parent = parent / part
        if not parent.is_dir():
            parent.mkdir()
            parent.chmod(0o755)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    if isinstance(content, Symlink):
        target.symlink_to(content.target)
        return
    data, mode = content if isinstance(content, tuple) else (content, 0o644)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    target.chmod(mode)


def _delete_entry(root: Path, path: PurePosixPath) -> None:
    target = root / path
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        # FileNotFoundError for a path no earlier layer created: a mistake in the test.
        target.unlink()


def build_oci_image(
    layout_dir: Path,
    layers: Iterable[Layer],
    *,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
) -> None:
    """Builds an OCI image layout at `layout_dir` tagged `latest`.

    `layout_dir` must not exist yet; its parent must (scratch files go there too).

    Each element of `layers` becomes one layer. It maps absolute paths in the image
    ("/app/hello.txt") to a FileContent (bytes, str as UTF-8, or (content, mode); files
    default to 0644, missing parents are created 0755, owner root), a Symlink, None to
    delete the path from earlier layers (a whiteout; FileNotFoundError if absent), or an
    OpaqueDirectory, which must then be the only entry of its layer.

    `env` ("K" -> "V") becomes the image config's Env, exactly (umoci sets no PATH);
    `workdir` sets WorkingDir. Layers are gzip tars, as umoci writes them. Raises
    CommandFailed if umoci does.
    """
    image = f"{layout_dir}:latest"
    run("umoci", "init", "--layout", layout_dir)
    run("umoci", "new", "--image", image)
    # The bundle is a scratch copy of the image's filesystem beside the layout (same
    # disk, cleaned with the test's tmp dir even if this is interrupted).
    with tempfile.TemporaryDirectory(dir=layout_dir.parent, prefix=".umoci-") as scratch:
        bundle = Path(scratch) / "bundle"
        for layer in layers:
            opaque = [(path, e) for path, e in layer.items() if isinstance(e, OpaqueDirectory)]
            if opaque:
                if len(layer) != 1:
                    raise ValueError("an OpaqueDirectory must be the only entry of its layer")
                [(path, directory)] = opaque
                _add_opaque_layer(image, _relative(path), directory, Path(scratch))
                # The bundle no longer matches the image; unpack it again when needed.
                shutil.rmtree(bundle, ignore_errors=True)
                continue
            if not bundle.exists():
                run("umoci", "unpack", "--image", image, bundle)
            for path, entry in layer.items():
                assert not isinstance(entry, OpaqueDirectory)  # ruled out above
                if entry is None:
                    _delete_entry(bundle / "rootfs", _relative(path))
                else:
                    _write_entry(bundle / "rootfs", _relative(path), entry)
            # --refresh-bundle makes the next repack diff against this layer, not the first.
            run("umoci", "repack", "--refresh-bundle", "--image", image, bundle)
    config = [f"--config.env={name}={value}" for name, value in (env or {}).items()]
    if workdir is not None:
        config.append(f"--config.workingdir={workdir}")
    if config:
        run("umoci", "config", "--image", image, *config)
    # Each step above left a manifest and config behind; keep only the tagged image's.
    run("umoci", "gc", "--layout", layout_dir)


def _add_opaque_layer(
    image: str, path: PurePosixPath, directory: OpaqueDirectory, scratch: Path
) -> None:
    # Not `umoci insert --opaque`: umoci 0.4.7 (Debian) leaves that layer's tar without
    # its end blocks (umoci#436, fixed in 0.4.8), which GNU tar and Python reject.
    files: dict[PurePosixPath, FileContent | Symlink] = {path / ".wh..wh..opq": b""}
    files.update({path / _relative(name): entry for name, entry in directory.files.items()})
    layer_tar = scratch / "opaque-layer.tar"
    with tarfile.open(layer_tar, "w") as archive:
        _write_tar(archive, files)
    run("umoci", "raw", "add-layer", "--image", image, layer_tar)
    layer_tar.unlink()


def build_large_oci_image(layout_dir: Path, total_mib: int = 100, layers: int = 5) -> None:
    """An OCI layout of about `total_mib` MiB of random (incompressible) data.

    The data is split evenly over `layers` layers, as 4 MiB files
    `/data/layer-<n>/chunk-<m>.bin` (the last one of a layer may be smaller). Layers are
    generated one at a time, so memory stays near one layer's size.
    """
    chunk_size = 4 * 1024 * 1024
    layer_size = total_mib * 1024 * 1024 // layers

    def layer(index: int) -> Layer:
        sizes = [chunk_size] * (layer_size // chunk_size)
        if layer_size % chunk_size:
            sizes.append(layer_size % chunk_size)
        return {
            f"/data/layer-{index}/chunk-{number}.bin": os.urandom(size)
            for number, size in enumerate(sizes)
        }

    build_oci_image(layout_dir, (layer(index) for index in range(layers)))


def push(
    layout_dir: Path,
    registry: Registry,
    repository_and_tag: str,
    *,
    auth: tuple[str, str] | None = None,
) -> None:
    """Copies `layout_dir`'s `latest` image to `registry` as "repository:tag".

    `auth` is (username, password), e.g. `registry.credentials`. Raises CommandFailed
    with skopeo's stderr (wrong credentials, registry down …).
    """
    credentials = ["--dest-creds", f"{auth[0]}:{auth[1]}"] if auth is not None else []
    run(
        "skopeo",
        # The test image is unsigned; don't depend on /etc/containers/policy.json.
        "--insecure-policy",
        "copy",
        # The registry speaks plain HTTP; without this skopeo insists on HTTPS.
        "--dest-tls-verify=false",
        *credentials,
        f"oci:{layout_dir}:latest",
        f"docker://{registry.host}/{repository_and_tag}",
    )


class S3Server(_ServerProcess):
    """A moto S3 server (`python -m moto.server`) on 127.0.0.1, its log in `directory`.

    A separate process, so the server under test reaches it over HTTP like real S3.
    moto accepts any credentials; `environment()` gives the dummy ones. Buckets live in
    memory and vanish on `stop`. `start` raises RuntimeError with the log on failure.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory / "moto.log")
        self.endpoint_url = ""

    def start(self, timeout: float = 60) -> Self:
        port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self._spawn(command, f"{self.endpoint_url}/moto-api/", {200}, timeout)
        return self

    def environment(self) -> dict[str, str]:
        """The variables a server process needs to use this S3 (add them to its env)."""
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": S3_REGION,
            "VERS_ORCHESTRATOR_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self) -> S3Client:
        """A boto3 S3 client for this server, with the dummy credentials."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
            region_name=S3_REGION,
        )

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        """Stores `data` at s3://bucket/key, creating the bucket if it does not exist."""
        client = self.client()
        try:
            client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError:
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=key, Body=data)


def rootfs_tarball(
    path: Path,
    files: Mapping[str, FileContent | Symlink],
    *,
    compression: Literal["gz", "xz", "zst"] | None = None,
) -> None:
    """Writes a tar of a small root filesystem to `path`.

    `files` maps absolute paths ("/etc/hostname") to content as in `build_oci_image`
    (no deletions). Members are named without a leading "/" or "./" ("etc/hostname"),
    owned by 0:0, with every parent directory as its own 0755 entry before its contents.
    `compression` "gz" and "xz" use Python's tarfile; "zst" compresses a plain tar with
    the `zstd` program (CommandFailed if it fails).
    """
    entries = {_relative(name): content for name, content in files.items()}
    if compression == "zst":
        plain = path.with_name(path.name + ".plain")
        try:
            rootfs_tarball(plain, files)
            run("zstd", "-q", "-f", "-o", path, plain)
        finally:
            plain.unlink(missing_ok=True)
        return
    mode: Literal["w", "w:gz", "w:xz"] = (
        "w:gz" if compression == "gz" else "w:xz" if compression == "xz" else "w"
    )
    with tarfile.open(path, mode) as archive:
        _write_tar(archive, entries)


def _write_tar(
    archive: tarfile.TarFile, files: Mapping[PurePosixPath, FileContent | Symlink]
) -> None:
    """Adds `files` and all their parent directories (0755), root-owned, parents first."""
    directories = {parent for name in files for parent in name.parents}
    directories.discard(PurePosixPath("."))
    entries: list[tuple[PurePosixPath, FileContent | Symlink | None]] = [
        (directory, None) for directory in directories - files.keys()
    ]
    entries += files.items()
    entries.sort(key=lambda entry: entry[0].parts)
    mtime = time.time()
    for name, content in entries:
        info = tarfile.TarInfo(str(name))
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = mtime
        if content is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(info)
        elif isinstance(content, Symlink):
            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, content.target
            archive.addfile(info)
        else:
            data, mode = content if isinstance(content, tuple) else (content, 0o644)
            raw = data.encode() if isinstance(data, str) else data
            info.size, info.mode = len(raw), mode
            archive.addfile(info, BytesIO(raw))


def _skopeo_pull(registry: Registry, reference: str, destination: Path, *creds: str) -> None:
    run(
        "skopeo",
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        *creds,
        f"docker://{registry.host}/{reference}",
        f"oci:{destination}:latest",
    )


def _check_registry(directory: Path, username: str | None, password: str | None) -> None:
    layout = directory / "image"
    build_oci_image(
        layout,
        [
            {"/app/hello.txt": "hello\n", "/app/secret.txt": b"gone soon", "/etc/motd": "1"},
            {
                "/app/secret.txt": None,
                "/usr/bin/tool": ("#!/bin/sh\necho tool\n", 0o755),
                "/usr/bin/alias": Symlink("tool"),
            },
            {"/etc": OpaqueDirectory({"hostname": "guest\n"})},
        ],
        env={"GREETING": "hi there", "MODE": "test"},
        workdir="/app",
    )
    registry_dir = directory / "registry"
    with Registry(registry_dir, username=username, password=password).start() as registry:
        push(layout, registry, "demo/app:v1", auth=registry.credentials)
        creds = [] if registry.credentials is None else ["--src-creds", f"{username}:{password}"]
        pulled = directory / "pulled"
        _skopeo_pull(registry, "demo/app:v1", pulled, *creds)
        bundle = directory / "bundle"
        run("umoci", "unpack", "--image", f"{pulled}:latest", bundle)
        rootfs = bundle / "rootfs"
        assert (rootfs / "app/hello.txt").read_text() == "hello\n"
        assert not (rootfs / "app/secret.txt").exists()
        assert (rootfs / "usr/bin/tool").stat().st_mode & 0o777 == 0o755
        assert os.readlink(rootfs / "usr/bin/alias") == "tool"
        assert sorted(os.listdir(rootfs / "etc")) == ["hostname"]
        index = json.loads((pulled / "index.json").read_text())
        manifest_digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.loads((pulled / "blobs/sha256" / manifest_digest).read_text())
        layer_members = []
        for layer in manifest["layers"]:
            blob = pulled / "blobs/sha256" / layer["digest"].split(":")[1]
            # Python's tarfile refuses truncated tars, which lenient Go readers accept.
            with tarfile.open(blob) as archive:
                layer_members.append(archive.getnames())
        assert "app/.wh.secret.txt" in layer_members[1], layer_members
        assert "etc/.wh..wh..opq" in layer_members[2], layer_members
        config_digest = manifest["config"]["digest"].split(":")[1]
        config = json.loads((pulled / "blobs/sha256" / config_digest).read_text())["config"]
        assert "GREETING=hi there" in config["Env"]
        assert "MODE=test" in config["Env"]
        assert config["WorkingDir"] == "/app"
        print(f"registry auth={username is not None}: ok; image config {config}")

        if registry.credentials is not None:
            auth_file = directory / "auth.json"
            registry.write_auth_file(auth_file)
            _skopeo_pull(
                registry, "demo/app:v1", directory / "via-auth-file", "--authfile", str(auth_file)
            )
            for label, refused_creds in [
                ("wrong password", ["--src-creds", f"{username}:wrong"]),
                ("no credentials", []),
            ]:
                try:
                    _skopeo_pull(registry, "demo/app:v1", directory / "refused", *refused_creds)
                except CommandFailed as refused:
                    print(f"--- skopeo stderr, {label}:\n{refused.stderr}---")
                else:
                    raise AssertionError(f"pull with {label} succeeded")
        try:
            _skopeo_pull(registry, "demo/app:missing", directory / "missing", *creds)
        except CommandFailed as missing:
            print(f"--- skopeo stderr, missing tag:\n{missing.stderr}---")
        else:
            raise AssertionError("pull of a missing tag succeeded")


def _check_s3(directory: Path) -> None:
    with S3Server(directory / "s3") as s3:
        s3.start()
        s3.put_object("images", "rootfs.tar", b"tar bytes")
        s3.put_object("images", "again.tar", b"second object, same bucket")
        body = s3.client().get_object(Bucket="images", Key="rootfs.tar")["Body"].read()
        assert body == b"tar bytes"
        print(f"s3 at {s3.endpoint_url}: ok")


def _check_tarballs(directory: Path) -> None:
    files: dict[str, FileContent | Symlink] = {
        "/etc/hostname": "guest\n",
        "/sbin/init": ("#!/bin/sh\n", 0o755),
        "/bin/sh": Symlink("busybox"),
    }
    for compression in (None, "gz", "xz", "zst"):
        path = directory / f"rootfs.tar.{compression or 'plain'}"
        rootfs_tarball(path, files, compression=compression)
        listing = run("tar", "-tvf", path)
        names = [line.split()[5].rstrip("/") for line in listing.splitlines()]
        assert names == ["bin", "bin/sh", "etc", "etc/hostname", "sbin", "sbin/init"], names
    print(f"tarballs: ok\n{listing}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        _check_registry(root / "open", None, None)
        _check_registry(root / "private", "alice", "s3cret")
        _check_s3(root)
        _check_tarballs(root)
        started = time.monotonic()
        build_large_oci_image(root / "large", total_mib=20, layers=2)
        print(f"large image (20 MiB, 2 layers): {time.monotonic() - started:.1f} s")
