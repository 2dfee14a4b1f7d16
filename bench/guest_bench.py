"""Guest operations through the HTTP API: this checkout beside an earlier version.

Two servers run side by side on SQLite: this checkout, and `--baseline` (default: the last
commit before vers-agent, whose guests ran qemu-guest-agent), checked out in a git
worktree under build/ and run with this venv (its dependencies are the same). Each has
its own default image, built before anything is timed. Measured as a client sees them,
rounds interleaved between the two servers:

- new root (`POST /vm/new_root`, wait_boot) → first exec of `true` answered;
- exec round trip of `true`;
- first chunk of `exec/stream` for `echo first; sleep 1`: from the request to the chunk;
- file upload and download throughput, in the best form each version has: the baseline's
  JSON form (base64, under its 1 MiB body limit), this checkout's raw
  `application/octet-stream` transfers;
- this checkout only: how much the server's resident memory grows over a raw 1 GiB round
  trip.

Writes `bench/results/guest.json`; bench/README.md holds the last results.

    .venv/bin/python bench/guest_bench.py [--baseline REV] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RESULTS = REPO / "bench" / "results" / "guest.json"
DEFAULT_BASELINE = "1477a69"
MIB = 1024 * 1024
ROOT = {"vm_config": {"vcpu_count": 1, "mem_size_mib": 256, "fs_size_mib": 2560}}
SERVE = "from vers_orchestrator.cli import main; main()"


@dataclass
class Target:
    name: str
    source: Path  # a checkout's src/
    images: Path
    scratch: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    token: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(self.source),
            "VERS_ORCHESTRATOR_DATA_DIR": str(self.scratch / "data"),
            "VERS_ORCHESTRATOR_IMAGES_DIR": str(self.images),
            "VERS_ORCHESTRATOR_VM_RUNTIME_DIR": f"/dev/shm/vo-gb-{self.scratch.name[-8:]}",
            "VERS_ORCHESTRATOR_LOG_LEVEL": "WARNING",
        }
        env.pop("VERS_ORCHESTRATOR_DATABASE_URL", None)
        return env

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [PYTHON, "-c", SERVE, *args], env=self.env, capture_output=True, text=True, check=True
        ).stdout

    def start(self) -> None:
        self.token = json.loads(
            self.cli("keys", "create", "--org", "bench", "--user", "bench", "--format", "json")
        )["api_key"]
        log = self.scratch / "server.log"
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [PYTHON, "-c", SERVE, "serve", "--port", "0"],
                env={**self.env, "VERS_ORCHESTRATOR_LOG_LEVEL": "INFO"},
                stdout=output,
                stderr=output,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", log.read_text())
            if found:
                self.url = found.group(1)
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Delete every VM of the bench (VMs outlive their server), then stop the server."""
        if self.process is not None:
            if self.process.poll() is None:
                with self.client() as client:
                    for vm in client.get("/api/v1/vm").json():
                        client.delete(f"/api/v1/vm/{vm['vm_id']}")
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)
        shutil.rmtree(self.env["VERS_ORCHESTRATOR_VM_RUNTIME_DIR"], ignore_errors=True)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=600
        )

    def record(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)


def baseline_source(revision: str) -> Path:
    worktree = REPO / "build" / "bench-baseline" / revision
    if not worktree.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), revision],
            check=True,
            capture_output=True,
        )
    return worktree / "src"


def new_root(target: Target, client: httpx.Client) -> str:
    started = time.perf_counter()
    created = client.post("/api/v1/vm/new_root?wait_boot=true", json=ROOT)
    created.raise_for_status()
    vm_id: str = created.json()["vm_id"]
    ran = client.post(f"/api/v1/vm/{vm_id}/exec", json={"command": ["true"]})
    assert ran.json()["exit_code"] == 0, ran.text
    target.record("New root → first exec (s)", time.perf_counter() - started)
    return vm_id


def exec_round_trips(target: Target, client: httpx.Client, vm_id: str, count: int) -> None:
    for _ in range(count):
        started = time.perf_counter()
        ran = client.post(f"/api/v1/vm/{vm_id}/exec", json={"command": ["true"]})
        target.record("Exec round trip of `true` (ms)", (time.perf_counter() - started) * 1000)
        assert ran.status_code == 200, ran.text


def first_chunk(target: Target, client: httpx.Client, vm_id: str) -> None:
    body = {"command": ["sh", "-c", "echo first; sleep 1"]}
    started = time.perf_counter()
    with client.stream("POST", f"/api/v1/vm/{vm_id}/exec/stream", json=body) as reply:
        lines = reply.iter_lines()
        for line in lines:
            if json.loads(line).get("type") == "chunk":
                target.record("First stream chunk (ms)", (time.perf_counter() - started) * 1000)
                break
        for _ in lines:
            pass


