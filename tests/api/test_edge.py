"""The edge proxy, over real HTTP, to web servers in a real VM (issue 13): names, custom
domains, ports, streaming both ways, WebSockets, paused and private VMs, restored VMs, a
server restart, and TLS with its reload on SIGHUP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from vers_sdk.models import CreateNewRootVmParams

from tests.support import (
    IMAGES_DIR,
    Backend,
    Key,
    Server,
    error,
    free_port,
    live_processes,
    make_key,
    qemu_processes,
    sdk_call,
    shut_down,
)
from vers_orchestrator.drivers.qemu.images import ensure_default_image

ROOT_CONFIG = {"vcpu_count": 1, "mem_size_mib": 256, "fs_size_mib": 1024}
APP = Path(__file__).resolve().parents[1] / "guest_web_app.py"
APP_PORT = 8000
PAGE = "hello from the VM\n"
HEAD_TIMEOUT = 3


def raw_exchange(port: int, request: bytes, wait: float = 10) -> bytes:
    """Send bytes on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(request)
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := connection.recv(65536):
                received += chunk
    return received


@dataclass
class Edge:
    backend: Backend
    server: Server
    key: Key
    port: int
    vm_id: str = ""
    made: list[str] = field(default_factory=list)

    def sdk(self, call: Any, key: Key | None = None) -> Any:
        return sdk_call(self.server, (key or self.key).token, call)

    def api(self) -> httpx.Client:
        client = self.server.client(self.key.token)
        client.timeout = httpx.Timeout(240.0)
        return client

    def get(self, host: str, path: str = "/", **options: Any) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.get(
                f"http://127.0.0.1:{self.port}{path}", headers={"Host": host}, **options
            )

    def name(self, vm_id: str | None = None, port: int | None = None) -> str:
        prefix = "" if port is None else f"{port}-"
        return f"{prefix}{vm_id or self.vm_id}.vm.localhost"

    def shell(self, script: str, vm_id: str | None = None) -> str:
        result = self.sdk(
            lambda c: c.exec_vm(vm_id or self.vm_id, {"command": ["sh", "-c", script]})
        )
        assert result["exit_code"] == 0, result
        return str(result["stdout"])


def start_web_servers(edge: Edge, vm_id: str) -> None:
    with edge.api() as client:
        written = client.put(
            f"/api/v1/vm/{vm_id}/files",
            json={
                "path": "/srv/app.py",
                "content_b64": base64.b64encode(APP.read_bytes()).decode(),
                "create_dirs": True,
            },
        )
        assert written.status_code in (200, 204), written.text
    edge.shell(
        f"mkdir -p /srv/site && printf '{PAGE.strip()}\\n' > /srv/site/index.html"
        " && (nohup python3 -m http.server 80 --directory /srv/site >/dev/null 2>&1 &)"
        f" && (nohup python3 /srv/app.py {APP_PORT} >/dev/null 2>&1 &)",
        vm_id,
    )
    # Both listen within a second or two of guest time.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            edge.get(edge.name(vm_id)).status_code == 200
            and edge.get(edge.name(vm_id, APP_PORT), "/headers").status_code == 200
        ):
            return
        time.sleep(0.5)
    raise AssertionError("the guest's web servers did not answer")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    ensure_default_image(IMAGES_DIR, lambda line: print(line, file=sys.stderr, flush=True))
    port = free_port()
    backend = Backend.create(
        "sqlite",
        tmp_path_factory.mktemp("edge"),
        EDGE_PORT=str(port),
        HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
    )
    server = Server(backend, tmp_path_factory.mktemp("edge-server") / "server.log").start()
    shared = Edge(backend, server, make_key(backend), port)
    try:
        created = shared.sdk(
            lambda c: c.create_new_root_vm(
                {"vm_config": ROOT_CONFIG}, CreateNewRootVmParams(wait_boot=True)
            )
        )
        shared.vm_id = created["vm_id"]
        start_web_servers(shared, shared.vm_id)
        yield shared
    finally:
        leftovers = shut_down(shared.server, backend, shared.key.token)
        assert leftovers == [], "VMs outlived the module"


