"""Commits of the QEMU driver under stress (issue 14): long chains of restores and
commits keep a guest's files, processes and memory exactly; a commit beside a running
command; a commit whose memory cannot be written leaves nothing behind. With a QEMU that
commits restored VMs live (snapshots.py) these run on the live path, else on the
stopped one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.drivers.harness import QemuHarness, run
from tests.support import live_processes
from vers_orchestrator.drivers.base import DriverError, ExecRequest, VmSpec
from vers_orchestrator.drivers.qemu.driver import QemuDriver

SPEC = VmSpec(vcpus=1, mem_mib=256, disk_mib=1024)
GENERATIONS = 10
# A process that counts in tmpfs for as long as the guest lives (in memory only).
COUNTER = (
    "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.05; done'"
    " >/dev/null 2>&1 & echo $!"
)


def sh(script: str) -> ExecRequest:
    return ExecRequest(argv=("sh", "-c", script))


async def output(driver: QemuDriver, vm_id: str, script: str) -> str:
    result = await driver.exec(vm_id, sh(script))
    assert result.exit_code == 0, result
    return result.stdout.decode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuHarness]:
    made = QemuHarness(tmp_path_factory.mktemp("snapshots"))
    try:
        run(made, lambda d: d.create_vm("gen-0", SPEC))
        yield made
    finally:
        made.destroy()


def test_ten_generations_keep_files_a_counter_and_a_tmpfs_blob(lab: QemuHarness) -> None:
    async def work(driver: QemuDriver) -> None:
        counter_pid = (await output(driver, "gen-0", COUNTER)).strip()
        blob = hashlib.sha256()
        vm = "gen-0"
        for generation in range(1, GENERATIONS + 1):
            line = f"generation {generation}\n"
            chunk = os.urandom(64 * 1024)
            blob.update(chunk)
            await driver.write_file(vm, "/root/chunk", chunk)
            await output(
                driver, vm, f"echo 'generation {generation}' >> /root/log"
                " && cat /root/chunk >> /dev/shm/blob && rm /root/chunk",
            )  # fmt: skip
            count_before = int(await output(driver, vm, "cat /dev/shm/count"))
            await driver.commit(vm, f"gen-commit-{generation}")
            child = f"gen-{generation}"
            await driver.restore(f"gen-commit-{generation}", [child])
            await driver.delete_vm(vm)
            vm = child
            log = await output(driver, vm, "cat /root/log")
            assert log.endswith(line)
            assert log.count("\n") == generation
            digest = await output(driver, vm, "sha256sum /dev/shm/blob")
            assert digest.split()[0] == blob.hexdigest()
            # The counting process was carried over and goes on from where it was.
            assert (await output(driver, vm, f"kill -0 {counter_pid} && echo alive")) == "alive\n"
            assert int(await output(driver, vm, "cat /dev/shm/count")) >= count_before
        await driver.delete_vm(vm)

    run(lab, work)


def test_a_commit_beside_a_running_command(lab: QemuHarness) -> None:
    """The command goes on through the commit and returns its whole output; the commit
    restores to a guest that works."""
    script = "for i in $(seq 1 40); do echo line $i; sleep 0.05; done"

    async def work(driver: QemuDriver) -> None:
        await driver.create_vm("race", SPEC)
        await driver.commit("race", "race-base")
        await driver.restore("race-base", ["race-restored"])
        running = asyncio.create_task(driver.exec("race-restored", sh(script)))
        await asyncio.sleep(0.5)
        await driver.commit("race-restored", "race-commit")
        result = await running
        assert result.exit_code == 0
        assert result.stdout.decode().splitlines() == [f"line {i}" for i in range(1, 41)]
        await driver.restore("race-commit", ["race-child"])
        assert await output(driver, "race-child", "echo ok") == "ok\n"
        for vm in ("race", "race-restored", "race-child"):
            await driver.delete_vm(vm)

    run(lab, work)


def test_a_commit_whose_memory_cannot_be_written_leaves_nothing(lab: QemuHarness) -> None:
    """Every helper QEMU that would receive the memory is killed as it starts: the commit
    fails, lists nothing, leaves no files, and the VM runs on and commits later."""
    helpers = str(lab.runtime_dir / ".helper-")

    async def kill_helpers(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for pid in live_processes(helpers):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.002)

    async def work(driver: QemuDriver) -> None:
        await driver.create_vm("doomed", SPEC)
        await driver.commit("doomed", "doomed-base")
        await driver.restore("doomed-base", ["doomed-restored"])
        stop = asyncio.Event()
        killer = asyncio.create_task(kill_helpers(stop))
        try:
            with pytest.raises(DriverError):
                await driver.commit("doomed-restored", "doomed-commit")
        finally:
            stop.set()
            await killer
        inventory = await driver.inventory()
        assert "doomed-commit" not in {commit.commit_id for commit in inventory.commits}
        commits = lab.state_dir / "commits"
        assert [path.name for path in commits.iterdir() if "doomed" in path.name] == ["doomed-base"]
        assert [path.name for path in lab.runtime_dir.glob(".helper-*")] == []
        assert await output(driver, "doomed-restored", "echo alive") == "alive\n"
        await driver.commit("doomed-restored", "doomed-commit")
        await driver.restore("doomed-commit", ["doomed-child"])
        assert await output(driver, "doomed-child", "echo alive") == "alive\n"
        for vm in ("doomed", "doomed-restored", "doomed-child"):
            await driver.delete_vm(vm)

    run(lab, work)


def test_a_long_chain_is_merged_in_the_background(tmp_path: Path) -> None:
    """Past max_chain_layers a commit's layers above the image become one; restores of it
    see every generation's files."""
    short = QemuHarness(tmp_path, max_chain_layers=3)

    async def work(driver: QemuDriver) -> None:
        await driver.create_vm("link-0", SPEC)
        vm = "link-0"
        for generation in range(1, 4):
            await output(driver, vm, f"echo {generation} > /root/generation-{generation}")
            await driver.commit(vm, f"link-commit-{generation}")
            await driver.restore(f"link-commit-{generation}", [f"link-{generation}"])
            await driver.delete_vm(vm)
            vm = f"link-{generation}"
        # Chains: image + 1, + 2, + 3 layers; the third is past the limit.
        record = short.state_dir / "commits" / "link-commit-3" / "commit.json"
        for _ in range(600):
            if len(json.loads(record.read_text())["disk_chain"]) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(json.loads(record.read_text())["disk_chain"]) == 2
        assert list((short.state_dir / "layers").glob("*.merging")) == []
        await driver.restore("link-commit-3", ["link-merged"])
        files = "cat /root/generation-1 /root/generation-2 /root/generation-3"
        assert await output(driver, "link-merged", files) == "1\n2\n3\n"
        # The VM that was running on the long chain goes on using it.
        assert await output(driver, vm, files) == "1\n2\n3\n"

    try:
        run(short, work)
    finally:
        short.destroy()