def json_files(target: Target, client: httpx.Client, vm_id: str) -> None:
    """The baseline's only form: base64 in JSON, uploads under its 1 MiB body limit."""
    piece = os.urandom(700 * 1024)
    started = time.perf_counter()
    for number in range(10):
        body = {"path": f"/root/piece{number}", "content_b64": base64.b64encode(piece).decode()}
        client.put(f"/api/v1/vm/{vm_id}/files", json=body).raise_for_status()
    target.record("File upload (MiB/s)", 10 * len(piece) / MIB / (time.perf_counter() - started))
    size = 16 * MIB
    script = f"head -c {size} /dev/urandom > /root/download"
    client.post(f"/api/v1/vm/{vm_id}/exec", json={"command": ["sh", "-c", script]})
    started = time.perf_counter()
    read = client.get(f"/api/v1/vm/{vm_id}/files", params={"path": "/root/download"})
    assert len(base64.b64decode(read.json()["content_b64"])) == size
    target.record("File download (MiB/s)", size / MIB / (time.perf_counter() - started))


def raw_files(target: Target, client: httpx.Client, vm_id: str, mib: int) -> tuple[float, float]:
    piece = os.urandom(MIB)

    def pieces() -> Iterator[bytes]:
        for _ in range(mib):
            yield piece

    url = f"/api/v1/vm/{vm_id}/files"
    started = time.perf_counter()
    written = client.put(
        url,
        params={"path": "/root/raw.bin"},
        content=pieces(),
        headers={"content-type": "application/octet-stream"},
    )
    written.raise_for_status()
    upload = mib / (time.perf_counter() - started)
    started = time.perf_counter()
    received = 0
    with client.stream(
        "GET", url, params={"path": "/root/raw.bin"}, headers={"accept": "application/octet-stream"}
    ) as reply:
        for chunk in reply.iter_bytes():
            received += len(chunk)
    assert received == mib * MIB
    download = mib / (time.perf_counter() - started)
    return upload, download


def rss_growth(target: Target, client: httpx.Client, vm_id: str) -> float:
    assert target.process is not None
    status = Path(f"/proc/{target.process.pid}/status")

    def rss() -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    before = rss()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, rss())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        raw_files(target, client, vm_id, 1024)
    finally:
        done.set()
        sampler.join()
    return (peak - before) / MIB


def measure(targets: list[Target], rounds: int) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    running: dict[str, str] = {}
    for _ in range(rounds):
        for target in targets:
            with target.client() as client:
                vm_id = new_root(target, client)
                if target.name in running:
                    client.delete(f"/api/v1/vm/{vm_id}")
                else:
                    running[target.name] = vm_id
    for _ in range(5):
        for target in targets:
            with target.client() as client:
                exec_round_trips(target, client, running[target.name], 10)
                first_chunk(target, client, running[target.name])
                first_chunk(target, client, running[target.name])
    for target in targets:
        with target.client() as client:
            vm_id = running[target.name]
            if target.name == "baseline":
                json_files(target, client, vm_id)
                continue
            for _ in range(2):
                upload, download = raw_files(target, client, vm_id, 64)
                target.record("File upload (MiB/s)", upload)
                target.record("File download (MiB/s)", download)
            extra["RSS growth over a 1 GiB raw round trip (MiB)"] = rss_growth(
                target, client, vm_id
            )
            client.delete(f"/api/v1/vm/{vm_id}")
    return extra


def table(targets: list[Target], extra: dict[str, Any]) -> str:
    names = list(dict.fromkeys(name for target in targets for name in target.samples))
    header = " | ".join(f"{target.name} median (n)" for target in targets)
    lines = [f"| measure | {header} |", "|---|" + "---:|" * len(targets)]
    for name in names:
        cells = []
        for target in targets:
            values = target.samples.get(name, [])
            cells.append(f"{statistics.median(values):.1f} ({len(values)})" if values else "-")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    for name, value in extra.items():
        lines.append(f"| {name} | - | {value:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="vers-guest-bench-"))
    baseline_images = REPO / "build" / "bench-baseline" / args.baseline / "build" / "images"
    targets = [
        Target(
            "baseline",
            baseline_source(args.baseline),
            baseline_images,
            scratch / f"baseline-{secrets.token_hex(4)}",
        ),
        Target(
            "this checkout",
            REPO / "src",
            REPO / "build" / "images",
            scratch / f"current-{secrets.token_hex(4)}",
        ),
    ]
    try:
        for target in targets:
            target.scratch.mkdir(parents=True)
            if not (target.images / "default").exists():
                print(f"{target.name}: building its default image", file=sys.stderr)
                target.cli("images", "build-default")
            target.start()
        extra = measure(targets, args.rounds)
    finally:
        for target in targets:
            target.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(targets, extra))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "baseline": args.baseline,
                "samples": {target.name: target.samples for target in targets},
                "extra": extra,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
