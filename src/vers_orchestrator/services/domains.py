"""Custom domains of VMs (`upstream-semantics-platform.md` §3; `decisions.md`).

Checks and texts are the hosted service's, in its order: the name as given, the VM, the
DNS-readiness probe (unless turned off, and never for reserved test names), then the
insert. Differences, in `docs/decisions.md`: domains belong to the organization (every key
of it lists, reads and deletes them; another organization's are 404 `not found`, a VM of
another organization 404 `vm not found`), and a domain goes with its VM.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from vers_orchestrator.auth import Principal
from vers_orchestrator.errors import (
    Conflict,
    InvalidField,
    NotFound,
    Unprocessable,
    VmNotFound,
)
from vers_orchestrator.store import domains as domain_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.database import Database, Tx, UniqueViolation, utc_now
from vers_orchestrator.store.domains import Domain

MAX_DOMAIN_BYTES = 253
MAX_LABEL_BYTES = 63
LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
RESERVED_ZONES = ("example.com", "example.net", "example.org")
RESERVED_TOP_LEVELS = frozenset({"example", "test", "invalid", "localhost"})
PROBE_PATH = "/.well-known/chelsea-domain-check"
PROBE_ANSWER = "chelsea-domain-ok"
PROBE_TIMEOUT_SECONDS = 5.0
PROBE_MAX_BYTES = 49


def check_domain(domain: str) -> None:
    """Raises InvalidField (400) `invalid domain: <reason>` with the hosted service's first
    broken rule, checked on the name as given."""
    if not 1 <= len(domain.encode()) <= MAX_DOMAIN_BYTES:
        _invalid("Domain must be 1-253 characters")
    labels = domain.split(".")
    if len(labels) < 2:
        _invalid("Domain must have at least two parts (e.g., example.com)")
    for label in labels:
        if not 1 <= len(label.encode()) <= MAX_LABEL_BYTES:
            _invalid("Each domain label must be 1-63 characters")
        if not LABEL_CHARACTERS.issuperset(label):
            _invalid("Domain labels can only contain alphanumeric characters and hyphens")
        if label.startswith("-") or label.endswith("-"):
            _invalid("Domain labels cannot start or end with a hyphen")
    if labels[-1].isdigit():
        _invalid("Top-level domain cannot be all numeric")


def is_reserved(domain: str) -> bool:
    """Names the probe never checks: the example zones and the reserved top-level names."""
    lowered = domain.lower()
    if any(lowered == zone or lowered.endswith(f".{zone}") for zone in RESERVED_ZONES):
        return True
    return lowered.rsplit(".", 1)[-1] in RESERVED_TOP_LEVELS


def _invalid(reason: str) -> None:
    raise InvalidField(f"invalid domain: {reason}")


class Domains:
    def __init__(self, db: Database, probe: bool) -> None:
        """`probe`: whether a new domain must answer the DNS-readiness check first."""
        self._db = db
        self._probe = probe
        self._listeners: list[Callable[[str], None]] = []

    def on_delete(self, listener: Callable[[str], None]) -> None:
        """Call `listener(vm_id)` after one of the VM's domains is deleted (the edge
        forgets its cached routes to the VM)."""
        self._listeners.append(listener)

    async def create(self, principal: Principal, vm_id: str, domain: str) -> Domain:
        """Raises InvalidField (400), VmNotFound (404), Unprocessable (422, DNS not ready),
        Conflict (409 `domain already exists`, in any organization)."""
        check_domain(domain)
        vm_id = await self._live_vm(principal, vm_id)
        if self._probe and not is_reserved(domain):
            await _probe(domain)
        created = Domain(
            domain_id=str(uuid.uuid4()),
            org_id=principal.org_id,
            owner_id=principal.api_key_id,
            vm_id=vm_id,
            domain=domain.lower(),
            created_at=utc_now(),
        )

        async def insert(tx: Tx) -> None:
            # The VM again, in the transaction: one deleted meanwhile takes no domain.
            if await vm_store.get_live_in_org(tx, principal.org_id, vm_id) is None:
                raise VmNotFound()
            await domain_store.insert(tx, created)

        try:
            await self._db.write(insert)
        except UniqueViolation:
            raise Conflict("domain already exists") from None
        return created

    async def list(self, principal: Principal, vm_id: str | None) -> list[Domain]:
        if vm_id is None:
            return await self._db.read(lambda tx: domain_store.list_in_org(tx, principal.org_id))
        live = await self._live_vm(principal, vm_id)
        return await self._db.read(lambda tx: domain_store.list_of_vm(tx, live))

    async def get(self, principal: Principal, domain_id: str) -> Domain:
        found = await self._db.read(
            lambda tx: domain_store.get_in_org(tx, principal.org_id, domain_id)
        )
        if found is None:
            raise NotFound("not found")
        return found

    async def delete(self, principal: Principal, domain_id: str) -> str:
        found = await self.get(principal, domain_id)
        await self._db.write(lambda tx: domain_store.delete(tx, found.domain_id))
        for listener in self._listeners:
            listener(found.vm_id)
        return found.domain_id

    async def _live_vm(self, principal: Principal, vm_id: str) -> str:
        vm = await self._db.read(lambda tx: vm_store.get_live_in_org(tx, principal.org_id, vm_id))
        if vm is None:
            raise VmNotFound()
        return vm.vm_id


async def _probe(domain: str) -> None:
    """The hosted service's DNS-readiness check: `GET http://<domain>/.well-known/
    chelsea-domain-check` must answer 200 `chelsea-domain-ok` within 5 s (redirects
    followed). Raises Unprocessable (422) with its texts."""
    url = f"http://{domain}{PROBE_PATH}"
    try:
        async with (
            httpx.AsyncClient(timeout=PROBE_TIMEOUT_SECONDS, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise Unprocessable(
                    f"DNS for {domain} is not routed to Chelsea yet"
                    f" (HTTP {response.status_code} {response.reason_phrase})"
                )
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > PROBE_MAX_BYTES:
                    raise Unprocessable(f"DNS probe for {domain} returned more than 49 bytes")
    except httpx.TransportError as exc:
        raise Unprocessable(f"DNS for {domain} is not ready yet ({exc})") from None
    except httpx.HTTPError as exc:
        raise Unprocessable(f"Unable to verify DNS for {domain} ({exc})") from None
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise Unprocessable(f"DNS probe for {domain} returned invalid UTF-8 ({exc})") from None
    if text.strip() != PROBE_ANSWER:
        raise Unprocessable(
            f"DNS for {domain} must point at the Chelsea proxy before creating the domain."
        )
