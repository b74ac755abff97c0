"""LoadBalancer Services made through the API get an address from the lab's pool:
the job of a cloud's service controller (cloud-provider-kind, MetalLB, k3s's
servicelb on clusters without a cloud).

emu's own LoadBalancer Services (annotation emu.io/managed-by: emu) get theirs
from emu's planner (emu.control.state.plan_services) and the mirror writes their
status; this controller never touches them. Every other Service of type
LoadBalancer without spec.loadBalancerClass (or with emu's, LOAD_BALANCER_CLASS)
gets one address of the pool (networking.loadBalancerPool, FIRST-LAST on the
cluster network) in status.loadBalancer.ingress[0] (ipMode VIP); the node
agents, which watch Services as kube-proxy does, program and announce it. A
Service with another class is left alone, as upstream's service controller
leaves it (wantsLoadBalancer).

Allocation: spec.loadBalancerIP when given, in the pool and free; else the
address it holds (while still valid); else the highest free address of the
pool. emu's planner takes the lowest first, so the two meet only when the pool
is nearly full. Held addresses are every Service's status.loadBalancer.ingress
IPs and, for emu's own, spec.loadBalancerIP (what the planner gave it); the
planner in turn leaves the addresses of these Services alone
(emu.control.apiserver.foreign_service_addresses). An emu Service that takes an
address one of these holds anyway (planned while the API server did not
answer, or in a race) wins: the other one moves to a free address, or, when it
asked for that one (spec.loadBalancerIP), loses it and waits.

As upstream's controller: the finalizer service.kubernetes.io/load-balancer-cleanup
holds a Service being deleted until its address is released; a Service that
stops wanting a load balancer (type changed) has its status cleared. Events as
upstream records them: EnsuringLoadBalancer / EnsuredLoadBalancer,
DeletingLoadBalancer / DeletedLoadBalancer, and a Warning SyncLoadBalancerFailed
saying what is wrong (spec.loadBalancerIP outside the pool or held by another
Service, the pool exhausted); then nothing is written and the Service stays
pending, until a change to it or a released address lets it through."""

from __future__ import annotations

import ipaddress

from emu.apiserver.controllers.framework import Controller, Watch, being_deleted, obj_key, split_key
from emu.apiserver.mirror import emu_owned

CONTROLLER_NAME = "service-controller"  # upstream's event source component
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
LOAD_BALANCER_CLASS = "emu.io/load-balancer"  # a Service may name emu's pool explicitly
IP_MODE = "VIP"
_HELD = "lb-address"
_PENDING = "lb-pending"


class AllocationError(Exception):
    """No address can be given; the message says why and what to do."""


class Pool:
    """The lab's LoadBalancer addresses: FIRST-LAST, both included (IPv4)."""

    def __init__(self, text: str):
        first, dash, last = (text or "").partition("-")
        try:
            if not dash:
                raise ValueError
            self.first = ipaddress.IPv4Address(first.strip())
            self.last = ipaddress.IPv4Address(last.strip())
        except ValueError:
            raise ValueError(f"load balancer pool {text!r} is not a range FIRST-LAST of IPv4 addresses "
                             "(e.g. 172.28.0.224-172.28.0.254)") from None
        if self.last < self.first:
            raise ValueError(f"load balancer pool {text!r}: {self.last} comes before {self.first}")

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __len__(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, address: str) -> bool:
        try:
            return self.first <= ipaddress.IPv4Address(address) <= self.last
        except ValueError:
            return False

    def highest_first(self):
        """Every address of the pool, the highest first."""
        for value in range(int(self.last), int(self.first) - 1, -1):
            yield str(ipaddress.IPv4Address(value))