def test_a_layer_a_crash_kept_from_being_made_is_dropped_at_start_up(lab: QemuHarness) -> None:
    """A commit records the VM's next layer before QEMU makes it; a server killed in
    between left a record naming a missing file, and the next commit could not be
    restored (found by the hostile pass). Start-up drops such a layer."""
    run(lab, lambda d: d.create_vm("crashed", SPEC))
    run(lab, lambda d: d.exec("crashed", sh("echo before > /root/mark")))
    path = lab.state_dir / "vms" / "crashed" / "vm.json"
    record = json.loads(path.read_text())
    real_chain = record["disk_chain"]
    record["disk_chain"] = [*real_chain, str(lab.state_dir / "layers" / "never-made.qcow2")]
    path.write_text(json.dumps(record))

    async def restart_and_commit(driver: QemuDriver) -> None:
        removed = await driver.remove_leftovers()
        assert "a disk layer of VM crashed that was never made" in removed
        assert json.loads(path.read_text())["disk_chain"] == real_chain
        await driver.commit("crashed", "after-crash")
        await driver.restore("after-crash", ["after-crash-child"])
        assert await output(driver, "after-crash-child", "cat /root/mark") == "before\n"
        for vm in ("crashed", "after-crash-child"):
            await driver.delete_vm(vm)

    run(lab, restart_and_commit)
