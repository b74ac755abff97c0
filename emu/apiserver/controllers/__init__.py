"""The control loops that run inside the API server's process (kube-scheduler's and
kube-controller-manager's jobs): see framework.py for the contract.

`start_controllers(store)` is what emu/apiserver/__main__.py calls after making the Store."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable

from emu.apiserver.controllers.framework import ControllerManager

# name -> "module:Class" (imported when enabled, so a controller's module is loaded only when it runs)
CONTROLLERS: dict[str, str] = {
    "scheduler": "emu.apiserver.controllers.scheduler:Scheduler",
    "replicaset": "emu.apiserver.controllers.replicaset:ReplicaSetController",
    "deployment": "emu.apiserver.controllers.deployment:DeploymentController",
    "statefulset": "emu.apiserver.controllers.statefulset:StatefulSetController",
    "daemonset": "emu.apiserver.controllers.daemonset:DaemonSetController",
    "garbagecollector": "emu.apiserver.controllers.gc:GarbageCollector",
    "podgc": "emu.apiserver.controllers.podgc:PodGCController",
}

DEFAULT_ENABLED = tuple(CONTROLLERS)


def build_manager(store, clock: Callable[[], float] = time.monotonic, enabled: Iterable[str] = DEFAULT_ENABLED,
                  log=None, wall: Callable[[], float] = time.time) -> ControllerManager:
    """A ControllerManager with the `enabled` controllers added, not started (tests drive it with run_until_idle)."""
    manager = ControllerManager(store, clock=clock, wall=wall, log=log)
    for name in enabled:
        if name not in CONTROLLERS:
            raise ValueError(f"unknown controller {name!r}; known: {', '.join(sorted(CONTROLLERS))}")
        module, _, cls = CONTROLLERS[name].partition(":")
        manager.add(getattr(importlib.import_module(module), cls)())
    return manager


def start_controllers(store, clock: Callable[[], float] = time.monotonic, enabled: Iterable[str] = DEFAULT_ENABLED,
                      log=None) -> ControllerManager:
    """Build the manager with the `enabled` controllers and start their threads; `.stop()` ends them."""
    manager = build_manager(store, clock=clock, enabled=enabled, log=log)
    manager.start()
    return manager


def start_named(store, names: Iterable[str], services=None, log=None) -> ControllerManager:
    """Start the controllers named (workload ones of CONTROLLERS and the service-side
    ones of services_registry.NAMES) in one manager; `services`: a ServicesOptions
    or a dict of its fields (its `enabled` is set from `names`)."""
    from dataclasses import replace

    from emu.apiserver.controllers import services_registry

    names = [name for name in names if name]
    unknown = sorted(set(names) - set(CONTROLLERS) - set(services_registry.NAMES))
    if unknown:
        raise ValueError(f"unknown controllers {unknown}; known: {sorted(set(CONTROLLERS) | set(services_registry.NAMES))}")
    manager = build_manager(store, enabled=[n for n in names if n in CONTROLLERS], log=log)
    options = services_registry._options(services)
    options = replace(options, enabled=tuple(n for n in names if n in services_registry.NAMES))
    services_registry.register(manager, options)
    manager.start()
    return manager
