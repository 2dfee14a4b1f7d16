"""A fork into a repository that is deleted while the fork runs (issue 10, defect 15).

The fork reuses the caller's repository of the target name if there is one. On
PostgreSQL another transaction may delete it between the fork's lookup and its tag
insert; the fork then comes after the delete and makes the repository anew. The test
holds the delete open in a transaction of its own until the fork's tag insert waits for
it, so the race is hit every time. SQLite runs write units one at a time: no race there.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
import httpx
import pytest

from tests.support import IMAGES_DIR, Backend, Key, Server, make_key, unique_name
from vers_orchestrator.drivers.qemu.images import ensure_default_image

pytestmark = pytest.mark.slow

ROOT_CONFIG = {"vcpu_count": 1, "mem_size_mib": 256, "fs_size_mib": 1024}
REPOS = "/api/v1/repositories"
# Under TCG on two cores a boot takes 5-10 s; leave room for a loaded CI machine.
SLOW = 240.0


def public_tag(server: Server, owner: Key, repo: str, vms: list[tuple[Key, str]]) -> None:
    """Boot a VM of `owner` (added to `vms`), commit it, tag it `v1` in public `repo`."""
    with server.client(owner.token) as client:
        booted = client.post(
            "/api/v1/vm/new_root?wait_boot=true", json={"vm_config": ROOT_CONFIG}, timeout=SLOW
        )
        assert booted.status_code == 201, booted.text
        vm_id = booted.json()["vm_id"]
        vms.append((owner, vm_id))
        committed = client.post(f"/api/v1/vm/{vm_id}/commit", json={}, timeout=SLOW)
        assert committed.status_code == 201, committed.text
        tag = {"tag_name": "v1", "commit_id": committed.json()["commit_id"]}
        assert client.post(REPOS, json={"name": repo}).status_code == 201
        assert client.post(f"{REPOS}/{repo}/tags", json=tag).status_code == 201
        visibility = client.patch(f"{REPOS}/{repo}/visibility", json={"is_public": True})
        assert visibility.status_code == 204


async def fork_while_target_is_deleted(
    backend: Backend, server: Server, forker: Key, source: Key, repo: str
) -> httpx.Response:
    url = backend.env["VERS_ORCHESTRATOR_DATABASE_URL"]
    # Activity is read outside the deleting transaction, which would see one snapshot of it.
    connection, watcher = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        deleting = connection.transaction()
        await deleting.start()
        deleted = await connection.execute(
            "DELETE FROM repositories WHERE org_id = $1 AND name = $2", forker.org_id, repo
        )
        assert deleted == "DELETE 1"
        headers = {"Authorization": f"Bearer {forker.token}"}
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=headers, timeout=SLOW
        ) as client:
            body = {"source_org": source.org_name, "source_repo": repo, "source_tag": "v1"}
            forking = asyncio.ensure_future(client.post(f"{REPOS}/fork", json=body))
            # The fork found the repository (the delete is not committed) and now waits
            # for it at its tag insert; the delete commits under it.
            deadline = time.monotonic() + SLOW
            while not await waiting_tag_inserts(watcher):
                assert not forking.done(), forking.result().text
                assert time.monotonic() < deadline, "the fork never reached its tag insert"
                await asyncio.sleep(0.05)
            await deleting.commit()
            return await forking
    finally:
        await connection.close()
        await watcher.close()


async def waiting_tag_inserts(connection: asyncpg.Connection) -> int:
    waiting: int = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO commit_tags%'"
    )
    return waiting


class TestForkRacingTargetRepositoryDelete:
    def test_the_fork_makes_the_repository_anew(self, backend: Backend, server: Server) -> None:
        if backend.kind != "postgresql":
            pytest.skip("SQLite runs write units one at a time: the race cannot happen")
        ensure_default_image(IMAGES_DIR, lambda line: print(line, file=sys.stderr, flush=True))
        source, forker = make_key(backend), make_key(backend)
        repo = unique_name()
        vms: list[tuple[Key, str]] = []
        try:
            public_tag(server, source, repo, vms)
            with server.client(forker.token) as client:
                assert client.post(REPOS, json={"name": repo}).status_code == 201
            forked = asyncio.run(
                fork_while_target_is_deleted(backend, server, forker, source, repo)
            )
            assert forked.status_code == 201, forked.text
            vms.append((forker, forked.json()["vm_id"]))
            with server.client(forker.token) as client:
                repository = client.get(f"{REPOS}/{repo}").json()
                tag = client.get(f"{REPOS}/{repo}/tags/v1").json()
            assert repository["description"] == f"Forked from {source.org_name}/{repo}"
            assert tag["commit_id"] == forked.json()["commit_id"]
        finally:
            for owner, vm_id in vms:
                with server.client(owner.token) as client:
                    client.delete(f"/api/v1/vm/{vm_id}", timeout=SLOW)
