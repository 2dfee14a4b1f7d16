"""/api/v1/domains: custom domain names of VMs, over HTTP and the official SDK, on SQLite
and PostgreSQL. The VMs are rows without guests: a domain only needs its VM to be live."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from vers_sdk import NotFoundError
from vers_sdk.models import ListDomainsParams

from tests.factories import in_database, vm_row
from tests.support import Backend, Key, Server, error, make_key, sdk_call
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.database import utc_now
from vers_orchestrator.store.vms import State

PATH = "/api/v1/domains"


def live_vm(backend: Backend, key: Key) -> str:
    vm = vm_row(key)
    in_database(backend, lambda db: db.write(lambda tx: vm_store.insert(tx, vm)))
    return vm.vm_id


def end_vm(backend: Backend, vm_id: str) -> None:
    in_database(
        backend,
        lambda db: db.write(lambda tx: vm_store.set_state(tx, vm_id, State.DELETED, utc_now())),
    )


def create(server: Server, key: Key, body: Any) -> httpx.Response:
    with server.client(key.token) as client:
        return client.post(PATH, json=body)


def name() -> str:
    return f"app-{uuid.uuid4().hex[:12]}.example.com"


class TestCreate:
    def test_created_lowercased_and_read_back_through_the_sdk(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        vm = live_vm(backend, key)
        domain = name()
        made = sdk_call(
            server, key.token, lambda c: c.create_domain({"vm_id": vm, "domain": domain.upper()})
        )
        assert made == {
            "domain_id": made["domain_id"],
            "vm_id": vm,
            "domain": domain,
            "created_at": made["created_at"],
        }
        assert made["created_at"].endswith("Z")
        got = sdk_call(server, key.token, lambda c: c.get_domain(made["domain_id"]))
        assert got == made

    @pytest.mark.parametrize(
        ("domain", "reason"),
        [
            ("", "Domain must be 1-253 characters"),
            ("a." * 127 + "com", "Domain must be 1-253 characters"),
            ("localhost", "Domain must have at least two parts (e.g., example.com)"),
            ("a..example.com", "Each domain label must be 1-63 characters"),
            ("example.com.", "Each domain label must be 1-63 characters"),
            ("x" * 64 + ".com", "Each domain label must be 1-63 characters"),
            (
                "my_app.example.com",
                "Domain labels can only contain alphanumeric characters and hyphens",
            ),
            ("é.example.com", "Domain labels can only contain alphanumeric characters and hyphens"),
            ("-a.example.com", "Domain labels cannot start or end with a hyphen"),
            ("10.0.0.1", "Top-level domain cannot be all numeric"),
        ],
    )
    def test_invalid_names(
        self, server: Server, backend: Backend, key: Key, domain: str, reason: str
    ) -> None:
        response = create(server, key, {"vm_id": str(uuid.uuid4()), "domain": domain})
        assert (response.status_code, response.json()) == (400, error(f"invalid domain: {reason}"))

    def test_a_vm_that_is_not_the_organizations_or_not_live(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        stranger = make_key(backend)
        theirs = live_vm(backend, stranger)
        ended = live_vm(backend, key)
        end_vm(backend, ended)
        for vm in (theirs, ended, str(uuid.uuid4())):
            response = create(server, key, {"vm_id": vm, "domain": name()})
            assert (response.status_code, response.json()) == (404, error("vm not found"))

    def test_names_are_unique_across_organizations_whatever_their_case(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        domain = name()
        assert (
            create(server, key, {"vm_id": live_vm(backend, key), "domain": domain}).status_code
            == 201
        )
        stranger = make_key(backend)
        again = create(
            server, stranger, {"vm_id": live_vm(backend, stranger), "domain": domain.upper()}
        )
        assert (again.status_code, again.json()) == (409, error("domain already exists"))

    def test_a_name_whose_dns_does_not_point_here_is_422(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        domain = f"vers-{uuid.uuid4().hex[:12]}.com"
        response = create(server, key, {"vm_id": live_vm(backend, key), "domain": domain})
        assert response.status_code == 422
        assert response.json()["error"].startswith(f"DNS for {domain} is not ready yet (")

    def test_a_body_of_the_wrong_shape_is_422(self, server: Server, key: Key) -> None:
        for body in ({"domain": name()}, {"vm_id": "x", "domain": name()}):
            response = create(server, key, body)
            assert response.status_code == 422
            assert response.json()["error"].startswith("Failed to deserialize the JSON body")


class TestListGetDelete:
    def test_the_organizations_domains_and_a_vms(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        owner = make_key(backend)
        colleague = make_key(backend, org=owner.org_name)
        stranger = make_key(backend)
        first, second = live_vm(backend, owner), live_vm(backend, owner)
        made = [
            create(server, owner, {"vm_id": vm, "domain": name()}).json()
            for vm in (first, second, second)
        ]
        everything = sdk_call(server, colleague.token, lambda c: c.list_domains())
        assert everything == made
        of_second = sdk_call(
            server, colleague.token, lambda c: c.list_domains(ListDomainsParams(vm_id=second))
        )
        assert of_second == made[1:]
        assert sdk_call(server, stranger.token, lambda c: c.list_domains()) == []
        with server.client(stranger.token) as client:
            theirs = client.get(PATH, params={"vm_id": second})
            bad = client.get(PATH, params={"vm_id": "x"})
            read = client.get(f"{PATH}/{made[0]['domain_id']}")
            deleted = client.delete(f"{PATH}/{made[0]['domain_id']}")
            malformed = client.get(f"{PATH}/not-a-uuid")
        assert (theirs.status_code, theirs.json()) == (404, error("vm not found"))
        assert bad.status_code == 400
        assert bad.json()["error"].startswith("Failed to deserialize query string: ")
        for response in (read, deleted):
            assert (response.status_code, response.json()) == (404, error("not found"))
        assert malformed.status_code == 400

    def test_a_colleague_deletes_and_the_name_is_free_again(
        self, server: Server, backend: Backend, key: Key
    ) -> None:
        owner = make_key(backend)
        colleague = make_key(backend, org=owner.org_name)
        vm, domain = live_vm(backend, owner), name()
        made = create(server, owner, {"vm_id": vm, "domain": domain}).json()
        gone = sdk_call(server, colleague.token, lambda c: c.delete_domain(made["domain_id"]))
        assert gone == {"domain_id": made["domain_id"]}
        with pytest.raises(NotFoundError):
            sdk_call(server, owner.token, lambda c: c.get_domain(made["domain_id"]))
        assert create(server, owner, {"vm_id": vm, "domain": domain}).status_code == 201

    def test_a_domain_goes_with_its_vm(self, server: Server, backend: Backend, key: Key) -> None:
        vm, domain = live_vm(backend, key), name()
        made = create(server, key, {"vm_id": vm, "domain": domain}).json()
        end_vm(backend, vm)
        with server.client(key.token) as client:
            read = client.get(f"{PATH}/{made['domain_id']}")
        assert (read.status_code, read.json()) == (404, error("not found"))
        other = live_vm(backend, key)
        assert create(server, key, {"vm_id": other, "domain": domain}).status_code == 201