def server_rss_kib(server: Server) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class TestRouting:
    def test_the_vm_name_reaches_port_80(self, edge: Edge) -> None:
        response = edge.get(edge.name())
        assert (response.status_code, response.text) == (200, PAGE)

    def test_names_are_case_insensitive_and_may_carry_the_port(self, edge: Edge) -> None:
        response = edge.get(f"{edge.name().upper()}:{edge.port}")
        assert (response.status_code, response.text) == (200, PAGE)

    def test_a_port_prefix_reaches_that_port(self, edge: Edge) -> None:
        response = edge.get(edge.name(port=APP_PORT), "/headers")
        assert response.status_code == 200
        seen = response.json()
        assert seen["Host"] == edge.name(port=APP_PORT)
        assert seen["X-Forwarded-For"] == "127.0.0.1"
        assert seen["X-Forwarded-Proto"] == "http"
        assert seen["X-Forwarded-Host"] == edge.name(port=APP_PORT)
        assert "Connection" not in seen or seen["Connection"] != "x-secret"

    def test_earlier_forwarded_for_is_kept_and_hop_by_hop_headers_dropped(self, edge: Edge) -> None:
        with httpx.Client(timeout=60) as client:
            response = client.get(
                f"http://127.0.0.1:{edge.port}/headers",
                headers={
                    "Host": edge.name(port=APP_PORT),
                    "X-Forwarded-For": "203.0.113.7",
                    "Connection": "keep-alive, X-Hop",
                    "X-Hop": "dropped",
                    "X-Kept": "kept",
                },
            )
        seen = response.json()
        assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
        assert "X-Hop" not in seen
        assert seen["X-Kept"] == "kept"

    def test_a_custom_domain_reaches_port_80(self, edge: Edge) -> None:
        domain = f"site-{uuid.uuid4().hex[:8]}.example.com"
        made = edge.sdk(lambda c: c.create_domain({"vm_id": edge.vm_id, "domain": domain}))
        for host in (domain, domain.upper(), f"{domain}:{edge.port}", f"{domain}."):
            response = edge.get(host)
            assert (response.status_code, response.text) == (200, PAGE), host
        edge.sdk(lambda c: c.delete_domain(made["domain_id"]))
        response = edge.get(domain)
        assert (response.status_code, response.json()) == (
            404,
            error("no VM answers at this address"),
        )

    @pytest.mark.parametrize(
        "host",
        [
            "unknown.example.org",
            f"{uuid.uuid4()}.vm.localhost",
            "not-a-uuid.vm.localhost",
            "",
            "[::1]:80",
        ],
    )
    def test_unknown_names_are_404(self, edge: Edge, host: str) -> None:
        response = edge.get(host)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == error("no VM answers at this address")

    @pytest.mark.parametrize("port", ["0", "65536", "99999"])
    def test_ports_outside_the_range_are_404(self, edge: Edge, port: str) -> None:
        response = edge.get(f"{port}-{edge.vm_id}.vm.localhost")
        assert (response.status_code, response.json()) == (
            404,
            error("no VM answers at this address"),
        )

    def test_a_port_nothing_listens_on_is_502(self, edge: Edge) -> None:
        response = edge.get(edge.name(port=9))
        assert (response.status_code, response.json()) == (
            502,
            error("nothing answered on port 9 of the VM"),
        )

    @pytest.mark.parametrize("host", ["anything.example.net", "", "127.0.0.1"])
    def test_the_domain_check_answers_on_any_host(self, edge: Edge, host: str) -> None:
        response = edge.get(host, "/.well-known/chelsea-domain-check")
        assert response.status_code == 200
        assert response.text == "chelsea-domain-ok"
        assert response.headers["content-type"].startswith("text/plain")

    def test_the_api_is_not_served_on_the_edge(self, edge: Edge) -> None:
        response = edge.get("127.0.0.1", "/api/v1/vm")
        assert response.status_code == 404


