"""The contract every VM driver must pass, run against real VMs (QEMU under TCG here).

VMs are shared within this module because each boot costs seconds under TCG: `root_vm`
runs a counter that ticks every 0.2 s, and `family` commits it and starts five VMs from
that moment. Every test talks to the VMs through a new driver object, which is also what a
server restart looks like.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.drivers.harness import HARNESSES, Harness, run
from vers_orchestrator.drivers.base import (
    CommitAlreadyExists,
    CommitNotFound,
    ExecRequest,
    FileTooLarge,
    GuestFileNotFound,
    InvalidRequest,
    NotRegularFile,
    VmDriver,
    VmNotFound,
    VmNotRunning,
    VmSpec,
    VmState,
)

pytestmark = pytest.mark.slow

SPEC = VmSpec(mem_mib=256, vcpus=1, disk_mib=1024)
MIB = 1024 * 1024
COUNTER_LOG = "/tmp/counter.log"
COUNTER_PID = "/tmp/counter.pid"
COUNTER_SCRIPT = f"""echo $$ > {COUNTER_PID}
n=0
while :; do n=$((n + 1)); echo $n >> {COUNTER_LOG}; sleep 0.2; done
"""
MARKER_PATH = "/root/marker.txt"
MARKER = b"written before the commit\n"


@dataclass(frozen=True)
class Family:
    commit_id: str
    restored: tuple[str, ...]
    branched: tuple[str, ...]
    branch_commit_id: str
    counter_pid: bytes
    ticks_before_commit: int


@pytest.fixture(scope="module", params=sorted(HARNESSES))
def harness(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    made = HARNESSES[request.param](tmp_path_factory.mktemp(f"driver-{request.param}"))
    try:
        yield made
        run(made, delete_everything)
        assert made.remains() == []
    finally:
        made.destroy()


@pytest.fixture(scope="module")
def root_vm(harness: Harness) -> str:
    async def boot(driver: VmDriver) -> str:
        info = await driver.create_vm("root", SPEC)
        assert info.state is VmState.RUNNING
        await driver.write_file("root", MARKER_PATH, MARKER)
        await start_counter(driver, "root")
        return info.vm_id

    return run(harness, boot)


@pytest.fixture(scope="module")
def family(harness: Harness, root_vm: str) -> Family:
    async def make(driver: VmDriver) -> Family:
        ticks_before = len(await counter_values(driver, root_vm))
        counter_pid = await driver.read_file(root_vm, COUNTER_PID)
        commit = await driver.commit(root_vm, "commit-main")
        restored = await driver.restore(
            commit.commit_id, ["restored-0", "restored-1", "restored-2"]
        )
        branch = await driver.branch(root_vm, "commit-branch", ["branched-0", "branched-1"])
        return Family(
            commit_id=commit.commit_id,
            restored=tuple(vm.vm_id for vm in restored),
            branched=tuple(vm.vm_id for vm in branch.vms),
            branch_commit_id=branch.commit.commit_id,
            counter_pid=counter_pid,
            ticks_before_commit=ticks_before,
        )

    return run(harness, make)


async def start_counter(driver: VmDriver, vm_id: str) -> None:
    started = await driver.exec(
        vm_id,
        ExecRequest(
            argv=("sh", "-c", 'sh -c "$1" </dev/null >/dev/null 2>&1 &', "sh", COUNTER_SCRIPT)
        ),
    )
    assert started.exit_code == 0
    for _ in range(100):
        if len(await counter_values(driver, vm_id)) >= 3:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the counter did not start")


async def counter_values(driver: VmDriver, vm_id: str) -> list[int]:
    try:
        log = await driver.read_file(vm_id, COUNTER_LOG)
    except GuestFileNotFound:
        return []
    # The last line may be half written when read.
    return [int(line) for line in log.decode().split("\n")[:-1]]


async def assert_counter_continues(driver: VmDriver, vm_id: str, family: Family) -> None:
    values = await counter_values(driver, vm_id)
    # One unbroken count from 1: a counter started again would log 1 a second time.
    assert values == list(range(1, len(values) + 1))
    assert len(values) >= family.ticks_before_commit
    assert await driver.read_file(vm_id, COUNTER_PID) == family.counter_pid
    await asyncio.sleep(1.0)
    later = await counter_values(driver, vm_id)
    assert later == list(range(1, len(later) + 1))
    assert len(later) > len(values)


async def shell(driver: VmDriver, vm_id: str, script: str) -> bytes:
    result = await driver.exec(vm_id, ExecRequest(argv=("sh", "-c", script)))
    assert result.exit_code == 0, result.stderr
    return result.stdout


async def delete_everything(driver: VmDriver) -> None:
    inventory = await driver.inventory()
    for vm in inventory.vms:
        await driver.delete_vm(vm.vm_id)
    for commit in inventory.commits:
        await driver.delete_commit(commit.commit_id)


class TestBoot:
    def test_a_new_vm_runs_commands(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            result = await driver.exec(root_vm, ExecRequest(argv=("uname", "-s")))
            assert (result.exit_code, result.stdout, result.stderr) == (0, b"Linux\n", b"")
            status = await driver.status(root_vm)
            assert (status.state, status.spec, status.parent_commit_id) == (
                VmState.RUNNING,
                SPEC,
                None,
            )

        run(harness, check)

    def test_a_disk_smaller_than_the_image_is_refused(self, harness: Harness) -> None:
        async def check(driver: VmDriver) -> None:
            with pytest.raises(InvalidRequest):
                await driver.create_vm("tiny", VmSpec(mem_mib=256, vcpus=1, disk_mib=64))
            with pytest.raises(VmNotFound):
                await driver.status("tiny")

        run(harness, check)


class TestExec:
    def test_exit_code(self, harness: Harness, root_vm: str) -> None:
        result = run(harness, lambda d: d.exec(root_vm, ExecRequest(argv=("sh", "-c", "exit 7"))))
        assert result.exit_code == 7

    def test_stdout_and_stderr_are_separate(self, harness: Harness, root_vm: str) -> None:
        request = ExecRequest(argv=("sh", "-c", "echo out; echo err >&2; exit 3"))
        result = run(harness, lambda d: d.exec(root_vm, request))
        assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")

    def test_stdin_is_delivered(self, harness: Harness, root_vm: str) -> None:
        data = os.urandom(100_000)
        result = run(harness, lambda d: d.exec(root_vm, ExecRequest(argv=("cat",), stdin=data)))
        assert result.stdout == data

    def test_env_is_added_to_the_defaults(self, harness: Harness, root_vm: str) -> None:
        request = ExecRequest(
            argv=("sh", "-c", 'echo "$GREETING $HOME"; command -v ls'),
            env={"GREETING": "hello"},
        )
        result = run(harness, lambda d: d.exec(root_vm, request))
        assert result.stdout == b"hello /root\n/usr/bin/ls\n"

    def test_working_directory(self, harness: Harness, root_vm: str) -> None:
        request = ExecRequest(argv=("pwd",), working_dir="/usr/share")
        assert run(harness, lambda d: d.exec(root_vm, request)).stdout == b"/usr/share\n"

    def test_the_default_working_directory_is_roots_home(
        self, harness: Harness, root_vm: str
    ) -> None:
        assert run(harness, lambda d: d.exec(root_vm, ExecRequest(argv=("pwd",)))).stdout == (
            b"/root\n"
        )

    def test_a_missing_working_directory_is_refused(self, harness: Harness, root_vm: str) -> None:
        request = ExecRequest(argv=("pwd",), working_dir="/no/such/dir")
        with pytest.raises(InvalidRequest) as raised:
            run(harness, lambda d: d.exec(root_vm, request))
        assert str(raised.value) == "working directory not found: /no/such/dir"

    def test_missing_command_is_127(self, harness: Harness, root_vm: str) -> None:
        request = ExecRequest(argv=("no-such-command",))
        result = run(harness, lambda d: d.exec(root_vm, request))
        assert (result.exit_code, result.stdout, result.stderr) == (
            127,
            b"",
            b"vers-agent: cannot run no-such-command: command not found\n",
        )

    def test_a_program_that_cannot_run_is_126(self, harness: Harness, root_vm: str) -> None:
        request = ExecRequest(argv=("/etc/hostname",))
        result = run(harness, lambda d: d.exec(root_vm, request))
        assert result.exit_code == 126

    def test_the_command_is_looked_up_in_its_own_path(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            await driver.write_file(
                root_vm, "/opt/tools/hello", b"#!/bin/sh\necho hi\n", mode=0o755, create_dirs=True
            )
            request = ExecRequest(argv=("hello",), env={"PATH": "/opt/tools:/usr/bin:/bin"})
            assert (await driver.exec(root_vm, request)).stdout == b"hi\n"

        run(harness, check)

    def test_a_command_runs_in_a_session_of_its_own(self, harness: Harness, root_vm: str) -> None:
        request = ExecRequest(argv=("sh", "-c", "ps -o sid=,pgid= -p $$"))
        sid, pgid = run(harness, lambda d: d.exec(root_vm, request)).stdout.split()
        assert sid == pgid
        assert int(sid) > 1

    def test_background_processes_do_not_hold_the_call(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def check(driver: VmDriver) -> None:
            started = time.monotonic()
            result = await driver.exec(
                root_vm, ExecRequest(argv=("sh", "-c", "sleep 25 & echo started"))
            )
            assert time.monotonic() - started < 2.0
            assert (result.exit_code, result.stdout) == (0, b"started\n")
            # It keeps running, detached, and its later writes do not kill it.
            assert await shell(driver, root_vm, "pgrep -cx sleep || :") != b"0\n"
            await shell(driver, root_vm, "pkill -x sleep || :")

        run(harness, check)

    def test_a_background_process_that_writes_keeps_running(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def check(driver: VmDriver) -> None:
            script = "(for i in 1 2 3 4 5 6; do echo tick; sleep 0.2; done; touch /tmp/ticked) &"
            await driver.exec(root_vm, ExecRequest(argv=("sh", "-c", script)))
            await asyncio.sleep(2.5)
            assert await shell(driver, root_vm, "ls /tmp/ticked") == b"/tmp/ticked\n"

        run(harness, check)

    def test_a_signal_is_reported_as_128_plus_its_number(
        self, harness: Harness, root_vm: str
    ) -> None:
        request = ExecRequest(argv=("sh", "-c", "kill -KILL $$"))
        assert run(harness, lambda d: d.exec(root_vm, request)).exit_code == 128 + 9

    def test_timeout_kills_the_command_and_what_it_started(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def check(driver: VmDriver) -> None:
            request = ExecRequest(
                argv=("sh", "-c", "echo started; sleep 31 & sleep 32"), timeout_seconds=1.0
            )
            started = time.monotonic()
            result = await driver.exec(root_vm, request)
            assert time.monotonic() - started < 2.0
            assert (result.timed_out, result.exit_code, result.stdout) == (
                True,
                128 + 9,
                b"started\n",
            )
            left = await shell(driver, root_vm, "ps -e -o args= | grep -c '^sleep 3[12]$' || :")
            assert left == b"0\n"

        run(harness, check)

    def test_timeout_kills_reparented_and_escaped_descendants(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def check(driver: VmDriver) -> None:
            # One leaves through a subshell (reparented), one through setsid (its own session).
            script = "(sleep 302 &); setsid sleep 303 & sleep 100"
            started = time.monotonic()
            result = await driver.exec(
                root_vm, ExecRequest(argv=("sh", "-c", script), timeout_seconds=2.0)
            )
            answered = time.monotonic() - started
            assert result.timed_out
            assert 2.0 <= answered < 3.0
            left = await shell(driver, root_vm, "ps -e -o args= | grep -c '^sleep 30[23]$' || :")
            assert left == b"0\n"

        run(harness, check)

    def test_output_beyond_the_limit_is_cut_and_says_so(
        self, harness: Harness, root_vm: str
    ) -> None:
        request = ExecRequest(
            argv=("sh", "-c", "head -c 20000000 /dev/zero; echo done >&2"),
            output_limit=16 * MIB,
        )
        result = run(harness, lambda d: d.exec(root_vm, request))
        assert (len(result.stdout), result.stdout_truncated, result.stdout_bytes) == (
            16 * MIB,
            True,
            20_000_000,
        )
        assert (result.stderr, result.stderr_truncated, result.exit_code) == (b"done\n", False, 0)

    def test_streamed_output_is_whole_and_comes_as_written(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def check(driver: VmDriver) -> None:
            arrivals: list[tuple[float, str, bytes]] = []

            async def sink(stream: str, data: bytes) -> None:
                arrivals.append((time.monotonic(), stream, data))

            script = "echo one; sleep 1; echo two >&2; sleep 1; head -c 20000000 /dev/zero"
            started = time.monotonic()
            result = await driver.exec(root_vm, ExecRequest(argv=("sh", "-c", script)), sink)
            assert (result.exit_code, result.stdout, result.stdout_truncated) == (0, b"", False)
            assert arrivals[0][1:] == ("stdout", b"one\n")
            assert arrivals[0][0] - started < 0.5
            two = next(arrival for arrival in arrivals if arrival[1] == "stderr")
            assert two[2] == b"two\n"
            assert 0.9 < two[0] - started < 1.6
            stdout = b"".join(data for _, stream, data in arrivals if stream == "stdout")
            assert stdout == b"one\n" + bytes(20_000_000)

        run(harness, check)

    def test_stdin_of_10_mib(self, harness: Harness, root_vm: str) -> None:
        data = os.urandom(10 * MIB)
        request = ExecRequest(argv=("sha256sum",), stdin=data)
        result = run(harness, lambda d: d.exec(root_vm, request))
        assert result.stdout == f"{hashlib.sha256(data).hexdigest()}  -\n".encode()

    def test_concurrent_execs_do_not_wait_for_each_other(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def check(driver: VmDriver) -> None:
            started = time.monotonic()
            slow = asyncio.ensure_future(
                driver.exec(root_vm, ExecRequest(argv=("sh", "-c", "sleep 3; echo slow")))
            )
            quick = await driver.exec(root_vm, ExecRequest(argv=("echo", "quick")))
            assert quick.stdout == b"quick\n"
            assert time.monotonic() - started < 2.0
            many = await asyncio.gather(
                *(
                    driver.exec(root_vm, ExecRequest(argv=("sh", "-c", f"sleep 1; echo {n}")))
                    for n in range(5)
                )
            )
            assert [result.stdout for result in many] == [f"{n}\n".encode() for n in range(5)]
            assert (await slow).stdout == b"slow\n"
            assert time.monotonic() - started < 5.0

        run(harness, check)


class TestFiles:
    def test_a_5_mib_file_round_trips(self, harness: Harness, root_vm: str) -> None:
        data = os.urandom(5 * MIB)

        async def check(driver: VmDriver) -> None:
            await driver.write_file(root_vm, "/root/big.bin", data)
            assert await driver.read_file(root_vm, "/root/big.bin") == data
            size = await shell(driver, root_vm, "stat -c %s /root/big.bin")
            assert size == f"{5 * MIB}\n".encode()

        run(harness, check)

    def test_reading_a_missing_file_is_not_found(self, harness: Harness, root_vm: str) -> None:
        with pytest.raises(GuestFileNotFound):
            run(harness, lambda d: d.read_file(root_vm, "/no/such/file"))

    def test_mode_and_parent_directories(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            await driver.write_file(
                root_vm, "/srv/new/dir/secret", b"s3cret", mode=0o600, create_dirs=True
            )
            stat = await shell(driver, root_vm, "stat -c '%a %s' /srv/new/dir/secret")
            assert stat == b"600 6\n"
            assert await driver.read_file(root_vm, "/srv/new/dir/secret") == b"s3cret"

        run(harness, check)

    def test_devices_directories_and_fifos_are_not_files(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def check(driver: VmDriver) -> None:
            await shell(driver, root_vm, "mkfifo /tmp/fifo")
            for path in ("/dev/zero", "/tmp", "/tmp/fifo"):
                with pytest.raises(NotRegularFile) as raised:
                    await driver.read_file(root_vm, path)
                assert str(raised.value) == f"not a regular file: {path}"
            for path in ("/dev/null", "/tmp/fifo", "/root"):
                with pytest.raises(NotRegularFile):
                    await driver.write_file(root_vm, path, b"x")

        run(harness, check)

    def test_a_file_over_max_bytes_is_refused(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            await driver.write_file(root_vm, "/root/ten", b"0123456789")
            with pytest.raises(FileTooLarge):
                await driver.read_file(root_vm, "/root/ten", max_bytes=9)
            assert await driver.read_file(root_vm, "/root/ten", max_bytes=10) == b"0123456789"

        run(harness, check)

    def test_files_stream_both_ways(self, harness: Harness, root_vm: str) -> None:
        piece = os.urandom(MIB)

        async def pieces() -> AsyncIterator[bytes]:
            for _ in range(32):
                yield piece

        async def check(driver: VmDriver) -> None:
            written = await driver.write_file(root_vm, "/root/streamed.bin", pieces())
            assert written == 32 * MIB
            digest = hashlib.sha256()
            async with driver.open_file(root_vm, "/root/streamed.bin") as reader:
                assert reader.size == 32 * MIB
                async for chunk in reader.chunks():
                    digest.update(chunk)
            assert digest.digest() == hashlib.sha256(piece * 32).digest()
            await shell(driver, root_vm, "rm /root/streamed.bin")

        run(harness, check)

    def test_a_write_that_fails_half_way_leaves_the_old_file(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def failing() -> AsyncIterator[bytes]:
            yield b"new content, " * 100_000
            raise ConnectionResetError("the client went away")

        async def check(driver: VmDriver) -> None:
            await driver.write_file(root_vm, "/root/kept.txt", b"old content\n")
            with pytest.raises(ConnectionResetError):
                await driver.write_file(root_vm, "/root/kept.txt", failing())
            assert await driver.read_file(root_vm, "/root/kept.txt") == b"old content\n"
            await asyncio.sleep(0.5)
            assert await shell(driver, root_vm, "ls -A /root | grep -c vers- || :") == b"0\n"

        run(harness, check)

    def test_a_rewrite_keeps_mode_and_owner(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            await driver.write_file(root_vm, "/tmp/owned", b"a", mode=0o640)
            await shell(driver, root_vm, "chown 1234:5678 /tmp/owned")
            await driver.write_file(root_vm, "/tmp/owned", b"bb")
            assert await shell(driver, root_vm, "stat -c '%a %u %g %s' /tmp/owned") == (
                b"640 1234 5678 2\n"
            )

        run(harness, check)


class TestPauseResume:
    def test_pause_stops_the_counter_and_resume_continues_it(
        self, harness: Harness, root_vm: str
    ) -> None:
        async def check(driver: VmDriver) -> None:
            before = len(await counter_values(driver, root_vm))
            await driver.pause(root_vm)
            try:
                assert (await driver.status(root_vm)).state is VmState.PAUSED
                with pytest.raises(VmNotRunning):
                    await driver.exec(root_vm, ExecRequest(argv=("true",)))
                await asyncio.sleep(2.0)
            finally:
                await driver.resume(root_vm)
            assert (await driver.status(root_vm)).state is VmState.RUNNING
            after_pause = len(await counter_values(driver, root_vm))
            # Running, the counter would have ticked 10 times in those 2 s.
            assert after_pause - before <= 3
            await asyncio.sleep(1.0)
            assert len(await counter_values(driver, root_vm)) > after_pause

        run(harness, check)


class TestCommitAndBranch:
    def test_vms_restored_from_a_commit_continue_where_it_was(
        self, harness: Harness, family: Family
    ) -> None:
        async def check(driver: VmDriver) -> None:
            for vm_id in family.restored:
                status = await driver.status(vm_id)
                assert (status.state, status.spec, status.parent_commit_id) == (
                    VmState.RUNNING,
                    SPEC,
                    family.commit_id,
                )
                assert await driver.read_file(vm_id, MARKER_PATH) == MARKER
                await assert_counter_continues(driver, vm_id, family)

        run(harness, check)

    def test_vms_branched_from_a_running_vm_continue_where_it_was(
        self, harness: Harness, root_vm: str, family: Family
    ) -> None:
        async def check(driver: VmDriver) -> None:
            for vm_id in family.branched:
                status = await driver.status(vm_id)
                assert status.parent_commit_id == family.branch_commit_id
                assert await driver.read_file(vm_id, MARKER_PATH) == MARKER
                await assert_counter_continues(driver, vm_id, family)
            assert (await driver.status(root_vm)).state is VmState.RUNNING
            await assert_counter_continues(driver, root_vm, family)

        run(harness, check)

    def test_branches_diverge_from_each_other(self, harness: Harness, family: Family) -> None:
        async def check(driver: VmDriver) -> None:
            vms = family.restored + family.branched
            for vm_id in vms:
                await driver.write_file(vm_id, "/root/identity", vm_id.encode())
            for vm_id in vms:
                assert await driver.read_file(vm_id, "/root/identity") == vm_id.encode()

        run(harness, check)

    def test_each_branch_gets_the_current_time_and_its_own_randomness(
        self, harness: Harness, family: Family
    ) -> None:
        async def check(driver: VmDriver) -> None:
            random_bytes = set()
            for vm_id in family.restored + family.branched:
                now = float(await shell(driver, vm_id, "date +%s.%N"))
                assert abs(now - time.time()) < 10
                random_bytes.add(
                    await shell(driver, vm_id, "head -c 16 /dev/urandom | od -An -tx1")
                )
            assert len(random_bytes) == len(family.restored) + len(family.branched)

        run(harness, check)

    def test_a_commit_of_a_restored_vm_restores_too(self, harness: Harness, family: Family) -> None:
        async def check(driver: VmDriver) -> None:
            source = family.restored[0]
            await driver.write_file(source, "/root/second.txt", b"second generation")
            commit = await driver.commit(source, "commit-second", keep_paused=True)
            assert commit.parent_commit_id == family.commit_id
            assert (await driver.status(source)).state is VmState.PAUSED
            (grandchild,) = await driver.restore(commit.commit_id, ["grandchild"])
            assert grandchild.parent_commit_id == commit.commit_id
            assert await driver.read_file("grandchild", "/root/second.txt") == b"second generation"
            assert await driver.read_file("grandchild", MARKER_PATH) == MARKER
            await assert_counter_continues(driver, "grandchild", family)
            await driver.resume(source)
            await assert_counter_continues(driver, source, family)

        run(harness, check)

    def test_inventory_lists_vms_and_commits(
        self, harness: Harness, root_vm: str, family: Family
    ) -> None:
        inventory = run(harness, lambda d: d.inventory())
        vms = {vm.vm_id: vm for vm in inventory.vms}
        commits = {commit.commit_id: commit for commit in inventory.commits}
        for vm_id in (root_vm, *family.restored, *family.branched):
            assert vms[vm_id].state is VmState.RUNNING
        assert commits[family.commit_id].source_vm_id == root_vm
        assert commits[family.branch_commit_id].source_vm_id == root_vm

    def test_restoring_an_unknown_commit_is_not_found(self, harness: Harness) -> None:
        with pytest.raises(CommitNotFound):
            run(harness, lambda d: d.restore("no-such-commit", ["orphan"]))

    def test_an_exec_running_during_a_commit_finishes(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            running = asyncio.ensure_future(
                driver.exec(root_vm, ExecRequest(argv=("sh", "-c", "sleep 1; echo done")))
            )
            await asyncio.sleep(0.3)
            await driver.commit(root_vm, "commit-during-exec")
            assert (await running).stdout == b"done\n"
            await driver.delete_commit("commit-during-exec")

        run(harness, check)

    def test_a_commit_id_cannot_be_reused(
        self, harness: Harness, root_vm: str, family: Family
    ) -> None:
        with pytest.raises(CommitAlreadyExists):
            run(harness, lambda d: d.commit(root_vm, family.commit_id))


class TestIdentity:
    def test_a_restored_guest_has_the_hosts_time(self, harness: Harness, family: Family) -> None:
        async def check(driver: VmDriver) -> None:
            (vm,) = await driver.restore(family.commit_id, ["clocked"])
            before = time.time()
            guest_time = float(await shell(driver, vm.vm_id, "date +%s.%N"))
            after = time.time()
            assert before - 0.1 <= guest_time <= after + 0.1
            await driver.delete_vm(vm.vm_id)

        run(harness, check)

    def test_the_clock_is_right_again_after_a_pause(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            await driver.pause(root_vm)
            await asyncio.sleep(1.5)
            await driver.resume(root_vm)
            before = time.time()
            guest_time = float(await shell(driver, root_vm, "date +%s.%N"))
            after = time.time()
            assert before - 0.1 <= guest_time <= after + 0.1

        run(harness, check)

    def test_every_vm_has_its_own_hostname_and_host_key(
        self, harness: Harness, root_vm: str, family: Family
    ) -> None:
        async def check(driver: VmDriver) -> None:
            keys = set()
            for vm_id in (root_vm, *family.restored, *family.branched):
                assert await shell(driver, vm_id, "hostname") == f"{vm_id}\n".encode()
                keys.add(await driver.read_file(vm_id, "/etc/ssh/ssh_host_ed25519_key.pub"))
            assert len(keys) == 1 + len(family.restored) + len(family.branched)

        run(harness, check)


class TestRestart:
    def test_a_new_driver_object_finds_running_vms(self, harness: Harness, root_vm: str) -> None:
        inventory = run(harness, lambda d: d.inventory())
        assert {vm.vm_id: vm.state for vm in inventory.vms}[root_vm] is VmState.RUNNING
        result = run(harness, lambda d: d.exec(root_vm, ExecRequest(argv=("cat", MARKER_PATH))))
        assert result.stdout == MARKER


class TestDeath:
    def test_a_vm_whose_process_was_killed_reports_dead(
        self, harness: Harness, family: Family
    ) -> None:
        run(harness, lambda d: d.restore(family.commit_id, ["victim"]))
        harness.kill_hypervisor("victim")

        async def check(driver: VmDriver) -> None:
            deadline = time.monotonic() + 10
            while (await driver.status("victim")).state is not VmState.DEAD:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            with pytest.raises(VmNotRunning) as raised:
                await driver.exec("victim", ExecRequest(argv=("true",)))
            assert raised.value.state is VmState.DEAD
            await driver.delete_vm("victim")

        run(harness, check)
        assert harness.leftovers("victim") == []


class TestDelete:
    def test_delete_leaves_no_process_and_no_files(self, harness: Harness, family: Family) -> None:
        run(harness, lambda d: d.restore(family.commit_id, ["doomed"]))
        assert harness.leftovers("doomed") != []
        run(harness, lambda d: d.delete_vm("doomed"))
        assert harness.leftovers("doomed") == []
        with pytest.raises(VmNotFound):
            run(harness, lambda d: d.status("doomed"))

    def test_deleting_a_commit_keeps_its_vms_running(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            await driver.branch(root_vm, "commit-short-lived", ["survivor"])
            await driver.delete_commit("commit-short-lived")
            with pytest.raises(CommitNotFound):
                await driver.restore("commit-short-lived", ["never"])
            assert await driver.read_file("survivor", MARKER_PATH) == MARKER
            await driver.delete_vm("survivor")

        run(harness, check)


class TestDisk:
    def test_grow_disk_grows_the_file_system(self, harness: Harness, root_vm: str) -> None:
        async def check(driver: VmDriver) -> None:
            grown = await driver.grow_disk(root_vm, 1536)
            assert grown.spec.disk_mib == 1536
            sectors = await shell(driver, root_vm, "cat /sys/block/vda/size")
            assert int(sectors) * 512 == 1536 * MIB
            size_mib = int(
                await shell(driver, root_vm, "df -BM --output=size / | tail -1 | tr -d M")
            )
            assert 1400 < size_mib <= 1536
            with pytest.raises(InvalidRequest):
                await driver.grow_disk(root_vm, 1024)

        run(harness, check)


class TestSsh:
    def test_ssh_reaches_the_vm_and_each_branch_has_its_own_port(
        self, harness: Harness, root_vm: str, family: Family, tmp_path: Path
    ) -> None:
        for vm_id in (root_vm, family.branched[0]):
            endpoint = run(harness, lambda d, vm_id=vm_id: d.ssh_endpoint(vm_id))
            key = tmp_path / f"{vm_id}.key"
            key.write_text(endpoint.private_key)
            key.chmod(0o600)
            result = subprocess.run(
                [
                    "ssh", "-i", str(key), "-p", str(endpoint.port),
                    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                    f"{endpoint.user}@{endpoint.host}", "cat", MARKER_PATH,
                ],
                capture_output=True,
                timeout=120,
                check=False,
            )  # fmt: skip
            assert (result.returncode, result.stdout) == (0, MARKER), result.stderr
        root_port = run(harness, lambda d: d.ssh_endpoint(root_vm)).port
        branch_port = run(harness, lambda d: d.ssh_endpoint(family.branched[0])).port
        assert root_port != branch_port
