"""The default ServiceAccount and kube-root-ca.crt in every active Namespace, against a real Store."""

from __future__ import annotations

import pytest

from ctl_helpers import FakeClock, namespace, new_store
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.rootca import DESCRIPTION, RootCAPublisher
from emu.apiserver.controllers.serviceaccount import ServiceAccountController

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _lab(tmp_path):
    store = new_store(tmp_path)
    clock = FakeClock()
    m = build_manager(store, clock=clock, wall=clock, enabled=(), log=lambda s: None)
    m.add(ServiceAccountController())
    m.add(RootCAPublisher(CA))
    return store, m, Client(store)


def test_every_namespace_gets_default_sa_and_root_ca(tmp_path):
    store, m, c = _lab(tmp_path)
    namespace(store, "default")
    namespace(store, "team-a")
    m.run_until_idle()
    for ns in ("default", "team-a"):
        assert store.get("serviceaccounts", ns, "default")["metadata"]["name"] == "default"
        cm = store.get("configmaps", ns, "kube-root-ca.crt")
        assert cm["data"] == {"ca.crt": CA}
        assert cm["metadata"]["annotations"] == {"kubernetes.io/description": DESCRIPTION}
    # deleted or edited: put back
    c.delete("serviceaccounts", "team-a", "default")
    c.mutate("configmaps", "team-a", "kube-root-ca.crt", lambda o: (o.__setitem__("data", {"ca.crt": "x"}), o)[1])
    c.create("serviceaccounts", {"metadata": {"name": "other", "namespace": "team-a"}})
    m.run_until_idle()
    assert store.get("serviceaccounts", "team-a", "default") is not None
    assert store.get("configmaps", "team-a", "kube-root-ca.crt")["data"] == {"ca.crt": CA}
    rv = store.revision
    m.run_until_idle()
    assert store.revision == rv


def test_terminating_namespace_gets_nothing_new(tmp_path):
    store, m, c = _lab(tmp_path)
    namespace(store, "going")
    c.delete("namespaces", "", "going")
    m.run_until_idle()
    assert store.namespaces_in_use("going") == []


def test_root_ca_needs_a_certificate():
    with pytest.raises(ValueError, match="PEM"):
        RootCAPublisher("")
