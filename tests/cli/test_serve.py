"""`vers-orchestrator serve`: start, stop on SIGTERM, restart with the data kept."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from tests.support import Backend, Server, make_key, unique_name


def test_sigterm_finishes_in_flight_requests_and_exits_0(
    fresh_backend: Backend, tmp_path: Path
) -> None:
    server = Server(fresh_backend, tmp_path / "server.log").start()
    key = make_key(fresh_backend)
    statuses: list[int] = []
    failures: list[BaseException] = []

    def load() -> None:
        with server.client(key.token) as client:
            for _ in range(200):
                try:
                    statuses.append(
                        client.post(
                            "/api/v1/repositories", json={"name": unique_name()}
                        ).status_code
                    )
                except httpx.TransportError:
                    return  # the server stopped taking new connections: expected
                except BaseException as exc:
                    failures.append(exc)
                    return

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    for worker in workers:
        worker.join()
    assert failures == []
    assert statuses, "no request completed before the signal"
    assert set(statuses) == {201}
    assert "stopped" in server.log_text()


def test_restart_keeps_data(fresh_backend: Backend, tmp_path: Path) -> None:
    key = make_key(fresh_backend)
    name = unique_name()
    first = Server(fresh_backend, tmp_path / "first.log").start()
    with first.client(key.token) as client:
        assert client.post("/api/v1/repositories", json={"name": name}).status_code == 201
    assert first.stop() == 0

    second = Server(fresh_backend, tmp_path / "second.log").start()
    try:
        with second.client(key.token) as client:
            again = client.post("/api/v1/repositories", json={"name": name})
        assert again.status_code == 409
        assert again.json() == {"success": False, "error": "repository already exists"}
    finally:
        assert second.stop() == 0


def test_two_replicas_share_one_database(fresh_backend: Backend, tmp_path: Path) -> None:
    # Stateless replicas behind a load balancer: a name taken on one is taken on the other.
    key = make_key(fresh_backend)
    replicas = [Server(fresh_backend, tmp_path / f"replica{i}.log").start() for i in range(2)]
    try:
        name = unique_name()
        with replicas[0].client(key.token) as one, replicas[1].client(key.token) as two:
            assert one.post("/api/v1/repositories", json={"name": name}).status_code == 201
            assert two.post("/api/v1/repositories", json={"name": name}).status_code == 409
    finally:
        for replica in replicas:
            replica.stop()
