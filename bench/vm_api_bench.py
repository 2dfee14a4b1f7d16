"""VM latencies through the HTTP API, to set beside the driver's own (`driver_bench.py`).

Starts a real `vers-orchestrator serve` on SQLite with the shared image cache, and times,
as a client sees them (official SDK, loopback):
- new root (`POST /vm/new_root`, wait_boot) → first `exec` of `true` answered;
- `exec` round trip;
- commit of a root VM (`POST /vm/{id}/commit`);
- `branch_by_commit` x1 and x3 → first `exec` answered in every new VM;
- `branch_vm` of a running VM (commit + restore) x1 and x3 → first exec in every new VM;
- commit of a VM restored from a commit;
- a chain of ten generations (branch from a commit → commit the new VM, ten times): the
  1st and the 10th generation's branch → first exec.
One measurement at a time: every VM of a step is deleted before the next, since each
extra TCG guest slows the others on two cores. Writes `bench/results/vm_api.json`.

    .venv/bin/python bench/vm_api_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vers_sdk import VersSdkClient
from vers_sdk.models import BranchByCommitParams, BranchVmParams, CreateNewRootVmParams

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGES_DIR = REPO / "build" / "images"
GENERATIONS = 10
RESULTS = REPO / "bench" / "results" / "vm_api.json"
ROOT_CONFIG = {"vm_config": {"vcpu_count": 1, "mem_size_mib": 256, "fs_size_mib": 1024}}
TRUE = {"command": ["true"]}


class Bench:
    def __init__(self, client: VersSdkClient) -> None:
        self.client = client
        self.samples: dict[str, list[float]] = {}

    async def timed(self, name: str, work: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        result = await work()
        self.samples.setdefault(name, []).append(time.perf_counter() - started)
        return result

    async def first_exec(self, vm_ids: list[str]) -> None:
        await asyncio.gather(*(self.client.exec_vm(vm_id, TRUE) for vm_id in vm_ids))

    async def new_root(self) -> str:
        async def boot() -> str:
            created = await self.client.create_new_root_vm(
                ROOT_CONFIG, CreateNewRootVmParams(wait_boot=True)
            )
            await self.first_exec([created["vm_id"]])
            return str(created["vm_id"])

        return str(await self.timed("New root → first exec", boot))

    async def commit(self, vm_id: str) -> str:
        done = await self.timed("Commit of a root VM", lambda: self.client.commit_vm(vm_id, {}))
        return str(done["commit_id"])

    async def branch_commit(self, commit_id: str, count: int) -> list[str]:
        async def branch() -> list[str]:
            made = await self.client.branch_by_commit(
                commit_id, None, BranchByCommitParams(count=count)
            )
            ids = [vm["vm_id"] for vm in made["vms"]]
            await self.first_exec(ids)
            return ids

        return list(await self.timed(f"Branch x{count} from a commit → first exec", branch))

    async def branch_vm(self, vm_id: str, count: int) -> list[str]:
        async def branch() -> list[str]:
            made = await self.client.branch_vm(vm_id, None, BranchVmParams(count=count))
            ids = [vm["vm_id"] for vm in made["vms"]]
            await self.first_exec(ids)
            return ids

        return list(await self.timed(f"Branch x{count} from a running VM → first exec", branch))

    async def commit_restored(self, commit_id: str) -> None:
        made = await self.client.branch_by_commit(commit_id, None, BranchByCommitParams(count=1))
        vm_id = made["vms"][0]["vm_id"]
        await self.first_exec([vm_id])
        await self.timed("Commit of a restored VM", lambda: self.client.commit_vm(vm_id, {}))
        await self.delete([vm_id])

    async def generations(self, commit_id: str) -> None:
        for generation in range(1, GENERATIONS + 1):
            started = time.perf_counter()
            made = await self.client.branch_by_commit(
                commit_id, None, BranchByCommitParams(count=1)
            )
            vm_id = made["vms"][0]["vm_id"]
            await self.first_exec([vm_id])
            if generation in (1, GENERATIONS):
                name = f"Generation {generation}: branch from a commit → first exec"
                self.samples.setdefault(name, []).append(time.perf_counter() - started)
            commit_id = str((await self.client.commit_vm(vm_id, {}))["commit_id"])
            await self.delete([vm_id])

    async def delete(self, vm_ids: list[str]) -> None:
        for vm_id in vm_ids:
            await self.client.delete_vm(vm_id)


async def measure(bench: Bench, runs: int) -> None:
    root = await bench.new_root()
    try:
        for _ in range(runs - 1):
            await bench.delete([await bench.new_root()])
        for _ in range(30):
            await bench.timed("Exec round trip (`true`)", lambda: bench.first_exec([root]))
        commits = [await bench.commit(root) for _ in range(runs)]
        for count in (1, 3):
            for commit in commits:
                await bench.delete(await bench.branch_commit(commit, count))
        for count in (1, 3):
            for _ in range(runs):
                await bench.delete(await bench.branch_vm(root, count))
        for commit in commits:
            await bench.commit_restored(commit)
        await bench.generations(commits[0])
    finally:
        for vm in await bench.client.list_vms():
            await bench.client.delete_vm(vm["vm_id"])


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(BIN / "vers-orchestrator"), "serve", "--port", "0"],
            env=env,
            stdout=output,
            stderr=output,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def table(samples: dict[str, list[float]]) -> str:
    lines = ["| Measurement | median | min - max | n |", "|---|---:|---:|---:|"]
    for name, values in samples.items():
        lines.append(
            f"| {name} | {statistics.median(values):.3f} s "
            f"| {min(values):.3f} - {max(values):.3f} s | {len(values)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="vers-vm-api-bench-"))
    runtime = f"/dev/shm/vo-bench-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "VERS_ORCHESTRATOR_DATA_DIR": str(scratch / "data"),
        "VERS_ORCHESTRATOR_IMAGES_DIR": str(IMAGES_DIR),
        "VERS_ORCHESTRATOR_VM_RUNTIME_DIR": runtime,
        "VERS_ORCHESTRATOR_LOG_LEVEL": "INFO",
    }
    env.pop("VERS_ORCHESTRATOR_DATABASE_URL", None)
    process = None
    try:
        created = subprocess.run(
            [str(BIN / "vers-orchestrator"), "keys", "create", "--org", "bench", "--user",
             "bench", "--format", "json"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        token = json.loads(created.stdout)["api_key"]
        process, url = start_server(env, scratch / "server.log")

        async def run() -> Bench:
            async with VersSdkClient(base_url=url, api_key=token, timeout=300) as client:
                bench = Bench(client)
                await measure(bench, args.runs)
                return bench

        bench = asyncio.run(run())
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
    print(table(bench.samples))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": args.runs, "samples": bench.samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
