"""The VM rows on the real databases: states, usage sums, labels, live VMs of a commit."""

from __future__ import annotations

import uuid
from dataclasses import replace

from tests.factories import make_commit
from tests.store.test_database import with_database
from tests.support import Backend, make_key
from vers_orchestrator.store import commits as commit_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.database import Database, Tx, utc_now
from vers_orchestrator.store.vms import State, Usage, Vm


def _vm(org_id: str, owner_id: str, parent_commit_id: str | None, mem_mib: int) -> Vm:
    return Vm(
        vm_id=str(uuid.uuid4()),
        org_id=org_id,
        owner_id=owner_id,
        parent_commit_id=parent_commit_id,
        state=State.CREATING,
        vcpus=2,
        mem_mib=mem_mib,
        disk_mib=1024,
        labels={"team": "a"},
        ssh_port=None,
        created_at=utc_now(),
        deleted_at=None,
        node="host-a:/state",
    )


def test_rows_move_through_their_states(fresh_backend: Backend) -> None:
    key = make_key(fresh_backend)
    commit = make_commit(fresh_backend, key)
    first = _vm(key.org_id, key.api_key_id, commit.commit_id, 256)
    second = _vm(key.org_id, key.api_key_id, commit.commit_id, 512)

    async def work(db: Database) -> None:
        async def insert(tx: Tx) -> None:
            await vm_store.insert(tx, first)
            await vm_store.insert(tx, second)

        await db.write(insert)
        assert await db.read(lambda tx: vm_store.usage_of_owner(tx, key.api_key_id)) == Usage(
            2, 4, 768, 2048
        )
        assert await db.read(lambda tx: commit_store.count_live_vms(tx, commit.commit_id)) == 2
        await db.write(lambda tx: vm_store.set_state(tx, first.vm_id, State.RUNNING, utc_now()))
        await db.write(lambda tx: vm_store.set_labels(tx, first.vm_id, {"b": "c"}))
        await db.write(lambda tx: vm_store.set_disk(tx, first.vm_id, 2048))
        await db.write(lambda tx: vm_store.set_ssh_port(tx, first.vm_id, 2222))
        found = await db.read(lambda tx: vm_store.get_live_in_org(tx, key.org_id, first.vm_id))
        assert found == replace(
            first, state=State.RUNNING, labels={"b": "c"}, disk_mib=2048, ssh_port=2222
        )
        await db.write(lambda tx: vm_store.set_state(tx, second.vm_id, State.DELETED, utc_now()))
        gone = await db.read(lambda tx: vm_store.get(tx, second.vm_id))
        assert gone is not None
        assert gone.state is State.DELETED
        assert gone.deleted_at is not None
        assert (
            await db.read(lambda tx: vm_store.get_live_in_org(tx, key.org_id, second.vm_id)) is None
        )
        listed = await db.read(lambda tx: vm_store.list_live_in_org(tx, key.org_id))
        assert [vm.vm_id for vm in listed] == [first.vm_id]
        assert await db.read(lambda tx: commit_store.count_live_vms(tx, commit.commit_id)) == 1
        assert await db.read(lambda tx: vm_store.usage_of_node(tx, "host-a:/state")) == Usage(
            1, 2, 256, 2048
        )
        assert await db.read(lambda tx: vm_store.usage_of_node(tx, "host-b:/state")) == Usage(
            0, 0, 0, 0
        )
        on_node = await db.read(lambda tx: vm_store.list_live_on_node(tx, "host-a:/state"))
        assert [vm.vm_id for vm in on_node] == [first.vm_id]
        other_org = await db.read(
            lambda tx: vm_store.get_live_in_org(tx, str(uuid.uuid4()), first.vm_id)
        )
        assert other_org is None

    with_database(fresh_backend, work)
