"""Latency and memory of the QEMU driver on this machine.

    .venv/bin/python bench/driver_bench.py [--runs 5] [--qemu BINARY ...]

Boots real VMs (256 MiB, 1 vCPU) from the default image in build/images, prints a Markdown
table for bench/README.md and writes bench/results/driver.json. Every VM is deleted at the
end, also on failure. With several `--qemu`, each QEMU is measured in turn, and the table
has a column for each (`bench/debian-qemu-7.2.sh` unpacks Debian 12's QEMU 7.2 beside
the QEMU 10 that `make install` puts on the system).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from vers_orchestrator.drivers.base import ExecRequest, VmSpec
from vers_orchestrator.drivers.qemu.driver import QemuDriver, QemuDriverConfig
from vers_orchestrator.drivers.qemu.images import ensure_default_image

REPO = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO / "build" / "images"
RESULTS = REPO / "bench" / "results" / "driver.json"
SPEC = VmSpec(mem_mib=256, vcpus=1, disk_mib=1024)
TRUE = ExecRequest(argv=("true",))
IDLE_SECONDS = 10.0
GENERATIONS = 10
# Written before the first commit of a chain and read back, guest caches dropped, in the
# first and the last generation: reads through every disk layer of the chain.
CHAIN_FILE_MIB = 64
# Inside the guest, beside a commit: wake every millisecond and keep the longest step of
# the wall clock between two wakeups. The guest's clocks stand still while its vCPUs are
# stopped; the driver sets the wall clock right after (`Guests.set_clock`), so the stop
# shows as one step of the wall clock, as a process writing a timestamp every millisecond
# would see it. Written to tmpfs when it ends (after `GAP_SECONDS`).
GAP_SECONDS = 4.0
GAP_PROGRAM = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
last = time.time()
longest = 0.0
while time.monotonic() < end:
    time.sleep(0.001)
    now = time.time()
    longest = max(longest, now - last)
    last = now
with open("/dev/shm/longest-gap", "w") as out:
    out.write(repr(longest))
"""


