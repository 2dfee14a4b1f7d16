"""Load `POST /api/v1/repositories` on loopback and compare it with the floor.

Each target is a real server process pinned to CPU 0; wrk runs pinned to CPU 1 (PostgreSQL,
when used, floats). Every request creates a repository with a name no other request uses.
Prints a Markdown table: requests/s, p50 and p99 latency, and non-2xx/socket errors.

    .venv/bin/python bench/bench_create.py [--duration 10] [--connections 32 128]

`--baseline-src DIR` adds `base-*` targets: the same server run from another version's
`src` (e.g. a `git worktree` of the previous commit), to compare in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LUA = ROOT / "bench" / "create_repository.lua"
# Built once before the rounds: a server without an image builds one in the background at
# start-up, and that build would be measured along with the requests.
IMAGES_DIR = ROOT / "build" / "images"
TARGETS = (
    "floor-sqlite",
    "api-sqlite",
    "base-sqlite",
    "floor-postgresql",
    "api-postgresql",
    "base-postgresql",
)
# The `src` folder the base-* targets import the package from (`--baseline-src`).
baseline_src: Path | None = None


@dataclass
class Result:
    target: str
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_us_per_request: float


def postgres_url() -> str:
    url = os.environ.get("VERS_ORCHESTRATOR_TEST_POSTGRES_URL")
    if url:
        return url
    return subprocess.run(
        [str(ROOT / "scripts" / "ensure-postgres.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()


# Databases this run made, dropped when it ends: each holds a run's worth of rows.
_created_databases: list[tuple[str, str]] = []


def fresh_postgres_database(admin_url: str) -> str:
    name = f"vers_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    _created_databases.append((admin_url, name))
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_created_databases() -> None:
    while _created_databases:
        admin_url, name = _created_databases.pop()
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            httpx.post(url + "/api/v1/repositories", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def start_target(target: str, workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start one server; return it and the API key to send."""
    kind, database = target.split("-")
    env = {
        **os.environ,
        "VERS_ORCHESTRATOR_DATA_DIR": str(workdir / "data"),
        "VERS_ORCHESTRATOR_IMAGES_DIR": str(IMAGES_DIR),
    }
    url = (
        fresh_postgres_database(postgres_url())
        if database == "postgresql"
        else f"sqlite:///{workdir / 'bench.sqlite3'}"
    )
    log = workdir / f"{target}.log"
    if kind == "floor":
        key = str(uuid.uuid4()) + secrets.token_hex(32)
        env |= {"FLOOR_DATABASE_URL": url, "FLOOR_API_KEY": key, "PYTHONPATH": str(ROOT)}
        command = [
            str(BIN / "uvicorn"),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-proxy-headers",
            "--log-level",
            "warning",
            "--port",
            str(port),
            "bench.floor_app:app",
        ]
    else:
        if database == "postgresql":
            env["VERS_ORCHESTRATOR_DATABASE_URL"] = url
        if kind == "base":
            if baseline_src is None:
                raise SystemExit("base-* targets need --baseline-src")
            # Ahead of the editable install on sys.path: this run imports that version.
            env["PYTHONPATH"] = str(baseline_src)
        created = subprocess.run(
            [
                str(BIN / "vers-orchestrator"),
                "keys",
                "create",
                "--org",
                "bench",
                "--user",
                "bench",
                "--format",
                "json",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        key = json.loads(created.stdout)["api_key"]
        command = [str(BIN / "vers-orchestrator"), "serve", "--port", str(port)]
    process = subprocess.Popen(
        ["taskset", "-c", "0", *command], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    wait_ready(f"http://127.0.0.1:{port}", process, log)
    return process, key


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads: robust to a noisy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(target: str, pid: int, port: int, key: str, connections: int, duration: int) -> Result:
    cpu_before = cpu_seconds(pid)
    output = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{port}",
        ],
        env={**os.environ, "BENCH_API_KEY": key, "BENCH_PREFIX": f"{target}{connections}"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    numbers = read_wrk(output)
    return Result(
        target=target,
        connections=connections,
        requests_per_second=numbers.requests_per_second,
        cpu_us_per_request=cpu / numbers.requests * 1e6,
        p50_ms=numbers.p50_ms,
        p99_ms=numbers.p99_ms,
        non_2xx=numbers.non_2xx,
        socket_errors=numbers.socket_errors,
    )


@dataclass
class WrkNumbers:
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def read_wrk(output: str) -> WrkNumbers:
    """What `wrk --latency` printed. Raises RuntimeError when it measured nothing."""
    # wrk pads a latency such as "1.07s " with a space.
    percentile = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    if "99" not in percentile:
        raise RuntimeError(f"wrk measured nothing:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkNumbers(
        requests=int(re.search(r"(\d+) requests in", output).group(1)),  # type: ignore[union-attr]
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=to_ms(percentile["50"]),
        p99_ms=to_ms(percentile["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def median_result(runs: list[Result]) -> Result:
    """Per field, the median over repeated runs: this machine varies ±30% run to run."""
    return Result(
        target=runs[0].target,
        connections=runs[0].connections,
        requests_per_second=statistics.median(r.requests_per_second for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        socket_errors=sum(r.socket_errors for r in runs),
        cpu_us_per_request=statistics.median(r.cpu_us_per_request for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--targets", nargs="+", choices=TARGETS)
    parser.add_argument(
        "--baseline-src", type=Path, help="another version's src folder, for the base-* targets"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds over all targets; medians are reported"
    )
    args = parser.parse_args()
    global baseline_src
    baseline_src = args.baseline_src
    if args.targets is None:
        args.targets = [t for t in TARGETS if baseline_src is not None or not t.startswith("base")]
    runs: dict[tuple[str, int], list[Result]] = {}
    subprocess.run(
        [str(BIN / "vers-orchestrator"), "images", "build-default", "--if-missing"],
        env={**os.environ, "VERS_ORCHESTRATOR_IMAGES_DIR": str(IMAGES_DIR)},
        stdout=subprocess.DEVNULL,
        check=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="vers-bench-") as scratch,
        contextlib.ExitStack() as cleanup,
    ):
        cleanup.callback(drop_created_databases)
        # Rounds interleave the targets, so a noisy minute hurts each of them alike.
        for round_number in range(args.repeat):
            for index, target in enumerate(args.targets):
                workdir = Path(scratch) / f"{target}-{round_number}"
                workdir.mkdir()
                port = 18080 + index
                process, key = start_target(target, workdir, port)
                try:
                    for connections in args.connections:
                        result = run_wrk(target, process.pid, port, key, connections, args.duration)
                        runs.setdefault((target, connections), []).append(result)
                        print(result, file=sys.stderr)
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=60)
    results = [median_result(r) for r in runs.values()]
    floors = {
        (r.target.split("-")[1], r.connections): r for r in results if r.target.startswith("floor")
    }
    print(
        f"Medians of {args.repeat} rounds of {args.duration} s.\n\n"
        "| target | connections | req/s | p50 ms | p99 ms | non-2xx | socket errors"
        " | server CPU µs/req | req/s vs floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        floor = floors.get((r.target.split("-")[1], r.connections))
        ratio = f"{r.requests_per_second / floor.requests_per_second:.0%}" if floor else "—"
        print(
            f"| {r.target} | {r.connections} | {r.requests_per_second:,.0f} | {r.p50_ms:.2f}"
            f" | {r.p99_ms:.2f} | {r.non_2xx} | {r.socket_errors} | {r.cpu_us_per_request:.0f}"
            f" | {ratio} |"
        )


if __name__ == "__main__":
    main()