class TestHostileRequests:
    def test_connect_and_absolute_targets_never_choose_the_destination(self, edge: Edge) -> None:
        # A listener on the host's loopback that the edge must never reach.
        with socket.socket() as bait:
            bait.bind(("127.0.0.1", 0))
            bait.listen()
            bait.settimeout(1)
            port = bait.getsockname()[1]
            host = edge.name().encode()
            for request, status, message in (
                (b"CONNECT @127.0.0.1:%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (port, host), 400,
                 b"the request target must be a path"),
                (b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: %s\r\n\r\n" % (port, host), 400,
                 b"the request target must be a path"),
                (b"OPTIONS * HTTP/1.1\r\nHost: %s\r\n\r\n" % host, 400,
                 b"the request target must be a path"),
            ):  # fmt: skip
                reply = raw_exchange(edge.port, request)
                head, _, body = reply.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 %d" % status), reply
                assert body == b'{"success":false,"error":"%s"}' % message
                with pytest.raises(TimeoutError):
                    bait.accept()

    def test_what_the_parser_refuses_is_a_json_400_without_the_request(self, edge: Edge) -> None:
        request = (
            b"POST /x HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc"
            % edge.name().encode()
        )
        reply = raw_exchange(edge.port, request)
        head, _, body = reply.partition(b"\r\n\r\n")
        # aiohttp answers a request it could not parse as HTTP/1.0.
        assert head.split(b" ")[1] == b"400", reply
        assert b"application/json" in head
        assert body == b'{"success":false,"error":"malformed request"}'

    def test_a_head_that_never_ends_is_closed_after_the_head_timeout(self, edge: Edge) -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", edge.port), timeout=HEAD_TIMEOUT * 5) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: " + edge.name().encode() + b"\r\nX-Slow: 1")
            assert slow.recv(1) == b""  # closed by the server, no answer
        assert time.monotonic() - started < HEAD_TIMEOUT * 3

    def test_many_ports_keep_at_most_32_forwards_and_port_80_works(self, edge: Edge) -> None:
        for port in range(20000, 20040):
            assert edge.get(edge.name(port=port)).status_code == 502
        runtime = Path(edge.backend.env["VERS_ORCHESTRATOR_VM_RUNTIME_DIR"]) / edge.vm_id
        forwards = json.loads((runtime / "forwards.json").read_text())
        assert len(forwards) == 32
        response = edge.get(edge.name())
        assert (response.status_code, response.text) == (200, PAGE)
        assert edge.get(edge.name(port=APP_PORT), "/headers").status_code == 200

    def test_guest_processes_get_none_of_the_servers_settings(self, edge: Edge) -> None:
        runtime_dir = edge.backend.env["VERS_ORCHESTRATOR_VM_RUNTIME_DIR"]
        processes = qemu_processes(runtime_dir) + live_processes(
            str(edge.backend.env["VERS_ORCHESTRATOR_DATA_DIR"]), "passt"
        )
        assert len(processes) >= 2
        for pid in processes:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environment if v.startswith(b"VERS_ORCHESTRATOR_")], pid


