"""The default guest image, built from Debian packages only.

An image is a directory that never changes once built::

    <images_dir>/
      default -> default-<UTC timestamp>     symlink, swapped atomically by a rebuild
      default-<UTC timestamp>/
        vmlinux        the kernel of linux-image-cloud-amd64, uncompressed ELF (PVH entry)
        initrd.cpio    busybox + the virtio modules; mounts /dev/vda and switches root
        rootfs.ext4    sparse ext4: debootstrap minbase + python3, sshd, iproute2 …
        image.json     recipe, kernel version, root filesystem size, build time
      .default.lock    flock held while building, so two processes never build at once

Disk layers of VMs point at `rootfs.ext4` by its resolved path, so a rebuild makes a new
directory instead of replacing files that running VMs and commits still use. An image built
by an older recipe (see RECIPE) is rebuilt the first time it is needed.

vers-agent is not in the image: it comes with every boot, appended to the initramfs
(`boot.py`), and the image's init starts it first thing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vers_orchestrator.drivers.base import DriverError
from vers_orchestrator.drivers.qemu.machine import OUTBOUND_MAC
from vers_orchestrator.drivers.qemu.network import (
    GUEST_INBOUND_ADDRESS,
    GUEST_OUTBOUND_ADDRESS,
    GUEST_OUTBOUND_GATEWAY,
    GUEST_OUTBOUND_PREFIX,
)

DEFAULT_IMAGE_NAME = "default"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# Bumped whenever what an image holds changes in a way VMs rely on; 2: python3 and vers-agent
# instead of qemu-guest-agent, cgroup2; 3: the agent first, the rest after (fstab); 4: init
# forks no more in its reaping loop; 5: /tmp on the disk, tmpfs mounts bounded; 6: the agent's
# cgroup limits; 7: two network cards, the outbound one through passt, and a fixed name server,
# python3-venv.
RECIPE = 7
# python3 runs vers-agent, and users have it too, with venv and pip inside venvs (Debian's
# python3 refuses a system-wide pip, PEP 668).
GUEST_PACKAGES = ("python3", "python3-venv", "openssh-server", "iproute2", "procps", "e2fsprogs")
ROOTFS_MIB = 512
BUSYBOX = Path("/bin/busybox")
# The modules the guest needs before it can mount its root disk and talk to the host; their
# dependencies are added and ordered from each module's own `depends=` field.
GUEST_MODULES = ("virtio_mmio", "virtio_blk", "virtio_console", "virtio_net")
# The bzImage of the Debian cloud kernel carries its ELF as a legacy-format LZ4 stream.
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"

Progress = Callable[[str], None]


class ImageBuildError(DriverError):
    """The default image could not be built."""


@dataclass(frozen=True, slots=True)
class ImagePaths:
    directory: Path
    kernel: Path
    initrd: Path
    rootfs: Path
    rootfs_mib: int
    kernel_version: str
    recipe: int = RECIPE


INITRAMFS_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules/order); do
    insmod "/modules/$module.ko" || echo "initramfs: insmod $module failed" >/dev/console
done
tries=0
until [ -b /dev/vda ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 1000 ] && { echo "initramfs: no /dev/vda" >/dev/console; exec sh; }
    sleep 0.01
done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: mount failed" >/dev/console; exec sh; }
# vers-agent, appended to this initramfs by the host, replaces the copy an earlier boot left.
if [ -d /vers-agent/vers_agent ]; then
    mkdir -p /newroot/usr/lib/vers-agent
    rm -rf /newroot/usr/lib/vers-agent/vers_agent
    cp -a /vers-agent/vers_agent /newroot/usr/lib/vers-agent/
fi
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
exec switch_root /newroot /sbin/vminit
"""

