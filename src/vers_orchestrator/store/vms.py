"""VMs as the database knows them: intent and outcome of every driver call.

A row is inserted (`creating`) before the driver boots or restores the VM and updated once
the driver has answered, so a crash in between leaves a row that the start-up
reconciliation settles against the driver's inventory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from vers_orchestrator.store.database import Row, Tx, as_datetime, as_id, as_optional_datetime


class State(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    DELETING = "deleting"
    # The hypervisor process is gone; only a delete helps.
    DEAD = "dead"
    # The two end states; both set `deleted_at`.
    DELETED = "deleted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Vm:
    vm_id: str
    org_id: str
    owner_id: str
    parent_commit_id: str | None
    state: State
    vcpus: int
    mem_mib: int
    disk_mib: int
    labels: dict[str, str]
    ssh_port: int | None
    created_at: datetime
    deleted_at: datetime | None
    node: str


@dataclass(frozen=True, slots=True)
class Usage:
    vms: int
    vcpus: int
    mem_mib: int
    disk_mib: int


_FIELDS = (
    " vm_id, org_id, owner_id, parent_commit_id, state, vcpus, mem_mib, disk_mib, labels,"
    " ssh_port, created_at, deleted_at, node"
)
_COLUMNS = "SELECT" + _FIELDS + " FROM vms"


def _vm(row: Row) -> Vm:
    parent = row["parent_commit_id"]
    return Vm(
        vm_id=as_id(row["vm_id"]),
        org_id=as_id(row["org_id"]),
        owner_id=as_id(row["owner_id"]),
        parent_commit_id=None if parent is None else as_id(parent),
        state=State(row["state"]),
        vcpus=row["vcpus"],
        mem_mib=row["mem_mib"],
        disk_mib=row["disk_mib"],
        labels=json.loads(row["labels"]),
        ssh_port=row["ssh_port"],
        created_at=as_datetime(row["created_at"]),
        deleted_at=as_optional_datetime(row["deleted_at"]),
        node=row["node"],
    )


async def insert(tx: Tx, vm: Vm) -> None:
    await tx.execute(
        "INSERT INTO vms (vm_id, org_id, owner_id, parent_commit_id, state, vcpus, mem_mib,"
        " disk_mib, labels, ssh_port, created_at, deleted_at, node)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        vm.vm_id,
        vm.org_id,
        vm.owner_id,
        vm.parent_commit_id,
        vm.state.value,
        vm.vcpus,
        vm.mem_mib,
        vm.disk_mib,
        json.dumps(vm.labels, sort_keys=True),
        vm.ssh_port,
        vm.created_at,
        vm.deleted_at,
        vm.node,
    )


async def get(tx: Tx, vm_id: str) -> Vm | None:
    """The VM, deleted or not."""
    row = await tx.fetch_one(_COLUMNS + " WHERE vm_id = $1", vm_id)
    return None if row is None else _vm(row)


async def get_live_in_org(tx: Tx, org_id: str, vm_id: str) -> Vm | None:
    row = await tx.fetch_one(
        _COLUMNS + " WHERE vm_id = $1 AND org_id = $2 AND deleted_at IS NULL", vm_id, org_id
    )
    return None if row is None else _vm(row)


async def list_live_in_org(tx: Tx, org_id: str) -> list[Vm]:
    rows = await tx.fetch_all(
        _COLUMNS + " WHERE org_id = $1 AND deleted_at IS NULL ORDER BY created_at, vm_id",
        org_id,
    )
    return [_vm(row) for row in rows]


async def list_live_on_node(tx: Tx, node: str) -> list[Vm]:
    rows = await tx.fetch_all(
        _COLUMNS + " WHERE node = $1 AND deleted_at IS NULL ORDER BY created_at, vm_id", node
    )
    return [_vm(row) for row in rows]


async def usage_of_owner(tx: Tx, owner_id: str) -> Usage:
    row = await tx.fetch_one(
        "SELECT count(*) AS n, coalesce(sum(vcpus), 0) AS vcpus,"
        " coalesce(sum(mem_mib), 0) AS mem_mib, coalesce(sum(disk_mib), 0) AS disk_mib"
        " FROM vms WHERE owner_id = $1 AND deleted_at IS NULL",
        owner_id,
    )
    assert row is not None
    return Usage(int(row["n"]), int(row["vcpus"]), int(row["mem_mib"]), int(row["disk_mib"]))


async def usage_of_node(tx: Tx, node: str) -> Usage:
    row = await tx.fetch_one(
        "SELECT count(*) AS n, coalesce(sum(vcpus), 0) AS vcpus,"
        " coalesce(sum(mem_mib), 0) AS mem_mib, coalesce(sum(disk_mib), 0) AS disk_mib"
        " FROM vms WHERE node = $1 AND deleted_at IS NULL",
        node,
    )
    assert row is not None
    return Usage(int(row["n"]), int(row["vcpus"]), int(row["mem_mib"]), int(row["disk_mib"]))


async def set_state(tx: Tx, vm_id: str, state: State, now: datetime | None = None) -> None:
    """Move a live VM to `state`; the end states also stamp `deleted_at` with `now` and
    remove the VM's custom domains and deploy project (decisions.md: they follow their
    VM, and the project's name is free again)."""
    ended = state in (State.DELETED, State.FAILED)
    if ended:
        await tx.execute("DELETE FROM domains WHERE vm_id = $1", vm_id)
        await tx.execute("DELETE FROM deploy_projects WHERE vm_id = $1", vm_id)
    await tx.execute(
        "UPDATE vms SET state = $2, deleted_at = CASE WHEN $3 THEN $4 ELSE deleted_at END"
        " WHERE vm_id = $1 AND deleted_at IS NULL",
        vm_id,
        state.value,
        ended,
        now if ended else None,
    )


async def set_disk(tx: Tx, vm_id: str, disk_mib: int) -> None:
    await tx.execute("UPDATE vms SET disk_mib = $2 WHERE vm_id = $1", vm_id, disk_mib)


async def set_ssh_port(tx: Tx, vm_id: str, port: int) -> None:
    await tx.execute("UPDATE vms SET ssh_port = $2 WHERE vm_id = $1", vm_id, port)


async def set_labels(tx: Tx, vm_id: str, labels: dict[str, str]) -> None:
    await tx.execute(
        "UPDATE vms SET labels = $2 WHERE vm_id = $1", vm_id, json.dumps(labels, sort_keys=True)
    )


async def delete_row(tx: Tx, vm_id: str) -> None:
    """Forget a VM entirely: only for undoing a fork that failed."""
    await tx.execute("DELETE FROM vms WHERE vm_id = $1", vm_id)
