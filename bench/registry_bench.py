"""Registry reads on a large registry: 100,000 repositories across 100 organizations.

For each database a fresh one is migrated and seeded directly through the store (in
batches, no HTTP), then a real server process pinned to CPU 0 is loaded by wrk pinned to
CPU 1, on 127.0.0.1 only, with a bounded number of connections:
- `GET /api/v1/repositories/{repo_name}`: random names of one organization;
- `GET /api/v1/repositories`: that organization's 1,000 repositories (~170 KB of JSON).
Prints the query plans of both lookups and a Markdown table of req/s, p50 and p99.

    .venv/bin/python bench/registry_bench.py [--duration 10] [--connections 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench_create import (  # this folder
    drop_created_databases,
    fresh_postgres_database,
    postgres_url,
)
from vers_orchestrator.services import keys
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import repositories as repository_store
from vers_orchestrator.store.connect import open_database
from vers_orchestrator.store.database import Database, Tx, utc_now
from vers_orchestrator.store.migrate import upgrade
from vers_orchestrator.store.repositories import Repository

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LUA = ROOT / "bench" / "get_repository.lua"
ORGANIZATIONS = 100
PER_ORGANIZATION = 1000
BATCH = 1000
# The organization the load reads; any of the 100 would do.
TARGET_ORG = "org-042"


@dataclass
class Result:
    database: str
    operation: str
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


async def seed(db: Database) -> str:
    """Create the organizations and their repositories; return the target org's API key."""
    token = ""
    for org in range(ORGANIZATIONS):
        created = await keys.create(db, f"org-{org:03d}", "bench")
        if created.org_name == TARGET_ORG:
            token = created.api_key
        for start in range(0, PER_ORGANIZATION, BATCH):
            await db.write(lambda tx, s=start, k=created: _insert_batch(tx, k, s))  # type: ignore[misc]
    return token


async def _insert_batch(tx: Tx, owner: keys.CreatedKey, start: int) -> None:
    now = utc_now()
    for number in range(start, min(start + BATCH, PER_ORGANIZATION)):
        await repository_store.insert(
            tx,
            Repository(
                repo_id=str(uuid.uuid4()),
                org_id=owner.org_id,
                name=f"repo-{number:04d}",
                description=f"repository {number} of {owner.org_name}",
                is_public=number % 10 == 0,
                owner_id=owner.api_key_id,
                created_at=now,
            ),
        )


async def query_plans(db: Database, postgres: bool, org_name: str) -> list[str]:
    async def unit(tx: Tx) -> list[str]:
        org_id = await tx.fetch_value("SELECT org_id FROM organizations WHERE name = $1", org_name)
        plans = []
        for sql, args in (
            (
                "SELECT * FROM repositories WHERE org_id = $1 AND name = $2",
                (org_id, "repo-0500"),
            ),
            ("SELECT * FROM repositories WHERE org_id = $1 ORDER BY name", (org_id,)),
        ):
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            rows = await tx.fetch_all(explain + sql, *args)
            plan = " / ".join(str(row[0] if postgres else row["detail"]) for row in rows)
            plans.append(f"{sql}  ->  {plan}")
        return plans

    if postgres:
        await db.write(lambda tx: tx.execute("ANALYZE"))
    return await db.read(unit)


def prepare(database: str, workdir: Path) -> tuple[dict[str, str], str]:
    env = {
        **os.environ,
        "VERS_ORCHESTRATOR_DATA_DIR": str(workdir / "data"),
        "VERS_ORCHESTRATOR_LOG_LEVEL": "WARNING",
    }
    if database == "postgresql":
        env["VERS_ORCHESTRATOR_DATABASE_URL"] = fresh_postgres_database(postgres_url())
    settings = Settings.from_env(env)
    upgrade(settings)

    async def run() -> str:
        db = await open_database(settings)
        try:
            started = time.perf_counter()
            token = await seed(db)
            print(
                f"{database}: seeded {ORGANIZATIONS * PER_ORGANIZATION:,} repositories"
                f" in {time.perf_counter() - started:.1f}s",
                file=sys.stderr,
            )
            for plan in await query_plans(db, settings.uses_postgres, TARGET_ORG):
                print(f"{database}: {plan}", file=sys.stderr)
            return token
        finally:
            await db.close()

    return env, asyncio.run(run())


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        ["taskset", "-c", "0", str(BIN / "vers-orchestrator"), "serve", "--port", "0"],
        env={**env, "VERS_ORCHESTRATOR_LOG_LEVEL": "INFO"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            httpx.get(found.group(1) + "/health", timeout=30).raise_for_status()
            return process, found.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    database: str, operation: str, url: str, token: str, connections: int, duration: int
) -> Result:
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    command += ["--latency", "-H", f"Authorization: Bearer {token}"]
    if operation == "get_repository":
        command += ["-s", str(LUA), url]
    else:
        command += [url + "/api/v1/repositories"]
    output = subprocess.run(
        command,
        env={**os.environ, "BENCH_API_KEY": token, "BENCH_REPO_COUNT": str(PER_ORGANIZATION)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    percentile = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    assert "99" in percentile, output
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert rate is not None, output
    return Result(
        database=database,
        operation=operation,
        connections=connections,
        requests_per_second=float(rate.group(1)),
        p50_ms=to_ms(percentile["50"]),
        p99_ms=to_ms(percentile["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--databases", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"]
    )
    args = parser.parse_args()
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="vers-registry-bench-") as scratch,
        contextlib.ExitStack() as cleanup,
    ):
        cleanup.callback(drop_created_databases)
        for database in args.databases:
            workdir = Path(scratch) / database
            workdir.mkdir()
            env, token = prepare(database, workdir)
            process, url = start_server(env, workdir / "server.log")
            try:
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
                    listed = c.get("/api/v1/repositories").json()["repositories"]
                    assert len(listed) == PER_ORGANIZATION, len(listed)
                for operation in ("get_repository", "list_repositories"):
                    for connections in args.connections:
                        result = run_wrk(
                            database, operation, url, token, connections, args.duration
                        )
                        results.append(result)
                        print(result, file=sys.stderr)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    print("| database | operation | connections | req/s | p50 ms | p99 ms | non-2xx | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.database} | {r.operation} | {r.connections} | {r.requests_per_second:,.0f}"
            f" | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.non_2xx} | {r.socket_errors} |"
        )


if __name__ == "__main__":
    main()