def ingress_ips(service: dict) -> list[str]:
    """The IPs of status.loadBalancer.ingress, in order."""
    ingress = (((service.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
    return [entry["ip"] for entry in ingress if isinstance(entry, dict) and entry.get("ip")]


def load_balancer_addresses(service: dict) -> set[str]:
    """The LoadBalancer addresses a Service holds: its status.loadBalancer.ingress IPs,
    and for one of emu's own of type LoadBalancer its planned spec.loadBalancerIP."""
    held = set(ingress_ips(service))
    spec = service.get("spec") or {}
    if emu_owned(service) and spec.get("type") == "LoadBalancer" and spec.get("loadBalancerIP"):
        held.add(spec["loadBalancerIP"])
    return held


def ours(service: dict) -> bool:
    """Whether the Service's load balancer is this controller's to give (type LoadBalancer, no
    loadBalancerClass or emu's, not one of emu's own Services)."""
    spec = service.get("spec") or {}
    return (spec.get("type") == "LoadBalancer" and spec.get("loadBalancerClass") in (None, LOAD_BALANCER_CLASS)
            and not emu_owned(service))


def _has_finalizer(service: dict) -> bool:
    return FINALIZER in ((service.get("metadata") or {}).get("finalizers") or [])


def wants_address(service: dict) -> bool:
    return ours(service) and not being_deleted(service)


def choose_address(pool: Pool, service: dict, holders) -> str:
    """The address `service` should have: spec.loadBalancerIP when asked for (in the pool, free),
    else the one it holds while valid, else the highest free one. `holders(address)` names the
    other Services holding it ("namespace/name", emu's own included). AllocationError otherwise."""
    key = obj_key(service)
    requested = ((service.get("spec") or {}).get("loadBalancerIP") or "").strip()
    if requested:
        try:
            ipaddress.IPv4Address(requested)
        except ValueError:
            raise AllocationError(f"spec.loadBalancerIP {requested!r} is not an IPv4 address; ask for one in the "
                                  f"LoadBalancer pool {pool}, or leave loadBalancerIP out for any free one") from None
        if requested not in pool:
            raise AllocationError(f"spec.loadBalancerIP {requested} is not in the LoadBalancer pool {pool} "
                                  "(networking.loadBalancerPool of the lab); ask for an address in the pool, "
                                  "or leave loadBalancerIP out for any free one")
        others = [k for k in holders(requested) if k != key]
        if others:
            raise AllocationError(f"spec.loadBalancerIP {requested} is held by service {others[0]}; ask for "
                                  f"another address of the pool {pool}, or leave loadBalancerIP out")
        return requested
    for held in ingress_ips(service)[:1]:
        if held in pool and not [k for k in holders(held) if k != key]:
            return held
    for address in pool.highest_first():
        if not [k for k in holders(address) if k != key]:
            return address
    raise AllocationError(f"the LoadBalancer pool {pool} has no free address (all {len(pool)} are held); "
                          "delete a LoadBalancer Service, or widen networking.loadBalancerPool in the topology")


class ServiceLoadBalancerController(Controller):
    """Gives LoadBalancer Services made through the API an address of the lab's pool (module docstring)."""

    name = CONTROLLER_NAME

    def __init__(self, pool: str):
        super().__init__()
        self.pool = Pool(pool)

    def watches(self) -> list[Watch]:
        return [Watch("services", events=self._changed)]

    def setup(self) -> None:
        services = self.informer("services")
        services.add_index(_HELD, load_balancer_addresses)
        services.add_index(_PENDING, lambda s: ["yes"] if wants_address(s) and not ingress_ips(s) else [])

    def _holders(self, address: str) -> list[str]:
        return [obj_key(s) for s in self.informer("services").by_index(_HELD, address)]

    def _changed(self, etype: str, old: dict | None, new: dict | None) -> list[str]:
        keys: list[str] = []
        obj = new if new is not None else old
        if any(s is not None and not emu_owned(s) and (ours(s) or _has_finalizer(s) or ingress_ips(s))
               for s in (old, new)):
            keys.append(obj_key(obj))
        before = load_balancer_addresses(old) if old is not None else set()
        after = load_balancer_addresses(new) if new is not None else set()
        if before - after:  # an address released: the Services waiting for one try again
            keys += [obj_key(s) for s in self.informer("services").by_index(_PENDING, "yes")]
        if new is not None and emu_owned(new):  # emu's planner took an address: whoever else holds it moves
            for address in sorted(after - before):
                keys += [obj_key(s) for s in self.informer("services").by_index(_HELD, address) if not emu_owned(s)]
        return keys

    def reconcile(self, key: str) -> float | None:
        service = self.informer("services").get(key)
        if service is None or emu_owned(service):
            return None
        if not wants_address(service):
            self._release(service)
            return None
        try:
            address = choose_address(self.pool, service, self._holders)
        except AllocationError as e:
            self.client.event(service, "Warning", "SyncLoadBalancerFailed",
                              f"Error syncing load balancer: failed to ensure load balancer: {e}", CONTROLLER_NAME)
            # an address it may keep stays (upstream keeps the load balancer it has); one it may not (emu's
            # Service took it, the pool changed) is dropped: pending, rather than two Services on one address
            if _has_finalizer(service) and any(not self._valid(service, ip) for ip in ingress_ips(service)):
                self._clear_status(service)
            return None
        balancer = {"ingress": [{"ip": address, "ipMode": IP_MODE}]}
        if _has_finalizer(service) and ((service.get("status") or {}).get("loadBalancer") or {}) == balancer:
            return None
        self.client.event(service, "Normal", "EnsuringLoadBalancer", "Ensuring load balancer", CONTROLLER_NAME)
        uid = service["metadata"].get("uid")
        ns, name = split_key(key)

        def add_finalizer(current: dict) -> dict | None:
            meta = current["metadata"]
            if meta.get("uid") != uid or FINALIZER in (meta.get("finalizers") or []):
                return None
            meta["finalizers"] = list(meta.get("finalizers") or []) + [FINALIZER]
            return current

        def set_status(current: dict) -> dict | None:
            if current["metadata"].get("uid") != uid:
                return None
            status = current.setdefault("status", {})
            if status.get("loadBalancer") == balancer:
                return None
            status["loadBalancer"] = balancer
            return current

        # the finalizer first, as upstream: an address is never held by a Service that could go without a release
        if self.client.mutate("services", ns, name, add_finalizer) is None:
            return None
        self.client.mutate("services", ns, name, set_status, status=True)
        if ingress_ips(service)[:1] != [address]:
            self.log(f"{key}: LoadBalancer address {address}"
                     + (f" (was {ingress_ips(service)[0]})" if ingress_ips(service) else ""))
        self.client.event(service, "Normal", "EnsuredLoadBalancer", "Ensured load balancer", CONTROLLER_NAME)
        return None

    def _valid(self, service: dict, address: str) -> bool:
        return address in self.pool and not [k for k in self._holders(address) if k != obj_key(service)]

    def _clear_status(self, service: dict) -> None:
        meta = service["metadata"]
        uid = meta.get("uid")

        def clear(current: dict) -> dict | None:
            if current["metadata"].get("uid") != uid or not ingress_ips(current):
                return None
            current.setdefault("status", {})["loadBalancer"] = {}
            return current

        self.client.mutate("services", meta.get("namespace", ""), meta["name"], clear, status=True)

    def _release(self, service: dict) -> None:
        """Upstream's delete path: for a Service being deleted or no longer wanting this controller's load
        balancer, clear the status it wrote and drop the finalizer (the store then deletes one being deleted).
        A Service of another class without the finalizer is someone else's: left as it is."""
        spec = service.get("spec") or {}
        finalizer = _has_finalizer(service)
        stale = (spec.get("type") != "LoadBalancer" and spec.get("loadBalancerClass") in (None, LOAD_BALANCER_CLASS)
                 and bool(ingress_ips(service)))
        if not finalizer and not stale:
            return
        meta = service["metadata"]
        ns, name, uid = meta.get("namespace", ""), meta["name"], meta.get("uid")
        if finalizer:
            self.client.event(service, "Normal", "DeletingLoadBalancer", "Deleting load balancer", CONTROLLER_NAME)

        def drop_finalizer(current: dict) -> dict | None:
            meta = current["metadata"]
            if meta.get("uid") != uid or FINALIZER not in (meta.get("finalizers") or []):
                return None
            meta["finalizers"] = [f for f in meta["finalizers"] if f != FINALIZER]
            return current

        # the address first: the nodes stop announcing it before the object can go
        self._clear_status(service)
        if finalizer:
            self.client.mutate("services", ns, name, drop_finalizer)
            self.client.event(service, "Normal", "DeletedLoadBalancer", "Deleted load balancer", CONTROLLER_NAME)
        self.log(f"{obj_key(service)}: LoadBalancer address {', '.join(ingress_ips(service)) or '(none)'} released")