# PID 1 of the guest. A shell instead of systemd keeps a boot to about a second of guest
# time; it brings up only what the driver relies on: vers-agent, sshd and the network.
# Under TCG on one vCPU every process started costs 15-60 ms and everything competes for
# the one CPU, so the way to the agent is as short as it can be: the file systems in one
# `mount -a`, the network in one `ip -batch`, builtins otherwise, then the agent; the
# rest (GUEST_SERVICES) runs niced beside it. The agent is started again if it ever exits.
GUEST_INIT = (
    f"""#!/bin/sh
OUTBOUND_MAC={OUTBOUND_MAC}
OUTBOUND_ADDRESS={GUEST_OUTBOUND_ADDRESS}/{GUEST_OUTBOUND_PREFIX}
OUTBOUND_GATEWAY={GUEST_OUTBOUND_GATEWAY}
INBOUND_ADDRESS={GUEST_INBOUND_ADDRESS}/24
"""
    + """export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -a
read -r name </etc/hostname && echo "$name" >/proc/sys/kernel/hostname
# The network is up before the agent, so that a first command can use it, in one process
# (drivers/qemu/network.py): the outbound card, known by its address, goes out through
# passt; the other carries the host's forwards into the guest.
{
    echo "link set lo up"
    for card in /sys/class/net/*; do
        card=${card##*/}
        [ "$card" = lo ] && continue
        read -r address <"/sys/class/net/$card/address"
        if [ "$address" = "$OUTBOUND_MAC" ]; then
            echo "address add $OUTBOUND_ADDRESS dev $card"
            outbound=$card
        else
            echo "address add $INBOUND_ADDRESS dev $card"
        fi
        echo "link set $card up"
    done
    [ -n "$outbound" ] && echo "route add default via $OUTBOUND_GATEWAY dev $outbound"
} | ip -batch - >/dev/null 2>&1
if [ -d /usr/lib/vers-agent/vers_agent ]; then
    (
        cd /usr/lib/vers-agent
        while :; do
            python3 -E -s -S -m vers_agent </dev/null >/dev/null 2>/dev/ttyS0
            sleep 1
        done
    ) &
fi
nice -n 10 /sbin/vminit-services &
# As PID 1 the shell must reap orphans, and must never exit (the kernel would panic): it
# waits on a sleeper, reaping every child that exits meanwhile, and forks only when the
# sleeper ends, never in a loop a fork bomb could make fail.
while :; do
    sleep infinity &
    wait $!
done
"""
)

# Started by GUEST_INIT beside the agent, at a lower priority.
GUEST_SERVICES = """#!/bin/sh
# The VM's disk may be larger than the image's file system; grow it to the whole disk.
resize2fs /dev/vda >/dev/null 2>&1
# There is no udev: name the virtio serial ports by their names, as udev would.
mkdir -p /dev/virtio-ports
for name_file in /sys/class/virtio-ports/*/name; do
    port=${name_file%/name}
    read -r port_name <"$name_file" && ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$port_name"
done
host_key=/etc/ssh/ssh_host_ed25519_key
[ -f "$host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$host_key"
mkdir -p /run/sshd /root/.ssh
chmod 700 /root/.ssh
/usr/sbin/sshd
echo VM-READY >/dev/ttyS0
"""

# Mounted by GUEST_INIT's `mount -a` (proc first, by itself). Files in tmpfs live in
# memory that nothing can reclaim: together the tmpfs mounts stay well below what vers-agent
# lets commands use (at least 56% of the guest's memory), or a full /dev/shm would leave no
# memory to run even the `rm` that empties it. /tmp is on the disk, as Debian 12 has it.
FSTAB = """sysfs    /sys            sysfs    defaults                        0 0
tmpfs    /run            tmpfs    mode=0755,nosuid,nodev,size=10% 0 0
devpts   /dev/pts        devpts   gid=5,mode=620                  0 0
tmpfs    /dev/shm        tmpfs    mode=1777,nosuid,nodev,size=30% 0 0
cgroup2  /sys/fs/cgroup  cgroup2  nsdelegate,favordynmods         0 0
"""

