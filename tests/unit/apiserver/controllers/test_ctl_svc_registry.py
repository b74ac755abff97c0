"""services_registry.register: every service-side controller on one manager, settling together."""

from __future__ import annotations

import pytest

from ctl_helpers import FakeClock, add_nodes, namespace, new_store, node
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.services_registry import register
from test_ctl_svc_endpointslice import create_pod

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_register_all_and_settle(tmp_path):
    store = new_store(tmp_path)
    clock = FakeClock()
    logs = []
    m = build_manager(store, clock=clock, wall=clock, enabled=(), log=logs.append)
    added = register(m, {"api_addresses": ["172.18.0.2"], "ca_pem": CA})
    assert [c.name for c in added] == ["kubernetes-service-controller", "endpointslice-controller",
                                       "endpointslice-mirroring-controller", "endpoint-controller", "namespace-controller", "node-lifecycle-controller",
                                       "serviceaccount-controller", "root-ca-cert-publisher"]
    namespace(store, "default")
    add_nodes(store, node("n1"))
    c = Client(store)
    c.create("services", {"metadata": {"name": "web", "namespace": "default"},
                          "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20", "ipFamilies": ["IPv4"],
                                   "ports": [{"port": 80}]}})
    create_pod(c, "a", "10.244.1.2", ready=True)
    m.run_until_idle()
    assert store.get("services", "default", "kubernetes")["spec"]["clusterIP"] == "10.96.0.1"
    assert store.get("endpoints", "default", "web")["subsets"][0]["addresses"][0]["ip"] == "10.244.1.2"
    assert store.get("serviceaccounts", "default", "default") is not None
    assert store.get("configmaps", "default", "kube-root-ca.crt") is not None
    rv = store.revision
    m.run_until_idle()
    assert store.revision == rv


def test_register_without_addresses_or_ca_says_so(tmp_path):
    store = new_store(tmp_path)
    logs = []
    m = build_manager(store, clock=FakeClock(), enabled=(), log=logs.append)
    added = register(m, {"enabled": ("kubernetes-service", "rootca", "endpoints")})
    assert [c.name for c in added] == ["endpoint-controller"]
    assert any("api_addresses" in line for line in logs) and any("ca_pem" in line for line in logs)
    with pytest.raises(ValueError, match="unknown service controller options"):
        register(m, {"api_adresses": []})
