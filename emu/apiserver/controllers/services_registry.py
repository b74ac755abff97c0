"""The service-side control loops (EndpointSlices and their mirroring, Endpoints, default/kubernetes,
namespaces, node lifecycle, default ServiceAccounts, kube-root-ca.crt, LoadBalancer addresses) added to
a ControllerManager.

`register(manager, options)` is what start_controllers calls next to the workload controllers;
options is a `ServicesOptions` or a dict of its fields."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from emu.apiserver.controllers.endpoints import EndpointsController, KubernetesServiceReconciler
from emu.apiserver.controllers.endpointslice import MAX_ENDPOINTS_PER_SLICE, EndpointSliceController
from emu.apiserver.controllers.endpointslicemirroring import EndpointSliceMirroringController
from emu.apiserver.controllers.framework import Controller, ControllerManager
from emu.apiserver.controllers.namespace import NamespaceController
from emu.apiserver.controllers.nodelifecycle import NodeLifecycleController
from emu.apiserver.controllers.rootca import RootCAPublisher
from emu.apiserver.controllers.serviceaccount import ServiceAccountController
from emu.apiserver.controllers.servicelb import ServiceLoadBalancerController

NAMES = ("kubernetes-service", "endpointslice", "endpointslicemirroring", "endpoints", "namespace", "nodelifecycle",
         "serviceaccount", "rootca", "servicelb")


@dataclass
class ServicesOptions:
    """What the service-side controllers need from the API server's command line."""

    api_addresses: list[str] = field(default_factory=list)  # the API server's address(es) for default/kubernetes
    api_port: int = 6443
    service_cidr: str = "10.96.0.0/12"  # its first address is the kubernetes Service's ClusterIP
    ca_pem: str = ""  # the cluster CA certificate (PEM) published as kube-root-ca.crt
    max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE
    node_monitor_grace_period: float = 40.0
    node_startup_grace_period: float = 60.0
    node_monitor_period: float = 5.0
    # the lab's LoadBalancer addresses, FIRST-LAST (networking.loadBalancerPool), for the Services
    # made through the API; "" leaves them pending
    load_balancer_pool: str = ""
    enabled: tuple[str, ...] = NAMES


def _options(options) -> ServicesOptions:
    if options is None:
        return ServicesOptions()
    if isinstance(options, ServicesOptions):
        return options
    known = {f.name for f in fields(ServicesOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown service controller options {unknown}; known: {sorted(known)}")
    return ServicesOptions(**options)


def controllers(options=None) -> list[Controller]:
    """The enabled service-side controllers, built from `options` (default/kubernetes needs api_addresses,
    kube-root-ca.crt needs ca_pem, LoadBalancer addresses a load_balancer_pool: without them those are
    left out). ValueError for a load_balancer_pool that is not FIRST-LAST."""
    o = _options(options)
    unknown = sorted(set(o.enabled) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown service controllers {unknown}; known: {list(NAMES)}")
    out: list[Controller] = []
    on = set(o.enabled)
    if "kubernetes-service" in on and o.api_addresses:
        out.append(KubernetesServiceReconciler(list(o.api_addresses), o.api_port, o.service_cidr))
    if "endpointslice" in on:
        out.append(EndpointSliceController(o.max_endpoints_per_slice))
    if "endpointslicemirroring" in on:
        out.append(EndpointSliceMirroringController())
    if "endpoints" in on:
        out.append(EndpointsController())
    if "namespace" in on:
        out.append(NamespaceController())
    if "nodelifecycle" in on:
        out.append(NodeLifecycleController(grace_period=o.node_monitor_grace_period,
                                           startup_grace_period=o.node_startup_grace_period,
                                           monitor_period=o.node_monitor_period))
    if "serviceaccount" in on:
        out.append(ServiceAccountController())
    if "rootca" in on and o.ca_pem:
        out.append(RootCAPublisher(o.ca_pem))
    if "servicelb" in on and o.load_balancer_pool:
        out.append(ServiceLoadBalancerController(o.load_balancer_pool))
    return out


def register(manager: ControllerManager, options=None) -> list[Controller]:
    """Add the service-side controllers to `manager` (before manager.start()); returns them."""
    added = [manager.add(c) for c in controllers(options)]
    o = _options(options)
    if "kubernetes-service" in o.enabled and not o.api_addresses:
        manager.log("service controllers: no api_addresses given: default/kubernetes is not maintained")
    if "rootca" in o.enabled and not o.ca_pem:
        manager.log("service controllers: no ca_pem given: kube-root-ca.crt is not published")
    if "servicelb" in o.enabled and not o.load_balancer_pool:
        manager.log("service controllers: no load_balancer_pool given: LoadBalancer Services made through the "
                    "API stay pending")
    return added
