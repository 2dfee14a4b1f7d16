"""Inside a VM through the API and the official SDK: exec, streams, logs, files, identity,
and the lineage of its commits.

One server on SQLite for the module and one root VM that the tests share (each leaves it
as it found it). The server's JSON file limit is lowered to 12 MiB so that its edges are
cheap to reach; raw transfers have none.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from vers_sdk.errors import APIError
from vers_sdk.models import CreateNewRootVmParams, ReadFileVmParams

from tests.support import (
    IMAGES_DIR,
    Backend,
    Key,
    Server,
    error,
    make_key,
    sdk_call,
    shut_down,
)
from vers_orchestrator.drivers.qemu.images import ensure_default_image

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
JSON_FILE_LIMIT = 12 * MIB
SLOW_CALL = {"timeout": 240.0}
ROOT_CONFIG = {"vcpu_count": 1, "mem_size_mib": 256, "fs_size_mib": 1536}


class Guest:
    def __init__(self, backend: Backend, server: Server, key: Key) -> None:
        self.backend = backend
        self.server = server
        self.key = key
        self.vm_id = ""

    def sdk(self, call: Any) -> Any:
        return sdk_call(self.server, self.key.token, call, **SLOW_CALL)

    def client(self, **headers: str) -> httpx.Client:
        client = self.server.client(self.key.token, **headers)
        client.timeout = httpx.Timeout(240.0)
        return client

    def exec(self, command: list[str], vm_id: str | None = None, **extra: Any) -> Any:
        target = vm_id or self.vm_id
        return self.sdk(lambda c: c.exec_vm(target, {"command": command, **extra}))

    def shell(self, script: str, vm_id: str | None = None) -> str:
        result = self.exec(["sh", "-c", script], vm_id)
        assert result["exit_code"] == 0, result
        text: str = result["stdout"]
        return text


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    ensure_default_image(IMAGES_DIR, lambda line: print(line, file=sys.stderr, flush=True))
    backend = Backend.create(
        "sqlite", tmp_path_factory.mktemp("guest"), MAX_FILE_BYTES=str(JSON_FILE_LIMIT)
    )
    server = Server(backend, tmp_path_factory.mktemp("guest-server") / "server.log").start()
    shared = Guest(backend, server, make_key(backend))
    try:
        created = shared.sdk(
            lambda c: c.create_new_root_vm(
                {"vm_config": ROOT_CONFIG}, CreateNewRootVmParams(wait_boot=True)
            )
        )
        shared.vm_id = created["vm_id"]
        yield shared
    finally:
        leftovers = shut_down(server, backend, shared.key.token)
        assert leftovers == [], "VMs outlived the module"


def _running(guest: Guest, pattern: str) -> int:
    """How many processes of the VM have a command line matching `pattern` (pgrep -f)."""
    return int(guest.shell(f"pgrep -cf '{pattern}' || :"))


class TestExec:
    def test_a_background_process_does_not_hold_the_call(self, guest: Guest) -> None:
        started = time.monotonic()
        result = guest.exec(["/bin/sh", "-c", "sleep 25 & echo started"])
        assert time.monotonic() - started < 10  # the call would last 25 s if it waited
        assert result == {
            "exec_id": result["exec_id"],
            "exit_code": 0,
            "stdout": "started\n",
            "stderr": "",
            "stdout_truncated": False,
            "stderr_truncated": False,
            "timed_out": False,
        }
        assert _running(guest, "^sleep 25$") == 1
        guest.shell("pkill -x sleep || :")

    def test_a_timeout_is_124_with_the_output_and_kills_what_the_command_started(
        self, guest: Guest
    ) -> None:
        result = guest.exec(["/bin/sh", "-c", "sleep 60 & echo started; sleep 30"], timeout_secs=5)
        assert (result["exit_code"], result["stdout"], result["timed_out"]) == (
            124,
            "started\n",
            True,
        )
        assert _running(guest, "^sleep (60|30)$") == 0

    def test_a_timeout_kills_reparented_processes_too(self, guest: Guest) -> None:
        result = guest.exec(["/bin/sh", "-c", "(sleep 302 &); sleep 100"], timeout_secs=3)
        assert (result["exit_code"], result["timed_out"]) == (124, True)
        assert _running(guest, "^sleep (302|100)$") == 0

    def test_output_beyond_16_mib_is_cut_and_the_reply_says_so(self, guest: Guest) -> None:
        result = guest.exec(["/bin/sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' a"])
        assert (result["exit_code"], len(result["stdout"]), result["stdout_truncated"]) == (
            0,
            16 * MIB,
            True,
        )
        assert set(result["stdout"]) == {"a"}
        assert result["stderr_truncated"] is False

    def test_a_streamed_exec_has_no_output_limit(self, guest: Guest) -> None:
        body = {"command": ["/bin/sh", "-c", "head -c 20000000 /dev/zero"]}
        size = 0
        with (
            guest.client() as client,
            client.stream("POST", f"/api/v1/vm/{guest.vm_id}/exec/stream", json=body) as reply,
        ):
            assert reply.status_code == 200
            lines = [json.loads(line) for line in reply.iter_lines()]
        for line in lines[:-1]:
            size += len(base64.b64decode(line["data_b64"]))
        assert size == 20_000_000
        assert lines[-1]["type"] == "exit"
        assert lines[-1]["exit_code"] == 0

    def test_a_streamed_chunk_arrives_while_the_command_still_runs(self, guest: Guest) -> None:
        body = {"command": ["/bin/sh", "-c", "echo one; sleep 3; echo two"]}
        arrivals = []
        with (
            guest.client() as client,
            client.stream("POST", f"/api/v1/vm/{guest.vm_id}/exec/stream", json=body) as reply,
        ):
            assert reply.headers["content-type"] == "application/x-ndjson"
            for line in reply.iter_lines():
                arrivals.append((time.monotonic(), json.loads(line)))
        data = [base64.b64decode(line["data_b64"]) for _, line in arrivals[:-1]]
        assert data == [b"one\n", b"two\n"]
        # Had the stream held the first chunk back, both would come at the end together.
        assert arrivals[1][0] - arrivals[0][0] > 2.0

    def test_a_missing_working_directory_is_400(self, guest: Guest) -> None:
        with guest.client() as client:
            reply = client.post(
                f"/api/v1/vm/{guest.vm_id}/exec", json={"command": ["pwd"], "working_dir": "/x"}
            )
        assert (reply.status_code, reply.json()) == (
            400,
            error("working directory not found: /x"),
        )
        assert guest.exec(["pwd"])["stdout"] == "/root\n"

    def test_a_streamed_exec_that_cannot_start_is_a_json_error_and_frees_its_id(
        self, guest: Guest
    ) -> None:
        exec_id = str(uuid.uuid4())
        stream_url = f"/api/v1/vm/{guest.vm_id}/exec/stream"
        with guest.client() as client:
            missing = client.post(
                stream_url, json={"command": ["pwd"], "working_dir": "/x", "exec_id": exec_id}
            )
            guest.sdk(lambda c: c.update_vm_state(guest.vm_id, {"state": "Sleeping"}))
            try:
                paused = client.post(stream_url, json={"command": ["pwd"], "exec_id": exec_id})
            finally:
                guest.sdk(lambda c: c.update_vm_state(guest.vm_id, {"state": "Running"}))
            ran = client.post(stream_url, json={"command": ["pwd"], "exec_id": exec_id})
        assert (missing.status_code, missing.json()) == (
            400,
            error("working directory not found: /x"),
        )
        assert (paused.status_code, paused.json()) == (409, error("vm is paused"))
        lines = [json.loads(line) for line in ran.text.splitlines()]
        assert base64.b64decode(lines[0]["data_b64"]) == b"/root\n"
        assert lines[-1] == {"type": "exit", "exec_id": exec_id, "exit_code": 0}

    def test_arguments_of_400_kb(self, guest: Guest) -> None:
        parts = [letter * 100_000 for letter in "abcd"]
        result = guest.exec(["/bin/sh", "-c", 'echo $#; printf %s "$@" | wc -c', "sh", *parts])
        assert result["stdout"] == "4\n400000\n"

    def test_commands_that_exhaust_memory_or_processes_leave_the_vm_answering(
        self, guest: Guest
    ) -> None:
        fill = guest.exec(
            [
                "/bin/sh",
                "-c",
                "head -c 1G /dev/zero > /dev/shm/fill; head -c 1G /dev/zero > /run/fill",
            ],
            timeout_secs=60,
        )
        emptied = guest.exec(["rm", "/dev/shm/fill", "/run/fill"])
        hog = guest.exec(["python3", "-c", "b = [bytearray(1 << 20) for _ in range(1024)]"])
        bomb = guest.exec(["/bin/sh", "-c", "f() { f | f & }; f; sleep 60"], timeout_secs=5)
        # tmpfs fills up before the memory commands may use does.
        assert (fill["exit_code"], fill["stderr"].count("No space left on device")) == (1, 2)
        assert emptied["exit_code"] == 0
        # Killed by the commands' own out-of-memory killer, not the guest's.
        assert (hog["exit_code"], hog["stderr"]) == (137, "")
        # Killed at the deadline, or whole by the out-of-memory killer before it.
        assert (bomb["exit_code"], bomb["timed_out"]) in ((124, True), (137, False))
        # Nothing a command started is left beside the agent, out of its cgroup's reach.
        beside_agent = guest.shell("cat /sys/fs/cgroup/vers-agent/cgroup.procs | wc -l")
        assert beside_agent == "1\n"

    def test_a_fork_bomb_left_running_does_not_take_later_commands_turns(
        self, guest: Guest
    ) -> None:
        exec_id = str(uuid.uuid4())
        bomb = "b() { b | b & }; b"
        left = guest.exec(["/bin/sh", "-c", bomb], timeout_secs=5, exec_id=exec_id)
        assert left["exit_code"] == 0  # the shell returned; the bomb runs on in its cgroup
        cgroup = f"/sys/fs/cgroup/vers-exec/*-{exec_id}"
        # Later commands run while it does: it meets the commands' process limit (or their
        # out-of-memory killer) instead of pressing the guest's kernel.
        limit = int(guest.shell(f"cat {cgroup}/pids.max"))
        assert 512 <= limit <= 1024  # one process per 256 KiB of the commands' memory
        for _ in range(5):
            count = guest.shell(f"cat {cgroup}/cgroup.procs 2>/dev/null | wc -l")
            assert int(count) <= limit
            time.sleep(1)
        events = guest.shell(
            f"cat {cgroup}/pids.events 2>/dev/null || echo 'max 0'; "
            "cat /sys/fs/cgroup/vers-exec/memory.events"
        )
        met_limit = int(events.split("max ")[1].split()[0])
        oom_killed = int(events.split("oom_group_kill ")[1].split()[0])
        assert met_limit + oom_killed >= 1, events
        # What is left of it dies with its cgroup.
        guest.shell(f"for c in {cgroup}; do [ -d $c ] && echo 1 > $c/cgroup.kill; done; true")
        for _ in range(30):
            if guest.shell(f"cat {cgroup}/cgroup.procs 2>/dev/null | wc -l") == "0\n":
                break
            time.sleep(1)
        assert guest.shell(f"cat {cgroup}/cgroup.procs 2>/dev/null | wc -l") == "0\n"

    def test_stdin_of_10_mib(self, guest: Guest) -> None:
        text = "0123456789abcdef" * (10 * MIB // 16)
        result = guest.exec(["sha256sum"], stdin=text)
        assert result["stdout"] == f"{hashlib.sha256(text.encode()).hexdigest()}  -\n"

    def test_concurrent_execs_do_not_wait_for_each_other(self, guest: Guest) -> None:
        results: dict[int, Any] = {}

        def run(number: int) -> None:
            results[number] = guest.exec(["/bin/sh", "-c", f"sleep 2; echo {number}"])

        threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        quick = guest.exec(["echo", "quick"])
        quick_done = time.monotonic() - started
        for thread in threads:
            thread.join()
        assert quick["stdout"] == "quick\n"
        assert quick_done < 2.0  # it did not wait for the sleeping ones
        assert {n: r["stdout"] for n, r in results.items()} == {n: f"{n}\n" for n in range(4)}

    def test_an_exec_running_during_a_commit_finishes(self, guest: Guest) -> None:
        results: list[Any] = []
        running = threading.Thread(
            target=lambda: results.append(guest.exec(["/bin/sh", "-c", "sleep 2; echo done"]))
        )
        running.start()
        time.sleep(0.5)
        commit = guest.sdk(lambda c: c.commit_vm(guest.vm_id, {}))
        running.join()
        assert [result["stdout"] for result in results] == ["done\n"]
        guest.sdk(lambda c: c.delete_commit(commit["commit_id"]))


class TestFiles:
    def test_the_json_form_carries_files_up_to_the_limit(self, guest: Guest) -> None:
        data = os.urandom(2 * MIB)  # three times what the general 1 MiB body limit allows
        body = {"path": "/root/two.bin", "content_b64": base64.b64encode(data).decode()}
        guest.sdk(lambda c: c.write_file_vm(guest.vm_id, body))
        read = guest.sdk(
            lambda c: c.read_file_vm(guest.vm_id, ReadFileVmParams(path="/root/two.bin"))
        )
        assert base64.b64decode(read["content_b64"]) == data
        guest.shell("head -c 13631488 /dev/zero > /root/large.bin")
        with pytest.raises(APIError) as refused:
            guest.sdk(
                lambda c: c.read_file_vm(guest.vm_id, ReadFileVmParams(path="/root/large.bin"))
            )
        assert (refused.value.status, refused.value.error_message) == (
            413,
            f"/root/large.bin is {13 * MIB} bytes; the JSON form carries at most"
            f" {JSON_FILE_LIMIT}: read it with Accept: application/octet-stream",
        )
        too_big = {"path": "/root/x", "content_b64": base64.b64encode(bytes(13 * MIB)).decode()}
        with guest.client() as client:
            reply = client.put(f"/api/v1/vm/{guest.vm_id}/files", json=too_big)
        assert reply.status_code == 413
        guest.shell("rm /root/two.bin /root/large.bin")

    def test_a_256_mib_binary_file_round_trips_raw_with_flat_server_memory(
        self, guest: Guest
    ) -> None:
        piece = os.urandom(MIB)
        expected = hashlib.sha256(piece * 256).hexdigest()
        sampler = _RssSampler(guest.server)

        def pieces() -> Iterator[bytes]:
            for _ in range(256):
                yield piece

        url = f"/api/v1/vm/{guest.vm_id}/files"
        with sampler, guest.client() as client:
            written = client.put(
                url,
                params={"path": "/root/big.bin"},
                content=pieces(),
                headers={"content-type": "application/octet-stream"},
            )
            assert written.status_code == 200, written.text
            digest = hashlib.sha256()
            with client.stream(
                "GET",
                url,
                params={"path": "/root/big.bin"},
                headers={"accept": "application/octet-stream"},
            ) as reply:
                assert reply.status_code == 200
                assert reply.headers["content-length"] == str(256 * MIB)
                for chunk in reply.iter_bytes():
                    digest.update(chunk)
        assert digest.hexdigest() == expected
        assert guest.shell("sha256sum /root/big.bin").split()[0] == expected
        assert sampler.growth < 64 * MIB, sampler.growth

    def test_a_download_stops_when_the_client_goes_away(self, guest: Guest) -> None:
        url = f"/api/v1/vm/{guest.vm_id}/files"
        with (
            guest.client() as client,
            client.stream(
                "GET",
                url,
                params={"path": "/root/big.bin"},
                headers={"accept": "application/octet-stream"},
            ) as reply,
        ):
            assert reply.status_code == 200
            next(reply.iter_bytes())
        agent_files = "ls -l /proc/$(pgrep -f 'm vers_agent')/fd | grep -c big.bin || :"
        deadline = time.monotonic() + 30
        while guest.shell(agent_files) != "0\n":
            assert time.monotonic() < deadline, "the guest went on reading the file"
            time.sleep(0.2)
        guest.shell("rm /root/big.bin")

    def test_an_upload_cut_short_leaves_the_old_file(self, guest: Guest) -> None:
        guest.shell("echo old > /root/kept.txt")

        def cut_short() -> Iterator[bytes]:
            for _ in range(8):
                yield bytes(MIB)
            raise ConnectionResetError("the client went away")

        with guest.client() as client, pytest.raises(ConnectionResetError):
            client.put(
                f"/api/v1/vm/{guest.vm_id}/files",
                params={"path": "/root/kept.txt"},
                content=cut_short(),
                headers={"content-type": "application/octet-stream"},
            )
        deadline = time.monotonic() + 30
        while guest.shell("ls -A /root | grep -c '^.kept.txt.vers-' || :") != "0\n":
            assert time.monotonic() < deadline, "the partial upload was not removed"
            time.sleep(0.2)
        assert guest.shell("cat /root/kept.txt") == "old\n"

    def test_raw_uploads_take_mode_and_create_dirs(self, guest: Guest) -> None:
        url = f"/api/v1/vm/{guest.vm_id}/files"
        headers = {"content-type": "application/octet-stream"}
        with guest.client() as client:
            written = client.put(
                url,
                params={"path": "/srv/raw/tool.sh", "mode": "0750", "create_dirs": "true"},
                content=b"#!/bin/sh\necho raw\n",
                headers=headers,
            )
            bad_mode = client.put(
                url, params={"path": "/root/x", "mode": "rwx"}, content=b"x", headers=headers
            )
            no_path = client.put(url, content=b"x", headers=headers)
            no_dir = client.put(url, params={"path": "/no/dir/x"}, content=b"x", headers=headers)
        assert written.status_code == 200
        assert guest.exec(["/srv/raw/tool.sh"])["stdout"] == "raw\n"
        assert guest.shell("stat -c %a /srv/raw/tool.sh") == "750\n"
        assert (bad_mode.status_code, bad_mode.json()) == (
            400,
            error("Failed to deserialize query string: mode must be octal: 'rwx'"),
        )
        assert (no_path.status_code, no_path.json()) == (400, error("path must not be empty"))
        assert (no_dir.status_code, no_dir.json()) == (
            400,
            error("the VM refused: no such directory: /no/dir"),
        )

    def test_devices_and_directories_are_not_regular_files(self, guest: Guest) -> None:
        url = f"/api/v1/vm/{guest.vm_id}/files"
        with guest.client() as client:
            zero = client.get(url, params={"path": "/dev/zero"})
            zero_raw = client.get(
                url, params={"path": "/dev/zero"}, headers={"accept": "application/octet-stream"}
            )
            directory = client.get(url, params={"path": "/root"})
            null = client.put(url, json={"path": "/dev/null", "content_b64": "eA=="})
        assert (zero.status_code, zero.json()) == (400, error("not a regular file: /dev/zero"))
        assert (zero_raw.status_code, zero_raw.json()) == (
            400,
            error("not a regular file: /dev/zero"),
        )
        assert (directory.status_code, directory.json()) == (
            400,
            error("not a regular file: /root"),
        )
        assert (null.status_code, null.json()) == (400, error("not a regular file: /dev/null"))

    def test_kernel_files_and_paths_naming_directories_are_not_regular_files(
        self, guest: Guest
    ) -> None:
        url = f"/api/v1/vm/{guest.vm_id}/files"
        raw = {"accept": "application/octet-stream"}
        with guest.client() as client:
            proc = client.get(url, params={"path": "/proc/self/status"})
            sys_raw = client.get(url, params={"path": "/sys/kernel/mm/ksm/run"}, headers=raw)
            slash = client.put(url, json={"path": "/root/new-dir/", "content_b64": "eA=="})
            dot = client.put(
                url,
                params={"path": "/root/."},
                content=b"x",
                headers={"content-type": raw["accept"]},
            )
        assert (proc.status_code, proc.json()) == (
            400,
            error("not a regular file: /proc/self/status"),
        )
        assert (sys_raw.status_code, sys_raw.json()) == (
            400,
            error("not a regular file: /sys/kernel/mm/ksm/run"),
        )
        assert (slash.status_code, slash.json()) == (
            400,
            error("not a regular file: /root/new-dir/"),
        )
        assert (dot.status_code, dot.json()) == (400, error("not a regular file: /root/."))
        assert guest.shell("test -e /root/new-dir || echo absent") == "absent\n"

    def test_kernel_files_mounted_elsewhere_are_not_regular_files(self, guest: Guest) -> None:
        guest.shell(
            "mkdir -p /mnt/p /mnt/s && mount -t proc proc /mnt/p && mount -t sysfs s /mnt/s"
        )
        url = f"/api/v1/vm/{guest.vm_id}/files"
        try:
            with guest.client() as client:
                kcore = client.get(
                    url,
                    params={"path": "/mnt/p/kcore"},
                    headers={"accept": "application/octet-stream"},
                )
                environ = client.get(url, params={"path": "/mnt/p/self/environ"})
                written = client.put(
                    url, json={"path": "/mnt/s/kernel/mm/ksm/run", "content_b64": "MQ=="}
                )
        finally:
            guest.shell("umount /mnt/p /mnt/s")
        assert (kcore.status_code, kcore.json()) == (400, error("not a regular file: /mnt/p/kcore"))
        assert (environ.status_code, environ.json()) == (
            400,
            error("not a regular file: /mnt/p/self/environ"),
        )
        assert (written.status_code, written.json()) == (
            400,
            error("not a regular file: /mnt/s/kernel/mm/ksm/run"),
        )


class TestDisk:
    def test_a_file_system_that_does_not_grow_keeps_the_disk_size_counted(
        self, guest: Guest
    ) -> None:
        # The guest's resize2fs fails, with text that would forge a log line if written raw.
        guest.shell(
            "mv /usr/sbin/resize2fs /usr/sbin/resize2fs.real && printf '#!/bin/sh\\n"
            'echo "oops\\n2026-01-01 00:00:00,000 INFO vers_orchestrator.access forged" >&2'
            "\\nexit 1\\n' > /usr/sbin/resize2fs && chmod +x /usr/sbin/resize2fs"
        )
        try:
            with guest.client() as client:
                size = int(guest.shell("blockdev --getsize64 /dev/vda")) // (1024 * 1024)
                grown = client.patch(
                    f"/api/v1/vm/{guest.vm_id}/disk", json={"fs_size_mib": size + 64}
                )
                assert (grown.status_code, grown.json()) == (
                    400,
                    error(
                        f"the VM refused: the disk is now {size + 64} MiB, but growing its file"
                        " system failed (resize2fs exited 1): oops\n2026-01-01 00:00:00,000 INFO"
                        " vers_orchestrator.access forged"
                    ),
                )
                # The disk did grow, and is counted at its new size.
                again = client.patch(
                    f"/api/v1/vm/{guest.vm_id}/disk", json={"fs_size_mib": size + 64}
                )
                assert (again.status_code, again.json()) == (
                    400,
                    error(f"fs_size_mib must be larger than the current size ({size + 64} MiB)"),
                )
        finally:
            guest.shell("mv /usr/sbin/resize2fs.real /usr/sbin/resize2fs")
        assert int(guest.shell("blockdev --getsize64 /dev/vda")) == (size + 64) * 1024 * 1024
        # The guest's text is one escaped line of the server's log, not a forged record.
        log = guest.server.log_text()
        assert "\nINFO vers_orchestrator.access forged" not in log
        assert "\n2026-01-01 00:00:00,000 INFO vers_orchestrator.access forged" not in log


class TestEnvironment:
    def test_new_vms_get_their_makers_variables_over_the_images(self, guest: Guest) -> None:
        made: list[str] = []
        try:
            with guest.client() as client:
                set_ = client.put(
                    "/api/v1/env_vars", json={"vars": {"GREETING": "hello world"}, "replace": True}
                )
                assert set_.status_code == 200
                booted = client.post(
                    "/api/v1/vm/new_root?wait_boot=true", json={"vm_config": ROOT_CONFIG}
                )
                assert booted.status_code == 201, booted.text
                vm_id = booted.json()["vm_id"]
                made.append(vm_id)
            show = 'echo "$GREETING|$HOME|$PATH"'
            seen = guest.shell(show, vm_id).strip().split("|")
            # The user's variable, beside the defaults (the image's PATH is kept).
            assert seen[:2] == ["hello world", "/root"]
            assert "/usr/bin" in seen[2].split(":")
            # An exec's own env wins; SSH sessions read the same file.
            overridden = guest.exec(["sh", "-c", show], vm_id, env={"GREETING": "mine"})
            assert overridden["stdout"].startswith("mine|")
            assert "GREETING=hello world\n" in guest.shell("cat /etc/environment", vm_id)
            # A branch gets the variables the user has when it is made.
            with guest.client() as client:
                client.put("/api/v1/env_vars", json={"vars": {"GREETING": "later"}})
            branched = guest.sdk(lambda c: c.branch_vm(vm_id))
            branch = branched["vms"][0]["vm_id"]
            made.append(branch)
            assert guest.shell("echo $GREETING", branch) == "later\n"
            assert guest.shell("echo $GREETING", vm_id) == "hello world\n"  # running: unchanged
        finally:
            with guest.client() as client:
                client.put("/api/v1/env_vars", json={"vars": {}, "replace": True})
                for made_id in made:
                    client.delete(f"/api/v1/vm/{made_id}")


class TestIdentity:
    def test_branches_have_the_hosts_time_and_names_and_keys_of_their_own(
        self, guest: Guest
    ) -> None:
        guest.shell("sleep 1")  # let the root's clock go its own way for a moment
        branched = guest.sdk(lambda c: c.branch_vm(guest.vm_id))
        branches = [vm["vm_id"] for vm in branched["vms"]]
        branches += [vm["vm_id"] for vm in guest.sdk(lambda c: c.branch_vm(guest.vm_id))["vms"]]
        for branch in branches:
            before = time.time()
            guest_time = float(guest.shell("date +%s.%N", branch))
            after = time.time()
            assert before - 0.1 <= guest_time <= after + 0.1
        names = {vm_id: guest.shell("hostname", vm_id) for vm_id in (guest.vm_id, *branches)}
        assert names == {vm_id: f"{vm_id}\n" for vm_id in names}
        host_keys = {
            guest.shell("cat /etc/ssh/ssh_host_ed25519_key.pub", vm_id)
            for vm_id in (guest.vm_id, *branches)
        }
        assert len(host_keys) == 3
        for branch in branches:
            guest.sdk(lambda c, b=branch: c.delete_vm(b))


class TestLineage:
    def test_each_commit_of_a_vm_names_the_one_before(self, guest: Guest) -> None:
        """root: c1, c2; restored from c1: d1, d2, then a branch of it commits e."""

        def commit(vm_id: str) -> str:
            commit_id: str = guest.sdk(lambda c: c.commit_vm(vm_id, {}))["commit_id"]
            return commit_id

        def parents(commit_id: str) -> list[Any]:
            chain: list[Any] = guest.sdk(lambda c: c.list_parent_commits(commit_id))
            return chain

        root = guest.vm_id
        c1 = commit(root)
        # Earlier tests of the module may have committed the shared root too.
        history = parents(c1)[1:]
        restored = guest.sdk(lambda c: c.restore_from_commit({"commit_id": c1}))["vm_id"]
        d1 = commit(restored)
        d2 = commit(restored)
        c2 = commit(root)
        [branch] = guest.sdk(lambda c: c.branch_by_vm(restored))["vms"]
        e = guest.sdk(lambda c: c.get_vm_metadata(branch["vm_id"]))["parent_commit_id"]
        listed = {
            info["commit_id"]: info for info in guest.sdk(lambda c: c.list_commits())["commits"]
        }

        def entity(commit_id: str, vm_id: str, grandparent: str | None) -> dict[str, Any]:
            info = listed[commit_id]
            assert info["name"].startswith(f"commit: of_vm={vm_id} timestamp=")
            assert info == {
                "commit_id": commit_id,
                "parent_vm_id": vm_id,
                "grandparent_commit_id": grandparent,
                "owner_id": guest.key.api_key_id,
                "name": info["name"],
                "description": None,
                "created_at": info["created_at"],
                "is_public": False,
            }
            return {
                "id": commit_id,
                "parent_vm_id": vm_id,
                "grandparent_commit_id": grandparent,
                "owner_id": guest.key.api_key_id,
                "name": info["name"],
                "description": None,
                "created_at": info["created_at"].replace("+00:00", "Z"),
                "is_public": False,
            }

        first = entity(c1, root, history[0]["id"] if history else None)
        second = entity(d1, restored, c1)
        third = entity(d2, restored, d1)
        assert parents(d2) == [third, second, first, *history]
        assert parents(c2) == [entity(c2, root, c1), first, *history]
        assert parents(e) == [entity(e, restored, d2), third, second, first, *history]
        # A VM's metadata still names the commit it was started from and that commit's VM.
        for vm_id, started_from, its_vm in ((restored, c1, root), (branch["vm_id"], e, restored)):
            metadata = guest.sdk(lambda c, v=vm_id: c.get_vm_metadata(v))
            assert (metadata["parent_commit_id"], metadata["grandparent_vm_id"]) == (
                started_from,
                its_vm,
            )
        for vm_id in (branch["vm_id"], restored):
            guest.sdk(lambda c, v=vm_id: c.delete_vm(v))


class TestLogs:
    def test_streams_and_logs_survive_a_restart_of_the_server(self, guest: Guest) -> None:
        finished, running = str(uuid.uuid4()), str(uuid.uuid4())
        stream_url = f"/api/v1/vm/{guest.vm_id}/exec/stream"
        with guest.client() as client:
            lines = client.post(
                stream_url,
                json={"command": ["/bin/sh", "-c", "echo kept"], "exec_id": finished},
            ).text.splitlines()
            with client.stream(
                "POST",
                stream_url,
                json={"command": ["/bin/sh", "-c", "echo begun; sleep 30"], "exec_id": running},
            ) as reply:
                next(reply.iter_lines())
        guest.server.stop()
        guest.server.start()
        attach = f"/api/v1/vm/{guest.vm_id}/exec/stream/attach"
        with guest.client() as client:
            replayed = client.post(attach, json={"exec_id": finished}).text.splitlines()
            interrupted = [
                json.loads(line)
                for line in client.post(attach, json={"exec_id": running}).text.splitlines()
            ]
            entries = _all_log_entries(client, guest.vm_id)
        assert replayed == lines
        assert [base64.b64decode(line.get("data_b64", "")) for line in interrupted] == [
            b"begun\n",
            b"vers-orchestrator: the server restarted while this command ran;"
            b" its later output was not kept\n",
            b"",
        ]
        assert interrupted[-1] == {"type": "exit", "exec_id": running, "exit_code": 255}
        mine = [e for e in entries if e["exec_id"] in (finished, running)]
        assert [base64.b64decode(entry["data_b64"]) for entry in mine][:2] == [
            b"kept\n",
            b"begun\n",
        ]
        guest.shell("pkill -x sleep || :")


def _all_log_entries(client: httpx.Client, vm_id: str) -> list[Any]:
    entries: list[Any] = []
    offset = 0
    while True:
        page = client.get(
            f"/api/v1/vm/{vm_id}/logs", params={"offset": offset, "max_entries": 1000}
        ).json()
        entries += page["entries"]
        if page["eof"]:
            return entries
        offset = page["next_offset"]


class _RssSampler:
    """The server process's largest resident set while inside, over what it was before."""

    def __init__(self, server: Server) -> None:
        assert server.process is not None
        self._status = Path(f"/proc/{server.process.pid}/status")
        self._stop = threading.Event()
        self.growth = 0

    def _rss(self) -> int:
        for line in self._status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def __enter__(self) -> _RssSampler:
        self._before = self._rss()
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.growth = max(self.growth, self._rss() - self._before)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