SSHD_CONFIG = """HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
"""


def load_default_image(images_dir: Path) -> ImagePaths | None:
    """The current default image, or None when it has not been built (by this recipe) yet."""
    link = images_dir / DEFAULT_IMAGE_NAME
    if not link.exists():
        return None
    image = load_image(link.resolve())
    return image if image.recipe == RECIPE else None


def load_image(directory: Path) -> ImagePaths:
    """A default image's directory as built, whatever its recipe (VMs and user images made
    from an older one keep booting with it). Raises OSError and ValueError when unreadable."""
    manifest = json.loads((directory / "image.json").read_text())
    return ImagePaths(
        directory=directory,
        kernel=directory / "vmlinux",
        initrd=directory / "initrd.cpio",
        rootfs=directory / "rootfs.ext4",
        rootfs_mib=int(manifest["rootfs_mib"]),
        kernel_version=str(manifest["kernel_version"]),
        recipe=int(manifest.get("recipe", 1)),
    )


def ensure_default_image(images_dir: Path, progress: Progress) -> ImagePaths:
    """The default image, built first if it does not exist yet. Blocks; safe across processes."""
    existing = load_default_image(images_dir)
    if existing is not None:
        return existing
    with _build_lock(images_dir):
        existing = load_default_image(images_dir)
        if existing is not None:
            progress("the default image was built by another process meanwhile")
            return existing
        return _build(images_dir, progress)


def build_default_image(images_dir: Path, progress: Progress) -> ImagePaths:
    """Build a fresh default image and make it current (existing VMs keep the old one)."""
    with _build_lock(images_dir):
        return _build(images_dir, progress)


@contextmanager
def _build_lock(images_dir: Path) -> Iterator[None]:
    images_dir.mkdir(parents=True, exist_ok=True)
    with open(images_dir / f".{DEFAULT_IMAGE_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(images_dir: Path, progress: Progress) -> ImagePaths:
    images_dir = images_dir.resolve()
    _check_host(progress)
    # Under the build lock no other build runs: staging folders are those of builds whose
    # process died (a server stopped mid-build).
    for stale in images_dir.glob(f".{DEFAULT_IMAGE_NAME}-build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    final = images_dir / f"{DEFAULT_IMAGE_NAME}-{stamp}"
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_IMAGE_NAME}-build-", dir=images_dir))
    try:
        work = staging / "work"
        output = staging / "image"
        work.mkdir()
        output.mkdir()
        progress(f"[1/4] kernel: downloading {KERNEL_PACKAGE}")
        kernel_root, kernel_version = _fetch_kernel(work)
        _extract_vmlinux(kernel_root / "boot" / f"vmlinuz-{kernel_version}", output / "vmlinux")
        progress(f"[2/4] initramfs: busybox and virtio modules of {kernel_version}")
        modules = _write_initramfs(
            kernel_root / "lib" / "modules" / kernel_version, work, output / "initrd.cpio"
        )
        progress(f"      modules in load order: {' '.join(modules)}")
        mirror = apt_mirror()
        progress(f"[3/4] root file system: debootstrap {SUITE} from {mirror} (about a minute)")
        rootfs = work / "rootfs"
        _debootstrap(rootfs, mirror, progress)
        _configure_rootfs(rootfs)
        progress(f"[4/4] ext4 image of {ROOTFS_MIB} MiB")
        mkfs = ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs)]
        _run([*mkfs, "rootfs.ext4", f"{ROOTFS_MIB}M"], output)
        (output / "image.json").write_text(
            json.dumps(
                {
                    "recipe": RECIPE,
                    "kernel_version": kernel_version,
                    "rootfs_mib": ROOTFS_MIB,
                    "suite": SUITE,
                    "mirror": mirror,
                    "built_at": stamp,
                },
                indent=2,
            )
        )
        output.rename(final)
        _point_default_at(images_dir, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    image = load_default_image(images_dir)
    assert image is not None
    progress(f"default image ready in {time.monotonic() - started:.0f} s: {final}")
    return image


def _check_host(progress: Progress) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building the default image needs root (debootstrap, mknod)")
    missing = [
        tool
        for tool in ("apt-get", "dpkg", "debootstrap", "mkfs.ext4", "cpio", "lz4")
        if shutil.which(tool) is None
    ]
    if not BUSYBOX.is_file():
        missing.append(str(BUSYBOX))
    if missing:
        raise ImageBuildError(
            f"missing tools: {', '.join(missing)}; run scripts/install-system-packages.sh"
        )
    progress("building the default guest image")


def _fetch_kernel(work: Path) -> tuple[Path, str]:
    downloads = work / "debs"
    downloads.mkdir()
    meta = _apt_download(KERNEL_PACKAGE, downloads)
    depends = _run(["dpkg-deb", "-f", str(meta), "Depends"], downloads).strip()
    image_package = next(
        (part.split()[0] for part in depends.split(",") if part.strip().startswith("linux-image-")),
        None,
    )
    if image_package is None:
        raise ImageBuildError(f"{KERNEL_PACKAGE} depends on no linux-image: {depends!r}")
    deb = _apt_download(image_package, downloads)
    kernel_root = work / "kernel"
    _run(["dpkg", "-x", str(deb), str(kernel_root)], work)
    version = image_package.removeprefix("linux-image-")
    if not (kernel_root / "boot" / f"vmlinuz-{version}").is_file():
        raise ImageBuildError(f"{image_package} has no boot/vmlinuz-{version}")
    return kernel_root, version


def _apt_download(package: str, directory: Path) -> Path:
    command = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package]
    try:
        _run(command, directory)
    except ImageBuildError:
        # A fresh machine may never have fetched the package lists.
        _run(["apt-get", "update", "-q"], directory)
        _run(command, directory)
    found = sorted(directory.glob(f"{package}_*.deb"))
    if not found:
        raise ImageBuildError(f"apt-get download {package} produced no .deb")
    return found[-1]