class Bench:
    def __init__(self, driver: QemuDriver, state_dir: Path) -> None:
        self.driver = driver
        self.state_dir = state_dir
        self.samples: dict[str, list[float]] = {}
        self._counter = 0

    def new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter}"

    def record(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    async def timed(self, name: str, work: Callable[[], Awaitable[object]]) -> None:
        started = time.monotonic()
        await work()
        self.record(name, time.monotonic() - started)

    async def first_exec_of_root(self) -> str:
        vm_id = self.new_id("root")

        async def boot() -> None:
            await self.driver.create_vm(vm_id, SPEC)
            await self.driver.exec(vm_id, TRUE)

        await self.timed("root VM: create → first exec", boot)
        return vm_id

    async def commit(self, name: str, vm_id: str) -> str:
        commit_id = self.new_id("commit")
        # The gap watcher runs in the background, the commit in its middle.
        watcher = ('python3 -c "$1" "$2" >/dev/null 2>&1 &', "watcher", GAP_PROGRAM)
        await self.driver.exec(vm_id, ExecRequest(argv=("sh", "-c", *watcher, str(GAP_SECONDS))))
        await asyncio.sleep(GAP_SECONDS / 2)
        await self.timed(f"{name}: commit call", lambda: self.driver.commit(vm_id, commit_id))
        record = json.loads((self.state_dir / "commits" / commit_id / "commit.json").read_text())
        self.record(f"{name}: commit pause (VM stopped)", record["pause_seconds"])
        await asyncio.sleep(GAP_SECONDS)
        longest = await self.driver.read_file(vm_id, "/dev/shm/longest-gap")
        self.record(f"{name}: longest wall-clock step seen in the guest", float(longest))
        await self.driver.exec(vm_id, ExecRequest(argv=("rm", "-f", "/dev/shm/longest-gap")))
        return commit_id

    async def restore(self, commit_id: str, count: int) -> list[str]:
        vm_ids = [self.new_id("restored") for _ in range(count)]

        async def restore_and_exec() -> None:
            await self.driver.restore(commit_id, vm_ids)
            await asyncio.gather(*(self.driver.exec(vm_id, TRUE) for vm_id in vm_ids))

        await self.timed(f"restore {count} from a commit → first exec in all", restore_and_exec)
        return vm_ids

    async def branch(self, vm_id: str, count: int) -> list[str]:
        vm_ids = [self.new_id("branched") for _ in range(count)]

        async def branch_and_exec() -> None:
            await self.driver.branch(vm_id, self.new_id("commit"), vm_ids)
            await asyncio.gather(*(self.driver.exec(new_id, TRUE) for new_id in vm_ids))

        await self.timed(f"branch {count} from a running VM → first exec in all", branch_and_exec)
        return vm_ids

    async def exec_round_trips(self, vm_id: str, count: int) -> None:
        for _ in range(count):
            await self.timed("exec `true` round trip", lambda: self.driver.exec(vm_id, TRUE))

    async def generations(self, root: str) -> None:
        """restore → commit, GENERATIONS times from one root; the first and the last
        generation's restore → first exec, and how long a file written in the root
        takes to read (guest caches dropped)."""
        driver = self.driver
        write = f"head -c {CHAIN_FILE_MIB}M /dev/urandom > /root/chain-file && sync"
        await driver.exec(root, ExecRequest(argv=("sh", "-c", write)))
        commit_id = self.new_id("commit")
        await driver.commit(root, commit_id)
        vm_id = ""
        for generation in range(1, GENERATIONS + 1):
            vm_id = self.new_id("generation")
            started = time.monotonic()
            await driver.restore(commit_id, [vm_id])
            await driver.exec(vm_id, TRUE)
            elapsed = time.monotonic() - started
            if generation in (1, GENERATIONS):
                self.record(f"generation {generation}: restore → first exec", elapsed)
                drop = "sync && echo 3 > /proc/sys/vm/drop_caches"
                await driver.exec(vm_id, ExecRequest(argv=("sh", "-c", drop)))
                read = ExecRequest(argv=("sh", "-c", "cat /root/chain-file > /dev/null"))
                started = time.monotonic()
                await driver.exec(vm_id, read)
                self.record(
                    f"generation {generation}: read {CHAIN_FILE_MIB} MiB written in the root",
                    time.monotonic() - started,
                )
            commit_id = self.new_id("commit")
            await driver.commit(vm_id, commit_id)
            await driver.delete_vm(vm_id)

    def memory(self, name: str, vm_ids: list[str]) -> None:
        for vm_id in vm_ids:
            pid = int((self.state_dir / "vms" / vm_id / "qemu.pid").read_text())
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            fields = {line.split()[0].rstrip(":"): int(line.split()[1]) for line in rollup[1:]}
            self.record(f"{name}: RSS MiB", fields["Rss"] / 1024)
            self.record(f"{name}: PSS MiB", fields["Pss"] / 1024)


async def measure(runs: int, bench: Bench) -> None:
    driver = bench.driver

    async def delete(vm_ids: list[str]) -> None:
        # One measurement at a time: on two cores every extra TCG guest slows the next one.
        for vm_id in vm_ids:
            await driver.delete_vm(vm_id)

    try:
        root = await bench.first_exec_of_root()
        for _ in range(runs - 1):
            await delete([await bench.first_exec_of_root()])
        await bench.exec_round_trips(root, 30)
        commits = [await bench.commit("root VM", root) for _ in range(runs)]
        for commit in commits:
            await delete(await bench.restore(commit, 1))
        for commit in commits:
            await delete(await bench.restore(commit, 3))
        for commit in commits:
            (restored,) = await driver.restore(commit, [bench.new_id("source")])
            await bench.exec_round_trips(restored.vm_id, 10)
            await bench.commit("restored VM", restored.vm_id)
            await delete([restored.vm_id])
        for _ in range(runs):
            await delete(await bench.branch(root, 1))
        for _ in range(runs):
            await delete(await bench.branch(root, 3))
        await bench.generations(root)
        # Memory of VMs that have only idled since they were made.
        idle_branches = await bench.restore(commits[0], 3)
        await asyncio.sleep(IDLE_SECONDS)
        bench.memory("idle root VM", [root])
        bench.memory("idle VM restored from a commit (3 alive)", idle_branches)
    finally:
        inventory = await driver.inventory()
        await delete([vm.vm_id for vm in inventory.vms])
        for commit in inventory.commits:
            await driver.delete_commit(commit.commit_id)
        await driver.close()


def table(columns: dict[str, dict[str, list[float]]]) -> str:
    """Medians (min-max) of each measurement, a column for each QEMU."""
    names = list(dict.fromkeys(name for samples in columns.values() for name in samples))
    lines = [
        "| Measurement | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in names:
        unit = "" if "MiB" in name else " s"
        cells = []
        for samples in columns.values():
            values = samples.get(name)
            cells.append(
                f"{statistics.median(values):.3f}{unit} ({min(values):.3f}-{max(values):.3f})"
                if values
                else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_qemu(
    binary: str, runs: int, accelerator: str, live_commits: bool
) -> tuple[str, str, Bench]:
    """One QEMU's samples; returns its version line, accelerator and the bench."""
    scratch = Path(tempfile.mkdtemp(prefix="vers-driver-bench-"))
    runtime = Path(f"/dev/shm/vo-driver-{secrets.token_hex(4)}")
    try:
        driver = QemuDriver(
            QemuDriverConfig(
                state_dir=scratch,
                runtime_dir=runtime,
                images_dir=IMAGES_DIR,
                accelerator=accelerator,
                qemu_binary=binary,
                live_commits=live_commits,
            )
        )
        bench = Bench(driver, scratch)
        asyncio.run(measure(runs, bench))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    return version, driver.accelerator.name, bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accelerator", default="auto", choices=("auto", "kvm", "tcg"))
    parser.add_argument("--qemu", action="append", help="a QEMU binary (repeatable)")
    parser.add_argument(
        "--also-stopped",
        action="store_true",
        help="measure each QEMU also with live commits off (the VM stopped for the copy)",
    )
    args = parser.parse_args()
    ensure_default_image(IMAGES_DIR, lambda line: print(line, file=sys.stderr))
    columns: dict[str, dict[str, list[float]]] = {}
    accelerator = ""
    for binary in args.qemu or ["qemu-system-x86_64"]:
        for live in (True, False) if args.also_stopped else (True,):
            version, accelerator, bench = measure_qemu(binary, args.runs, args.accelerator, live)
            label = version.removeprefix("QEMU emulator version ").split(" (")[0]
            columns[f"QEMU {label}" + ("" if live else ", live commits off")] = bench.samples
    header = (
        f"Accelerator: **{accelerator}**, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, guest 256 MiB / 1 vCPU, {args.runs} runs; "
        "median (min-max)."
    )
    print(header)
    print()
    print(table(columns))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"accelerator": accelerator, "runs": args.runs, "samples": columns}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
