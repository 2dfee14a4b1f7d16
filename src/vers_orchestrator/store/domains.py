"""Custom domains: one row per name, lowercased, unique across the server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator.store.database import Row, Tx, as_datetime, as_id


@dataclass(frozen=True, slots=True)
class Domain:
    domain_id: str
    org_id: str
    owner_id: str
    vm_id: str
    domain: str
    created_at: datetime


_COLUMNS = (
    "SELECT d.domain_id, d.org_id, d.owner_id, d.vm_id, d.domain, d.created_at FROM domains d"
    # Only domains of live VMs: a VM's end removes its domains in the same transaction;
    # this keeps that true for rows written before.
    " JOIN vms v ON v.vm_id = d.vm_id AND v.deleted_at IS NULL"
)


def _domain(row: Row) -> Domain:
    return Domain(
        domain_id=as_id(row["domain_id"]),
        org_id=as_id(row["org_id"]),
        owner_id=as_id(row["owner_id"]),
        vm_id=as_id(row["vm_id"]),
        domain=row["domain"],
        created_at=as_datetime(row["created_at"]),
    )


async def insert(tx: Tx, domain: Domain) -> None:
    """Raises `UniqueViolation` when any organization has that name."""
    await tx.execute(
        "INSERT INTO domains (domain_id, org_id, owner_id, vm_id, domain, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        domain.domain_id,
        domain.org_id,
        domain.owner_id,
        domain.vm_id,
        domain.domain,
        domain.created_at,
    )


async def get_in_org(tx: Tx, org_id: str, domain_id: str) -> Domain | None:
    row = await tx.fetch_one(
        _COLUMNS + " WHERE d.domain_id = $1 AND d.org_id = $2", domain_id, org_id
    )
    return None if row is None else _domain(row)


async def vm_of_domain(tx: Tx, domain: str) -> str | None:
    """The VM a (lowercase) domain name routes to, in any organization."""
    row = await tx.fetch_one("SELECT vm_id FROM domains WHERE domain = $1", domain)
    return None if row is None else as_id(row["vm_id"])


async def list_in_org(tx: Tx, org_id: str) -> list[Domain]:
    rows = await tx.fetch_all(
        _COLUMNS + " WHERE d.org_id = $1 ORDER BY d.created_at, d.domain_id", org_id
    )
    return [_domain(row) for row in rows]


async def list_of_vm(tx: Tx, vm_id: str) -> list[Domain]:
    rows = await tx.fetch_all(
        _COLUMNS + " WHERE d.vm_id = $1 ORDER BY d.created_at, d.domain_id", vm_id
    )
    return [_domain(row) for row in rows]


async def delete(tx: Tx, domain_id: str) -> bool:
    deleted = await tx.execute("DELETE FROM domains WHERE domain_id = $1", domain_id)
    return deleted == 1