def _extract_vmlinux(bzimage: Path, vmlinux: Path) -> None:
    # PVH boots the ELF directly: no firmware and no decompression, which under TCG saves
    # most of a second per boot.
    data = bzimage.read_bytes()
    offset = data.find(LZ4_LEGACY_MAGIC)
    if offset < 0:
        raise ImageBuildError(f"{bzimage.name} holds no LZ4 stream; unsupported compression")
    result = subprocess.run(["lz4", "-dc"], input=data[offset:], capture_output=True, check=False)
    # The stream is followed by the rest of the bzImage, which lz4 reports as an error after
    # having written the whole ELF, so judge by the output rather than by the exit code.
    if not result.stdout.startswith(b"\x7fELF"):
        raise ImageBuildError(f"lz4 did not yield an ELF kernel: {result.stderr[-300:]!r}")
    vmlinux.write_bytes(result.stdout)


def _module_dependencies(module_file: Path) -> list[str]:
    for field in module_file.read_bytes().split(b"\0"):
        if field.startswith(b"depends="):
            names = field.removeprefix(b"depends=").decode()
            return [name for name in names.split(",") if name]
    return []


def module_load_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """`wanted` and their dependencies, each after everything it depends on."""
    files = {
        path.name.removesuffix(".ko").replace("-", "_"): path for path in modules_dir.rglob("*.ko")
    }
    order: list[tuple[str, Path]] = []
    placed: set[str] = set()

    def place(name: str, chain: tuple[str, ...]) -> None:
        if name in placed:
            return
        if name in chain:
            raise ImageBuildError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in files:
            raise ImageBuildError(f"kernel module {name} not found in {modules_dir}")
        for dependency in _module_dependencies(files[name]):
            place(dependency, (*chain, name))
        placed.add(name)
        order.append((name, files[name]))

    for name in wanted:
        place(name, ())
    return order


