"""Guest networking of the QEMU driver (issue 13): outbound NAT through passt that never
reaches the host's loopback, `none` that reaches nothing, and forwards into guest ports
for new, restored and found-again VMs."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.drivers.harness import QemuHarness, run
from tests.support import live_processes
from vers_orchestrator.drivers.base import ExecRequest, VmSpec
from vers_orchestrator.drivers.qemu.driver import QemuDriver

SPEC = VmSpec(vcpus=1, mem_mib=256, disk_mib=1024)


def host_address() -> str | None:
    """An address of this machine other than loopback (that of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


class WebServer:
    """An HTTP server on the host that answers its own name."""

    def __init__(self, address: str, name: str) -> None:
        body = name.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def fetch(lab: QemuHarness, vm_id: str, url: str) -> str:
    """What the guest gets for `url`: the body, or the name of the error."""
    program = (
        "import urllib.request, sys\n"
        "try:\n"
        f"    print(urllib.request.urlopen({url!r}, timeout=3).read().decode())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    result = run(lab, lambda d: d.exec(vm_id, ExecRequest(argv=("python3", "-c", program))))
    assert result.exit_code == 0, result
    return str(result.stdout.decode().strip())


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, WebServer, WebServer]]:
    address = host_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    public = WebServer(address, "public")
    private = WebServer("127.0.0.1", "loopback")
    yield address, public, private
    public.stop()
    private.stop()


@pytest.fixture(scope="module")
def nat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[QemuHarness, str]]:
    lab = QemuHarness(tmp_path_factory.mktemp("net"), network="nat")
    try:
        run(lab, lambda d: d.create_vm("nat-root", SPEC))
        yield lab, "nat-root"
    finally:
        lab.destroy()


def loopback_urls(address: str, port: int) -> list[str]:
    # QEMU's user network's host alias, passt's gateway, and the host's own address.
    return [f"http://{host}:{port}/" for host in ("10.0.2.2", "10.0.3.2", address)]


class TestNat:
    def test_a_guest_reaches_a_server_on_the_hosts_network(
        self, nat: tuple[QemuHarness, str], servers: tuple[str, WebServer, WebServer]
    ) -> None:
        lab, vm = nat
        address, public, _ = servers
        assert fetch(lab, vm, f"http://{address}:{public.port}/") == "public"

    def test_a_guest_never_reaches_the_hosts_loopback(
        self, nat: tuple[QemuHarness, str], servers: tuple[str, WebServer, WebServer]
    ) -> None:
        lab, vm = nat
        address, _, private = servers
        for url in loopback_urls(address, private.port):
            assert fetch(lab, vm, url) != "loopback", url

    def test_forwards_reach_guest_ports_of_new_restored_and_found_again_vms(
        self, nat: tuple[QemuHarness, str]
    ) -> None:
        lab, vm = nat
        serve = (
            "mkdir -p /srv && echo forwarded > /srv/page"
            " && (nohup python3 -m http.server 8080 --directory /srv >/dev/null 2>&1 &) &&"
        )

        async def work(driver: QemuDriver) -> list[str]:
            await driver.exec(vm, ExecRequest(argv=("sh", "-c", f"{serve} sleep 1")))
            host, port = await driver.guest_port(vm, 8080)
            assert (host, port) == await driver.guest_port(vm, 8080)  # the same forward
            bodies = [await asyncio.to_thread(_get, host, port, "/page")]
            await driver.commit(vm, "net-commit")
            await driver.restore("net-commit", ["net-restored"])
            host, port = await driver.guest_port("net-restored", 8080)
            bodies.append(await asyncio.to_thread(_get, host, port, "/page"))
            return bodies

        assert run(lab, work) == ["forwarded\n", "forwarded\n"]
        # A new driver object (a restarted server) finds the forwards the QEMU has.
        again = run(lab, lambda d: d.guest_port("net-restored", 8080))
        assert _get(*again, "/page") == "forwarded\n"

    def test_the_restored_guest_goes_out_through_its_own_passt(
        self, nat: tuple[QemuHarness, str], servers: tuple[str, WebServer, WebServer]
    ) -> None:
        lab, _ = nat
        address, public, private = servers
        assert fetch(lab, "net-restored", f"http://{address}:{public.port}/") == "public"
        for url in loopback_urls(address, private.port):
            assert fetch(lab, "net-restored", url) != "loopback", url

    def test_passt_goes_with_its_vm(self, nat: tuple[QemuHarness, str]) -> None:
        lab, _ = nat
        marker = str(lab.state_dir / "vms" / "net-restored")
        assert len(live_processes(marker, "passt")) == 1
        run(lab, lambda d: d.delete_vm("net-restored"))
        assert live_processes(marker, "passt") == []


def test_network_none_reaches_nothing(
    tmp_path: Path, servers: tuple[str, WebServer, WebServer]
) -> None:
    lab = QemuHarness(tmp_path, network="none")
    address, public, private = servers
    try:
        run(lab, lambda d: d.create_vm("none-root", SPEC))
        assert fetch(lab, "none-root", f"http://{address}:{public.port}/") != "public"
        for url in loopback_urls(address, private.port):
            assert fetch(lab, "none-root", url) != "loopback", url
        assert live_processes(str(lab.state_dir), "passt") == []
        # Forwards into the guest work without outbound access.
        serve = (
            "mkdir -p /srv && echo forwarded > /srv/page"
            " && (nohup python3 -m http.server 8080 --directory /srv >/dev/null 2>&1 &) && sleep 1"
        )
        run(lab, lambda d: d.exec("none-root", ExecRequest(argv=("sh", "-c", serve))))
        forward = run(lab, lambda d: d.guest_port("none-root", 8080))
        assert _get(*forward, "/page") == "forwarded\n"
    finally:
        lab.destroy()


def _get(host: str, port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=30) as response:
        return str(response.read().decode())
