"""What a root VM boots with besides the image: vers-agent, appended to the image's initramfs.

The agent travels in the initramfs rather than in the image's file system, so every root VM
gets the agent of the server that boots it, without rebuilding images when the agent
changes. Linux unpacks concatenated cpio archives one after the other; the image's init
copies `/vers-agent` to `/usr/lib/vers-agent` on the root disk before switching to it.
The sources go with byte code compiled here (unchecked-hash .pyc, so the guest neither
checks timestamps nor recompiles at every boot); a guest Python of another version ignores
the byte code and compiles the sources.

VMs restored from a commit keep running the agent that was in memory when it was taken.
"""

from __future__ import annotations

import hashlib
import os
import py_compile
import sys
import tempfile
from pathlib import Path

from vers_orchestrator import agent
from vers_orchestrator.drivers.qemu.images import ImagePaths

AGENT_SOURCE = Path(agent.__file__).parent
# Inside the initramfs; the guest's init copies it to /usr/lib/vers-agent/vers_agent.
AGENT_DIR = "vers-agent/vers_agent"
_FILE = 0o100644
_DIRECTORY = 0o040755


def agent_files() -> dict[str, bytes]:
    """Path inside the initramfs -> content, for the agent's sources and their byte code."""
    files: dict[str, bytes] = {}
    tag = sys.implementation.cache_tag
    with tempfile.TemporaryDirectory() as scratch:
        for source in sorted(AGENT_SOURCE.glob("*.py")):
            files[f"{AGENT_DIR}/{source.name}"] = source.read_bytes()
            compiled = Path(scratch) / f"{source.stem}.pyc"
            py_compile.compile(
                str(source),
                cfile=str(compiled),
                dfile=f"/usr/lib/{AGENT_DIR}/{source.name}",
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
            files[f"{AGENT_DIR}/__pycache__/{source.stem}.{tag}.pyc"] = compiled.read_bytes()
    return files


def agent_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()[:16]


def boot_initrd(image: ImagePaths, boot_dir: Path) -> Path:
    """The image's initramfs followed by the agent's; made once per image and agent."""
    files = agent_files()
    path = boot_dir / f"initrd-{image.directory.name}-{agent_digest(files)}.cpio"
    if path.exists():
        return path
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with staged.open("wb") as out:
        base = image.initrd.read_bytes()
        out.write(base)
        out.write(bytes(-len(base) % 4))  # each archive starts on a 4-byte boundary
        out.write(newc_archive(files))
    os.replace(staged, path)
    return path


def newc_archive(files: dict[str, bytes]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks, with the directories the
    paths need; every entry owned by root, with a fixed time so equal input gives equal
    output."""
    directories = sorted(
        {str(parent) for name in files for parent in Path(name).parents if str(parent) != "."}
    )
    out = bytearray()
    number = 0
    for name in directories:
        number += 1
        out += _entry(number, name, _DIRECTORY, b"")
    for name in sorted(files):
        number += 1
        out += _entry(number, name, _FILE, files[name])
    out += _entry(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def _entry(inode: int, name: str, mode: int, data: bytes) -> bytes:
    encoded = name.encode() + b"\0"
    nlink = 2 if mode == _DIRECTORY else 1
    fields = (inode, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    entry = header + encoded
    entry += bytes(-len(entry) % 4)
    entry += data
    entry += bytes(-len(entry) % 4)
    return entry