class TestStreaming:
    def test_a_32_mib_upload_streams_to_the_guest(self, edge: Edge) -> None:
        chunk = os.urandom(1 << 20)

        def body() -> Iterator[bytes]:
            for _ in range(32):
                yield chunk

        with httpx.Client(timeout=120) as client:
            response = client.post(
                f"http://127.0.0.1:{edge.port}/count",
                headers={"Host": edge.name(port=APP_PORT)},
                content=body(),
            )
        assert response.status_code == 200
        assert response.json() == {
            "bytes": 32 << 20,
            "sha256": hashlib.sha256(chunk * 32).hexdigest(),
        }

    def test_a_100_mib_download_streams_with_flat_server_memory(self, edge: Edge) -> None:
        before = server_rss_kib(edge.server)
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, server_rss_kib(edge.server))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        received = 0
        digest = hashlib.sha256()
        try:
            with (
                httpx.Client(timeout=300) as client,
                client.stream(
                    "GET",
                    f"http://127.0.0.1:{edge.port}/big?mib=100",
                    headers={"Host": edge.name(port=APP_PORT)},
                ) as response,
            ):
                assert response.status_code == 200
                assert response.headers["content-length"] == str(100 << 20)
                for piece in response.iter_raw():
                    received += len(piece)
                    digest.update(piece)
        finally:
            done.set()
            sampler.join()
        pattern = bytes(range(256)) * 256
        assert received == 100 << 20
        assert digest.hexdigest() == hashlib.sha256(pattern * 1600).hexdigest()
        # Held whole, the body alone would add 100 MiB.
        assert peak - before < 24 * 1024, f"server grew by {(peak - before) // 1024} MiB"

    def test_a_websocket_echoes_through_the_edge(self, edge: Edge) -> None:
        async def talk() -> list[Any]:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(
                    f"http://127.0.0.1:{edge.port}/ws",
                    headers={"Host": edge.name(port=APP_PORT)},
                    protocols=("echo.v1",),
                ) as ws,
            ):
                seen: list[Any] = [ws.protocol]
                await ws.send_str("hello")
                seen.append((await ws.receive()).data)
                await ws.send_bytes(b"\x00\xffbinary" * 1000)
                seen.append((await ws.receive()).data)
                await ws.close(code=4001, message=b"bye")
                seen.append(ws.close_code)
                return seen

        protocol, text, binary, close_code = asyncio.run(talk())
        assert protocol == "echo.v1"
        assert text == "hello"
        assert binary == b"\x00\xffbinary" * 1000
        assert close_code == 4001

    def test_keep_alive_carries_many_requests_on_one_connection(self, edge: Edge) -> None:
        with httpx.Client(timeout=60) as client:
            for _ in range(20):
                response = client.get(
                    f"http://127.0.0.1:{edge.port}/", headers={"Host": edge.name()}
                )
                assert response.text == PAGE
                assert response.headers.get("connection", "").lower() != "close"


class TestVmStates:
    def test_a_paused_vm_is_503_unless_it_asked_to_be_woken(self, edge: Edge) -> None:
        with edge.api() as client:
            assert (
                client.patch(f"/api/v1/vm/{edge.vm_id}/state", json={"state": "Paused"}).status_code
                == 200
            )
            response = edge.get(edge.name())
            assert (response.status_code, response.json()) == (503, error("the VM is paused"))
            labelled = client.patch(
                f"/api/v1/vm/{edge.vm_id}/label", json={"labels": {"vers.edge.wake": "true"}}
            )
            assert labelled.status_code in (200, 204), labelled.text
            response = edge.get(edge.name())
            assert (response.status_code, response.text) == (200, PAGE)
            assert client.get(f"/api/v1/vm/{edge.vm_id}/status").json()["state"] == "running"
            client.delete(f"/api/v1/vm/{edge.vm_id}/label/vers.edge.wake")

    def test_a_private_vm_is_not_reachable(self, edge: Edge) -> None:
        with edge.api() as client:
            client.patch(
                f"/api/v1/vm/{edge.vm_id}/label", json={"labels": {"vers.edge.access": "private"}}
            )
            response = edge.get(edge.name())
            assert (response.status_code, response.json()) == (
                404,
                error("no VM answers at this address"),
            )
            client.delete(f"/api/v1/vm/{edge.vm_id}/label/vers.edge.access")
        assert edge.get(edge.name()).status_code == 200

    def test_the_port_label_moves_the_vm_name(self, edge: Edge) -> None:
        with edge.api() as client:
            client.patch(
                f"/api/v1/vm/{edge.vm_id}/label", json={"labels": {"vers.edge.port": str(APP_PORT)}}
            )
            response = edge.get(edge.name(), "/headers")
            assert response.status_code == 200
            assert "Host" in response.json()
            client.delete(f"/api/v1/vm/{edge.vm_id}/label/vers.edge.port")
        assert edge.get(edge.name()).text == PAGE

    def test_a_branch_serves_under_its_own_name(self, edge: Edge) -> None:
        # The servers' processes are in the memory the branch continues from.
        with edge.api() as client:
            branched = client.post(f"/api/v1/vm/{edge.vm_id}/branch")
            assert branched.status_code == 201, branched.text
            branch_id = branched.json()["vms"][0]["vm_id"]
            response = edge.get(edge.name(branch_id))
            assert (response.status_code, response.text) == (200, PAGE)
            assert edge.get(edge.name(branch_id, APP_PORT), "/headers").status_code == 200
            assert client.delete(f"/api/v1/vm/{branch_id}").status_code == 200
        response = edge.get(edge.name(branch_id))
        assert (response.status_code, response.json()) == (
            404,
            error("no VM answers at this address"),
        )

    def test_a_restarted_server_reaches_its_vms_again(self, edge: Edge) -> None:
        edge.server.stop()
        edge.server.start()
        response = edge.get(edge.name())
        assert (response.status_code, response.text) == (200, PAGE)
        assert edge.get(edge.name(port=APP_PORT), "/headers").status_code == 200


