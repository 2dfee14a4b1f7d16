"""`vers-orchestrator vms stop-all`: VMs outlive their server; this stops them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import Backend, Server, make_key, qemu_processes

# Under TCG on two cores a boot takes 5-10 s; leave room for a loaded CI machine.
SLOW = 240.0
ROOT_CONFIG = {"vcpu_count": 1, "mem_size_mib": 256, "fs_size_mib": 1024}


def test_refused_while_a_server_runs(fresh_backend: Backend, tmp_path: Path) -> None:
    server = Server(fresh_backend, tmp_path / "server.log").start()
    try:
        result = fresh_backend.cli("vms", "stop-all", check=False)
    finally:
        server.stop()
    data_dir = fresh_backend.env["VERS_ORCHESTRATOR_DATA_DIR"]
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        f"vers-orchestrator: error: a server is running on data directory {data_dir}"
    )


def test_with_no_vm_says_so(fresh_backend: Backend) -> None:
    result = fresh_backend.cli("vms", "stop-all")
    assert result.stdout == "no VM was running\n"


@pytest.mark.slow
def test_stops_the_vms_a_stopped_server_left_and_records_them_dead(tmp_path: Path) -> None:
    # One VM, on SQLite only: a boot is the expensive part and the database plays no role.
    backend = Backend.create("sqlite", tmp_path / "backend")
    runtime_dir = backend.env["VERS_ORCHESTRATOR_VM_RUNTIME_DIR"]
    try:
        key = make_key(backend)
        server = Server(backend, tmp_path / "first.log").start()
        with server.client(key.token) as client:
            created = client.post(
                "/api/v1/vm/new_root?wait_boot=true",
                json={"vm_config": ROOT_CONFIG},
                timeout=SLOW,
            )
        assert created.status_code == 201, created.text
        vm_id = created.json()["vm_id"]
        assert server.stop() == 0
        assert qemu_processes(runtime_dir), "the VM should outlive its server"

        result = backend.cli("vms", "stop-all")
        assert result.stdout == (
            f"stopped {vm_id}\n1 stopped; listed as dead until deleted through the API\n"
        )
        assert qemu_processes(runtime_dir) == []

        again = Server(backend, tmp_path / "second.log").start()
        try:
            with again.client(key.token) as client:
                assert client.get(f"/api/v1/vm/{vm_id}/status").json()["state"] == "dead"
                deleted = client.delete(f"/api/v1/vm/{vm_id}", timeout=SLOW)
                assert deleted.json() == {"vm_id": vm_id}
        finally:
            assert again.stop() == 0
    finally:
        backend.drop()
