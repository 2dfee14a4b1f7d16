"""Where the edge proxy sends a request: from its Host header to a port inside a VM.

Names (issue 13; `upstream-semantics-platform.md` §3 for the hosted service's):
- `<vm_id>.vm.<base domain>` and every custom domain of the VM: the VM's web port, 80
  unless its label `vers.edge.port` names another (deploy sets it to the app's port);
- `<port>-<vm_id>.vm.<base domain>`: that port of the VM (E2B's form).

Access is the VM's, as on the hosted service: whoever reaches the edge reaches a VM's
ports, without an API key. A VM labelled `vers.edge.access=private` is not reachable
(404, as an unknown name: its existence is not revealed). A paused VM answers 503, or,
labelled `vers.edge.wake=true`, is continued by the request; a VM that is not alive 502.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from vers_orchestrator.drivers import base as driver_api
from vers_orchestrator.drivers.base import VmDriver
from vers_orchestrator.errors import (
    EdgeHostUnknown,
    EdgeVmNotRunning,
    VmAsleep,
    VmNotRunning,
)
from vers_orchestrator.services.vms import Vms
from vers_orchestrator.services.vms.context import canonical_or_none
from vers_orchestrator.settings import Settings
from vers_orchestrator.store import domains as domain_store
from vers_orchestrator.store import vms as vm_store
from vers_orchestrator.store.database import Database
from vers_orchestrator.store.vms import State, Vm

WEB_PORT = 80
# A running VM's route (which VM, which port) is reused this long without asking the
# database again: half the edge's CPU per request (bench/README.md). A change this server makes (a
# pause, a delete, a label, a domain deleted) drops it at once; one made through another
# replica reaches the edge within this time.
ROUTE_CACHE_SECONDS = 1.0
MAX_CACHED_ROUTES = 10_000
PORT_LABEL = "vers.edge.port"
ACCESS_LABEL = "vers.edge.access"
WAKE_LABEL = "vers.edge.wake"
_VM_NAME = re.compile(r"^(?:(?P<port>[0-9]{1,5})-)?(?P<vm_id>[0-9a-f-]{36})$")


@dataclass(frozen=True, slots=True)
class EdgeTarget:
    """A TCP address on this machine that reaches `guest_port` of VM `vm_id`."""

    vm_id: str
    guest_port: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class _Route:
    vm_id: str
    port: int


@dataclass(frozen=True, slots=True)
class NamedPort:
    vm_id: str
    # None: the VM's web port (80, or its label's).
    port: int | None


def host_name(host_header: str) -> str:
    """The name in a Host header: lowercase, without its port or a final dot."""
    name = host_header.strip().lower()
    if name.startswith("["):
        return name.partition("]")[0] + "]"
    if name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".")


def vm_name(name: str, base_domain: str) -> NamedPort | None:
    """`<vm_id>.vm.<base>` or `<port>-<vm_id>.vm.<base>` read, else None (a custom domain
    or no name of ours)."""
    suffix = f".vm.{base_domain}"
    if not name.endswith(suffix):
        return None
    match = _VM_NAME.match(name[: -len(suffix)])
    if match is None:
        return None
    vm_id = canonical_or_none(match["vm_id"])
    if vm_id is None:
        return None
    port = match["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        return None
    return NamedPort(vm_id, None if port is None else int(port))


class EdgeRoutes:
    def __init__(
        self, db: Database, driver: VmDriver, vms: Vms, base_domain: str, node: str
    ) -> None:
        """`base_domain`: the edge's VM names end in `.vm.<base_domain>`; `node`: this
        server's name for its VMs (`Settings.vm_node`), the only ones its driver reaches."""
        self._node = node
        self._routes: dict[str, tuple[float, _Route]] = {}
        vms.on_change(self.forget)
        self._db = db
        self._driver = driver
        self._vms = vms
        self._base_domain = base_domain.lower().strip(".")

    async def resolve(self, host_header: str) -> EdgeTarget:
        """Raises EdgeHostUnknown (404), VmAsleep (503), EdgeVmNotRunning (502, also for a
        VM of another server of the deployment: that server's edge reaches it)."""
        name = host_name(host_header)
        now = time.monotonic()
        cached = self._routes.get(name)
        if cached is not None and cached[0] > now:
            route = cached[1]
        else:
            route = await self._route(name)
            if len(self._routes) >= MAX_CACHED_ROUTES:
                self._routes.clear()
            self._routes[name] = (now + ROUTE_CACHE_SECONDS, route)
        # The address is the driver's every time: a forward it dropped may have given its
        # host port to another VM's.
        try:
            host, local_port = await self._driver.guest_port(route.vm_id, route.port)
        except (driver_api.VmNotFound, driver_api.VmNotRunning):
            self.forget(route.vm_id)
            raise EdgeVmNotRunning() from None
        return EdgeTarget(route.vm_id, route.port, host, local_port)

    def forget(self, vm_id: str) -> None:
        """Drop the cached routes to a VM (its state, labels or domains changed)."""
        for name in [n for n, (_, route) in self._routes.items() if route.vm_id == vm_id]:
            del self._routes[name]

    async def _route(self, name: str) -> _Route:
        """The VM and guest port a name leads to, the VM running (woken if it asks)."""
        named = vm_name(name, self._base_domain)
        if named is None:
            found = await self._db.read(lambda tx: domain_store.vm_of_domain(tx, name))
            if found is None:
                raise EdgeHostUnknown()
            named = NamedPort(found, None)
        vm_id = named.vm_id
        vm = await self._db.read(lambda tx: vm_store.get(tx, vm_id))
        if vm is None or vm.deleted_at is not None or vm.labels.get(ACCESS_LABEL) == "private":
            raise EdgeHostUnknown()
        if vm.node != self._node:
            raise EdgeVmNotRunning("the VM runs on another server of this deployment")
        await self._wake_if_asked(vm)
        return _Route(vm.vm_id, named.port if named.port is not None else web_port(vm))

    async def _wake_if_asked(self, vm: Vm) -> None:
        if vm.state is State.RUNNING:
            return
        if vm.state is State.CREATING:
            raise VmAsleep("booting")
        if vm.state is not State.PAUSED:
            raise EdgeVmNotRunning()
        if vm.labels.get(WAKE_LABEL) != "true":
            raise VmAsleep("paused")
        try:
            await self._vms.lifecycle.wake(vm)
        except VmNotRunning:
            raise EdgeVmNotRunning() from None


def edge_url(settings: Settings, vm_id: str) -> str | None:
    """Where a browser reaches the VM's web port through this server's edge; None when
    the edge is off."""
    if not settings.edge_port:
        return None
    scheme = "https" if settings.edge_tls_cert else "http"
    port = (
        "" if settings.edge_port == {"http": 80, "https": 443}[scheme] else f":{settings.edge_port}"
    )
    return f"{scheme}://{vm_id}.vm.{settings.edge_base_domain}{port}"


def web_port(vm: Vm) -> int:
    """The port `<vm_id>.vm.` and custom domains reach: the label's if it is a port."""
    label = vm.labels.get(PORT_LABEL, "")
    if label.isdigit() and 1 <= int(label) <= 65535:
        return int(label)
    return WEB_PORT