# ------------------------------------------------------------------------ TLS


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    certificate, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(certificate),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return certificate, key


def served_common_name(port: int, trusted: Path) -> str:
    context = ssl.create_default_context(cafile=str(trusted))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        subject = dict(item[0] for item in tls.getpeercert()["subject"])  # type: ignore[index]
        return str(subject["commonName"])


def test_tls_is_served_and_reloaded_on_sighup(tmp_path: Path) -> None:
    first_cert, first_key = make_certificate(tmp_path, "first")
    second_cert, second_key = make_certificate(tmp_path, "second")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(first_cert.read_bytes())
    live_key.write_bytes(first_key.read_bytes())
    port = free_port()
    backend = Backend.create(
        "sqlite",
        tmp_path / "backend",
        EDGE_PORT=str(port),
        EDGE_TLS_CERT=str(live_cert),
        EDGE_TLS_KEY=str(live_key),
    )
    server = Server(backend, tmp_path / "server.log").start()
    try:
        assert served_common_name(port, first_cert) == "first"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(first_cert))) as client:
            check = client.get(f"https://localhost:{port}/.well-known/chelsea-domain-check")
            assert (check.status_code, check.text) == (200, "chelsea-domain-ok")
            unknown = client.get(f"https://localhost:{port}/", headers={"Host": "x.example.org"})
            assert (unknown.status_code, unknown.json()) == (
                404,
                error("no VM answers at this address"),
            )
        # A broken file on SIGHUP keeps the certificate in use.
        live_cert.write_text("not a certificate")
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert served_common_name(port, first_cert) == "first"
        assert "TLS files not reloaded" in server.log_text()
        live_cert.write_bytes(second_cert.read_bytes())
        live_key.write_bytes(second_key.read_bytes())
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate reloaded" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        assert served_common_name(port, second_cert) == "second"
        assert server.process.poll() is None
    finally:
        server.stop()
        backend.drop()


def test_the_edge_is_off_unless_a_port_is_set(server: Server) -> None:
    assert "edge listening" not in server.log_text()


def test_an_edge_port_in_use_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        backend = Backend.create(
            "sqlite", tmp_path / "backend", EDGE_PORT=str(taken.getsockname()[1])
        )
        result = backend.cli("serve", "--port", "0", check=False)
    assert result.returncode == 2
    assert "vers-orchestrator: error:" in result.stderr
    assert "Traceback" not in result.stderr
    backend.drop()
