"""The edge proxy's cost: a guest web server reached through the edge beside the same guest
port reached directly through the driver's forward, in the same run.

    .venv/bin/python bench/edge_bench.py [--rounds 3] [--duration 10] [--connections 8]

A real `vers-orchestrator serve` (SQLite, edge on) boots one VM (1 vCPU, 256 MiB, TCG) that
runs a small HTTP/1.1 keep-alive server on port 8000 (python3's http.server answering
`ok`, the cheapest server the guest has). wrk (pinned to CPU 1) then loads, alternately,
`http://127.0.0.1:<forward>/` (QEMU's forward on 127.0.0.1, what the edge itself connects
to) and `http://127.0.0.1:<edge>/` with `Host: 8000-<vm_id>.vm.localhost`, `--rounds`
times each. Reported: the medians of requests/s, p50 and p99, and the server process's CPU
time per request through the edge. The goal (issue 13): the edge costs at most 20%.

Prints a Markdown table for bench/README.md and writes bench/results/edge.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import IMAGES_DIR, Backend, Server, free_port, make_key  # noqa: E402

from bench_create import cpu_seconds, read_wrk  # noqa: E402  (this folder)
from vers_orchestrator.drivers.qemu.images import ensure_default_image  # noqa: E402

GUEST_PORT = 8000
GUEST_SERVER = """
import http.server

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("", 8000), Handler).serve_forever()
"""


@dataclass
class Run:
    path: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us_per_request: float


def wrk(url: str, host: str | None, connections: int, duration: int, server_pid: int) -> Run:
    command = [
        "taskset",
        "-c",
        "1",
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
    ]
    if host:
        command += ["-H", f"Host: {host}"]
    before = cpu_seconds(server_pid)
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(server_pid) - before
    numbers = read_wrk(output)
    return Run(
        path="edge" if host else "direct",
        requests_per_second=numbers.requests_per_second,
        p50_ms=numbers.p50_ms,
        p99_ms=numbers.p99_ms,
        errors=numbers.socket_errors + numbers.non_2xx,
        server_cpu_us_per_request=cpu / max(numbers.requests, 1) * 1e6,
    )


def median(runs: list[Run]) -> Run:
    return Run(
        path=runs[0].path,
        requests_per_second=statistics.median(r.requests_per_second for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        server_cpu_us_per_request=statistics.median(r.server_cpu_us_per_request for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    ensure_default_image(IMAGES_DIR, print)
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    edge_port = free_port()
    backend = Backend.create("sqlite", work / "backend", EDGE_PORT=str(edge_port))
    server = Server(backend, work / "server.log").start()
    assert server.process is not None
    key = make_key(backend)
    runs: dict[str, list[Run]] = {"direct": [], "edge": []}
    try:
        with server.client(key.token) as client:
            client.timeout = httpx.Timeout(240)
            vm_id = client.post(
                "/api/v1/vm/new_root?wait_boot=true",
                json={"vm_config": {"vcpu_count": 1, "mem_size_mib": 256, "fs_size_mib": 1024}},
            ).json()["vm_id"]
            client.post(
                f"/api/v1/vm/{vm_id}/exec",
                json={
                    "command": [
                        "sh",
                        "-c",
                        'printf "%s" "$1" > /root/ok.py'
                        " && (nohup python3 /root/ok.py >/dev/null 2>&1 &)",
                        "sh",
                        GUEST_SERVER,
                    ]
                },
            ).raise_for_status()
        host = f"{GUEST_PORT}-{vm_id}.vm.localhost"
        deadline = time.monotonic() + 60
        while (
            httpx.get(f"http://127.0.0.1:{edge_port}/", headers={"Host": host}).status_code != 200
        ):
            assert time.monotonic() < deadline, "the guest's server did not answer"
            time.sleep(0.5)
        runtime = Path(backend.env["VERS_ORCHESTRATOR_VM_RUNTIME_DIR"]) / vm_id
        forward = json.loads((runtime / "forwards.json").read_text())[str(GUEST_PORT)]
        for round_number in range(args.rounds):
            order = [("direct", None, forward), ("edge", host, edge_port)]
            if round_number % 2:
                order.reverse()
            for name, host_header, port in order:
                run = wrk(
                    f"http://127.0.0.1:{port}/",
                    host_header,
                    args.connections,
                    args.duration,
                    server.process.pid,
                )
                runs[name].append(run)
                print(
                    f"round {round_number + 1} {name}: {run.requests_per_second:.0f} req/s,"
                    f" p99 {run.p99_ms:.1f} ms, errors {run.errors}",
                    flush=True,
                )
    finally:
        # Every VM goes, also after a failed round: VMs outlive their server.
        with server.client(key.token) as client:
            for vm in client.get("/api/v1/vm").json():
                client.delete(f"/api/v1/vm/{vm['vm_id']}")
        server.stop()
        backend.drop()
    direct, edge = median(runs["direct"]), median(runs["edge"])
    cost = 1 - edge.requests_per_second / direct.requests_per_second
    print()
    print("| path | req/s | p50 | p99 | errors | server CPU per request |")
    print("|---|---:|---:|---:|---:|---:|")
    for result in (direct, edge):
        print(
            f"| {result.path} | {result.requests_per_second:.0f} | {result.p50_ms:.1f} ms"
            f" | {result.p99_ms:.1f} ms | {result.errors}"
            f" | {result.server_cpu_us_per_request:.0f} µs |"
        )
    print(f"\nthe edge costs {cost * 100:.1f}% of requests/s (goal: at most 20%)")
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "edge.json").write_text(
        json.dumps(
            {
                "when": datetime.now().isoformat(timespec="seconds"),
                "args": vars(args),
                "runs": {name: [asdict(run) for run in found] for name, found in runs.items()},
                "cost": cost,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
