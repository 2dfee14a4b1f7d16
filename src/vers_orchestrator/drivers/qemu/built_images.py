"""Users' images on disk: a root filesystem tree laid over the default image's and written
into an ext4 file, stored by content so that two images of the same content share it.

    <images_dir>/
      built/<key>/rootfs.ext4   sparse ext4: the default base, then the image's own files
      built/<key>/image.json    the base it was laid over, sizes, ENV, WORKDIR, timings
      built/.<key>.partial-*/   a build in progress (removed at start-up if left)
      base-trees/<default dir>/ the default image's files, extracted once per default image

`<key>` hashes the source's digest, the extra size, the default image and BUILD_RECIPE: the
same content built the same way is built once. A VM made from a user's image boots with the
kernel and initramfs of the default image its files were laid over, and its first disk layer
is `rootfs.ext4`, which is never written once built.

How files are laid over the base follows the hosted service (upstream-semantics-platform.md
§4): the base's files win (`rsync --ignore-existing`), so every image boots with our init,
runs vers-agent with the base's Python and accepts SSH, and the image adds what the base
lacks (its `/usr/local`, `/app`, its own programs and libraries). rsync never follows an
absolute symbolic link of the base while it writes (`/var/run -> /run`): such entries are
skipped, not written outside the tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vers_orchestrator.drivers import tools
from vers_orchestrator.drivers.base import DriverError, ImageMissing
from vers_orchestrator.drivers.qemu.images import ImagePaths, load_image

# Bumped when what a built image holds changes; part of every key and of the base tree's
# folder name. 2: setuid/setgid/sticky bits of the base kept, directories keep the base's
# modes, inodes counted.
BUILD_RECIPE = 2
# The hosted service's floor and ceiling of a filesystem's total size (§4).
MIN_TOTAL_MIB = 256
MAX_TOTAL_MIB = 65536
# ext4's own needs beside the files (journal, inode tables, reserved blocks), measured on
# mkfs.ext4 -d of the default base: about 5 % and never less than 32 MiB.
METADATA_SHARE = 0.06
MIN_METADATA_MIB = 32
# Paths of an image never copied: mount points the guest fills at boot, Docker's marker,
# the files that make the guest boot and answer (the base keeps its own).
EXCLUDED = (
    "/proc/*", "/sys/*", "/dev/*", "/run/*",
    "/.dockerenv", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/etc/fstab",
    "/sbin/init", "/sbin/vminit*", "/usr/sbin/vminit*", "/usr/lib/vers-agent",
    "/lib/vers-agent", "/etc/vers-agent", "/etc/environment",
)  # fmt: skip
# An image's ENV is cut here (the agent reads the first MiB of /etc/environment, and the
# user's variables come after it): values over MAX_ENV_VALUE and what passes MAX_ENV_TOTAL
# are left out.
MAX_ENV_VALUE = 128 * 1024
MAX_ENV_TOTAL = 256 * 1024
# What ends a line for some reader of /etc/environment (as services/env_vars.py refuses).
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\0")
# Inodes: the files', one per 16 KiB of the free space asked for (mke2fs's own ratio), and
# room; each costs 256 bytes of inode table, counted in the size.
INODES_PER_FREE_MIB = 64
SPARE_INODES = 16384
INODE_BYTES = 256
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Read by vers-agent at every exec that names no working directory (issue 12).
WORKDIR_FILE = "etc/vers-agent/workdir"
ENVIRONMENT_FILE = "etc/environment"

Progress = Callable[[str], None]


class ImageTooLarge(DriverError):
    def __init__(self, total_mib: int) -> None:
        super().__init__(
            f"the image needs {total_mib} MiB with its extra space, more than {MAX_TOTAL_MIB} MiB"
        )


@dataclass(frozen=True, slots=True)
class BuiltImage:
    key: str
    rootfs: Path
    # The filesystem's whole size, as the hosted service reports an image's `size_mib`.
    rootfs_mib: int
    # The default image whose kernel, initramfs and files it was built on.
    base: ImagePaths


def image_key(source_digest: str, size_mib: int, base: ImagePaths) -> str:
    """The storage key of `source_digest` built with `size_mib` extra over `base`: 64 hex."""
    recipe = f"{BUILD_RECIPE}\n{source_digest}\n{size_mib}\n{base.directory.name}"
    return hashlib.sha256(recipe.encode()).hexdigest()


def find(images_dir: Path, key: str) -> BuiltImage | None:
    """The built image of `key`, its paths absolute (disk layers name them), or None."""
    directory = (images_dir / "built" / key).resolve()
    try:
        manifest = json.loads((directory / "image.json").read_text())
        base = load_image(Path(manifest["base"]))
    except (OSError, ValueError, KeyError):
        return None
    return BuiltImage(key, directory / "rootfs.ext4", int(manifest["rootfs_mib"]), base)


def install(
    images_dir: Path,
    key: str,
    tree: Path,
    *,
    env: dict[str, str],
    workdir: str | None,
    size_mib: int,
    base: ImagePaths,
    progress: Progress,
) -> BuiltImage:
    """Lay `tree` over `base`'s files, add `env` to /etc/environment and `workdir` for
    vers-agent, and write an ext4 of the content plus `size_mib` MiB under `key`. Blocking.
    Raises ImageTooLarge, DriverError (no space left, a tool failed)."""
    built = _private_folder(images_dir / "built")
    existing = find(images_dir, key)
    if existing is not None:
        return existing
    base_tree = _base_tree(images_dir, base)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=built))
    # Held while the build runs: servers sharing the images folder (a start-up's clean-up,
    # `remove_partial_builds`) leave a staging folder alone while it is locked.
    held = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        merged = staging / "rootfs"
        started = time.monotonic()
        # Hard links: the base's 140 MB are not copied, and `--ignore-existing` never
        # writes into a file that exists, so the shared tree stays as extracted.
        _run(["cp", "-al", str(base_tree), str(merged)])
        _lay_over(tree, merged)
        _keep_base_directories(base_tree, merged)
        _configure(merged, env, workdir)
        laid = time.monotonic()
        content_mib = int(_run(["du", "-sm", str(merged)]).split()[0])
        entries = int(_run(["du", "-s", "--inodes", str(merged)]).split()[0])
        inodes = entries + size_mib * INODES_PER_FREE_MIB + SPARE_INODES
        metadata = max(MIN_METADATA_MIB, int(content_mib * METADATA_SHARE))
        metadata += -(-inodes * INODE_BYTES // (1024 * 1024))
        total = max(MIN_TOTAL_MIB, content_mib + metadata + size_mib)
        if total > MAX_TOTAL_MIB:
            raise ImageTooLarge(total)
        progress(f"filesystem: ext4 of {total} MiB ({content_mib} MiB in {entries} files)")
        rootfs = staging / "rootfs.ext4"
        _run(
            [
                "mkfs.ext4", "-q", "-F", "-L", "root", "-N", str(inodes),
                "-d", str(merged), str(rootfs), f"{total}M",
            ]
        )  # fmt: skip
        # Removed beside the rest of the build, not before it ends (about 0.1 s of a
        # 100 MiB image's 2 s, bench/image_bench.py); a crash leaves it to start-up. Its
        # root is closed first: the image's setuid files and device nodes must never be
        # reachable by the host's other users, outside the 0700 staging folder.
        os.chmod(merged, 0o700)
        trash = built / f".{key}.partial-trash-{os.getpid()}-{time.monotonic_ns()}"
        merged.rename(trash)
        threading.Thread(target=shutil.rmtree, args=(trash, True), daemon=True).start()
        manifest = {
            "recipe": BUILD_RECIPE,
            "base": str(base.directory),
            "rootfs_mib": total,
            "content_mib": content_mib,
            "seconds": {
                "lay_over": round(laid - started, 3),
                "filesystem": round(time.monotonic() - laid, 3),
            },
        }
        (staging / "image.json").write_text(json.dumps(manifest, indent=2))
        try:
            staging.rename(built / key)
        except OSError:
            if find(images_dir, key) is None:  # not a build of the same content meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(held)
    image = find(images_dir, key)
    if image is None:
        raise ImageMissing(key)
    return image


def remove(images_dir: Path, key: str) -> None:
    """Remove a built image's files (the caller checked that nothing uses them)."""
    directory = images_dir / "built" / key
    if directory.exists():
        # Renamed first: a half-removed image never looks complete.
        doomed = directory.with_name(f".{key}.partial-removed")
        directory.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def remove_partial_builds(images_dir: Path) -> list[str]:
    """Builds a crash cut short: staging folders no process holds locked (another server
    sharing the images folder may be building in one)."""
    removed = []
    for partial in (images_dir / "built").glob(".*.partial-*"):
        try:
            held = os.open(partial, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a build in progress
        finally:
            os.close(held)
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(f"unfinished image build {partial.name}")
    return removed


def base_tree_path(images_dir: Path, base: ImagePaths) -> Path:
    """Where the files of `base` are kept extracted for builds."""
    return images_dir / "base-trees" / f"{base.directory.name}.{BUILD_RECIPE}"


def _base_tree(images_dir: Path, base: ImagePaths) -> Path:
    """The default image's files as a directory, extracted once (`debugfs rdump` keeps
    owners and modes, no mount needed)."""
    trees = _private_folder(images_dir / "base-trees")
    tree = base_tree_path(images_dir, base)
    if tree.exists():
        return tree
    with _lock(trees / ".lock"):
        if tree.exists():
            return tree
        # Unfinished extractions, and this default image's trees of older recipes.
        for stale in [*trees.glob(".*.partial"), *trees.glob(f"{base.directory.name}*")]:
            shutil.rmtree(stale, ignore_errors=True)
        staging = trees / f".{tree.name}.partial"
        staging.mkdir()
        _run(["debugfs", "-R", f"rdump / {staging}", str(base.rootfs)])
        _restore_special_bits(staging, base.rootfs)
        # rdump makes a `lost+found` like any other directory; mkfs makes its own.
        shutil.rmtree(staging / "lost+found", ignore_errors=True)
        staging.rename(tree)
    return tree


def _restore_special_bits(tree: Path, rootfs: Path) -> None:
    """rdump drops setuid, setgid and sticky bits (su and passwd lose setuid, /tmp its
    sticky bit): read every directory's listing from the ext4 in one debugfs run and put
    those bits back."""
    directories = ["/"]
    for root, names, _ in os.walk(tree):
        relative = os.path.relpath(root, tree)
        directories += [os.path.normpath(f"/{relative}/{name}") for name in names]
    commands = "".join(f'ls -p "{directory}"\n' for directory in directories)
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write(commands)
        script.flush()
        listing = _run(["debugfs", "-f", script.name, str(rootfs)])
    current = None
    for line in listing.splitlines():
        if line.startswith("debugfs: ls -p "):
            current = line[len('debugfs: ls -p "') : -1]
            continue
        fields = line.split("/")
        if current is None or len(fields) < 7 or fields[5] in (".", ".."):
            continue
        mode = int(fields[2], 8)
        if mode & 0o7000 and not stat.S_ISLNK(mode):
            os.chmod(tree / current.lstrip("/") / fields[5], stat.S_IMODE(mode))


def _keep_base_directories(base_tree: Path, merged: Path) -> None:
    """rsync gives a directory both have the image's mode and owner (an image's /etc 0777
    and uid 1000, /tmp without its sticky bit): the base's are put back."""
    for root, names, _ in os.walk(base_tree):
        for name in [".", *names]:
            source = os.path.join(root, name)
            target = merged / os.path.relpath(source, base_tree)
            try:
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    continue
                status = os.lstat(source)
                os.chown(target, status.st_uid, status.st_gid, follow_symlinks=False)
                os.chmod(target, stat.S_IMODE(status.st_mode))
            except FileNotFoundError:
                continue


def _private_folder(path: Path) -> Path:
    """A folder only its owner may enter: images hold setuid files and device nodes."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _lay_over(tree: Path, merged: Path) -> None:
    # --sparse: an image's sparse file (a 10 KB tar can hold a 2 GB hole) stays sparse.
    command = ["rsync", "-aHAX", "--sparse", "--ignore-existing", "--numeric-ids"]
    command += [f"--exclude={path}" for path in EXCLUDED]
    # 23 and 24: some entries could not be laid over (a directory of the image where the
    # base has a file, a path through an absolute link of the base); the rest is there.
    done = tools.run(
        [*command, f"{tree}/", f"{merged}/"], "laying the image over the base", accept=(0, 23, 24)
    )
    if "No space left" in done.stderr:
        raise DriverError(f"laying the image over the base: {tools.last_lines(done.stderr)}")


def _configure(merged: Path, env: dict[str, str], workdir: str | None) -> None:
    """The image's ENV over the base's /etc/environment, its WORKDIR for vers-agent. Files
    are replaced, never written in place: the base tree's are hard links."""
    if env:
        path = merged / ENVIRONMENT_FILE
        try:
            lines = path.read_text().split("\n")
        except FileNotFoundError:
            lines = []
        # Keys that are not variable names, values with a line break: not writable there.
        usable: dict[str, str] = {}
        room = MAX_ENV_TOTAL
        for key, value in env.items():
            length = len(value.encode())
            size = len(key) + length + 2
            writable = ENV_KEY.fullmatch(key) and LINE_BREAKS.isdisjoint(value)
            if writable and length <= MAX_ENV_VALUE and size <= room:
                usable[key] = value
                room -= size
        kept = [line for line in lines if line and line.split("=", 1)[0] not in usable]
        _replace(path, "\n".join([*kept, *(f"{k}={v}" for k, v in usable.items())]) + "\n")
    if workdir and workdir.startswith("/") and not set(workdir) & {"\n", "\r", "\0"}:
        _replace(merged / WORKDIR_FILE, workdir + "\n")


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.is_symlink() or path.is_symlink():
        raise DriverError(f"refusing to write through a symbolic link: {path}")
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(text)
    os.chmod(temporary, 0o644)
    temporary.replace(path)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(command: list[str]) -> str:
    return tools.run(command, f"{command[0]} failed").stdout