def _write_initramfs(modules_dir: Path, work: Path, initrd: Path) -> list[str]:
    tree = work / "initramfs"
    for directory in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        (tree / directory).mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    order = module_load_order(modules_dir, GUEST_MODULES)
    for name, path in order:
        shutil.copy2(path, tree / "modules" / f"{name}.ko")
    (tree / "modules" / "order").write_text("".join(f"{name}\n" for name, _ in order))
    init = tree / "init"
    init.write_text(INITRAMFS_INIT)
    init.chmod(0o755)
    listing = subprocess.run(
        ["find", ".", "-print0"], cwd=tree, capture_output=True, check=True
    ).stdout
    with initrd.open("wb") as out:
        subprocess.run(
            ["cpio", "--null", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            cwd=tree,
            input=listing,
            stdout=out,
            check=True,
        )
    return [name for name, _ in order]


def apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses for the guest's suite."""
    sources = Path("/etc/apt")
    candidates = [sources / "sources.list", *sorted(sources.glob("sources.list.d/*"))]
    for path in candidates:
        if not path.is_file():
            continue
        if path.suffix == ".sources":
            mirror = _mirror_from_deb822(path.read_text())
        elif path.name == "sources.list" or path.suffix == ".list":
            mirror = _mirror_from_one_line(path.read_text())
        else:
            continue
        if mirror is not None:
            return mirror
    return FALLBACK_MIRROR


def _mirror_from_one_line(text: str) -> str | None:
    for line in text.splitlines():
        words = [word for word in line.split() if not word.startswith("[")]
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            return words[1]
    return None


def _mirror_from_deb822(text: str) -> str | None:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
        if (
            "deb" in fields.get("types", "").split()
            and SUITE in fields.get("suites", "").split()
            and fields.get("enabled", "yes") != "no"
        ):
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def _debootstrap(rootfs: Path, mirror: str, progress: Progress) -> None:
    command = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(GUEST_PACKAGES)}",
        SUITE,
        str(rootfs),
        mirror,
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            line = line.rstrip()
            tail = [*tail[-20:], line]
            # Per-package lines ("I: Unpacking tar...") would be hundreds; stage lines
            # ("I: Unpacking the base system...") are longer and tell where it is.
            if len(line.split()) > 3:
                progress(f"      {line}")
        if process.wait() != 0:
            raise ImageBuildError("debootstrap failed:\n" + "\n".join(tail))


def _configure_rootfs(rootfs: Path) -> None:
    for pruned in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"):
        shutil.rmtree(rootfs / pruned, ignore_errors=True)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
    # Every VM of this image would otherwise share the host keys debootstrap generated;
    # the guest init makes its own on first boot.
    for key in (rootfs / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc" / "ssh" / "sshd_config.d" / "vers-orchestrator.conf").write_text(SSHD_CONFIG)
    (rootfs / "etc" / "hostname").write_text("vers\n")
    # passt forwards what reaches the gateway on port 53 to the host's resolver.
    resolv = rootfs / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(f"nameserver {GUEST_OUTBOUND_GATEWAY}\n")
    (rootfs / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 vers\n")
    (rootfs / "etc" / "fstab").write_text(FSTAB)
    for name, script in (("vminit", GUEST_INIT), ("vminit-services", GUEST_SERVICES)):
        path = rootfs / "sbin" / name
        path.write_text(script)
        path.chmod(0o755)


def _point_default_at(images_dir: Path, target: Path) -> None:
    link = images_dir / DEFAULT_IMAGE_NAME
    staged = images_dir / f".{DEFAULT_IMAGE_NAME}.link-{os.getpid()}"
    staged.unlink(missing_ok=True)
    staged.symlink_to(target.name)
    staged.replace(link)


def _run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageBuildError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return result.stdout
