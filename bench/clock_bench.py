"""How far guests' wall clocks are from the host's while they sit idle (TCG here).

Boots a root VM, commits it and restores one VM from the commit, through the QEMU driver,
then every `--every` seconds for `--minutes` reads each guest's clock (`date +%s.%N`)
and sets it against the host's at the midpoint of the call. The driver object stays open
the whole time, as a server's would, so its once-a-minute clock nudge runs.

    .venv/bin/python bench/clock_bench.py [--minutes 10] [--every 15]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vers_orchestrator.drivers.base import ExecRequest, VmSpec
from vers_orchestrator.drivers.qemu.driver import QemuDriver, QemuDriverConfig

REPO = Path(__file__).resolve().parents[1]


async def offset(driver: QemuDriver, vm_id: str) -> tuple[float, float]:
    """Guest clock minus host clock (s), and the uncertainty (half the call's length)."""
    before = time.time()
    result = await driver.exec(vm_id, ExecRequest(argv=("date", "+%s.%N")))
    after = time.time()
    return float(result.stdout) - (before + after) / 2, (after - before) / 2


async def measure(minutes: float, every: float) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="vers-clock-bench-"))
    runtime = Path(f"/dev/shm/vo-clock-{secrets.token_hex(4)}")
    driver = QemuDriver(
        QemuDriverConfig(
            state_dir=scratch / "state", runtime_dir=runtime, images_dir=REPO / "build" / "images"
        )
    )
    try:
        spec = VmSpec(mem_mib=256, vcpus=1, disk_mib=1024)
        await driver.create_vm("root", spec)
        await driver.commit("root", "base")
        await driver.restore("base", ["restored"])
        worst = {"root": 0.0, "restored": 0.0}
        started = time.monotonic()
        print("| minute | root offset (ms) | restored offset (ms) | ± (ms) |")
        print("|---:|---:|---:|---:|")
        while time.monotonic() - started < minutes * 60:
            row = []
            spread = 0.0
            for vm_id in ("root", "restored"):
                value, error = await offset(driver, vm_id)
                worst[vm_id] = max(worst[vm_id], abs(value))
                row.append(f"{value * 1000:+.1f}")
                spread = max(spread, error)
            minute = (time.monotonic() - started) / 60
            print(f"| {minute:.1f} | {' | '.join(row)} | {spread * 1000:.1f} |", flush=True)
            await asyncio.sleep(every)
        print(
            f"\nlargest |offset|: root {worst['root'] * 1000:.1f} ms, "
            f"restored {worst['restored'] * 1000:.1f} ms"
        )
    finally:
        for vm_id in ("restored", "root"):
            try:
                await driver.delete_vm(vm_id)
            except Exception as exc:  # the bench cleans up what it can
                print(f"cannot delete {vm_id}: {exc}", file=sys.stderr)
        await driver.close()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=15.0)
    args = parser.parse_args()
    asyncio.run(measure(args.minutes, args.every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
