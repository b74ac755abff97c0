"""The service load-balancer controller (emu.apiserver.controllers.servicelb): LoadBalancer
Services made through the API get an address of the lab's pool around emu's own, as a
cloud's service controller gives one; bad requests are reported and write nothing."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from ctl_helpers import FakeClock, new_store
from emu.apiserver.controllers import build_manager, start_named
from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.services_registry import register
from emu.apiserver.controllers.servicelb import FINALIZER, Pool, choose_address, load_balancer_addresses

POOL = "172.28.0.250-172.28.0.254"  # five addresses; the controller takes the highest free first


def lb_manager(store, pool: str = POOL):
    logs: list[str] = []
    m = build_manager(store, clock=FakeClock(), enabled=(), log=logs.append)
    register(m, {"load_balancer_pool": pool, "enabled": ("servicelb",)})
    m.logs = logs
    return m


def settle(m) -> None:
    m.run_until_idle()
    failures = [line for line in m.logs if " failed: " in line]
    assert not failures, "\n".join(failures)


def service(name: str, namespace: str = "default", type_: str = "LoadBalancer", emu: bool = False,
            **spec) -> dict:
    meta: dict = {"name": name, "namespace": namespace}
    if emu:
        meta["annotations"] = {"emu.io/managed-by": "emu"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": type_, "selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}], **spec}}


def create(store, obj: dict, status: dict | None = None) -> dict:
    c = Client(store)
    out = c.create("services", obj)
    if status is not None:
        out["status"] = status
        out = c.update_status("services", out)
    return out


def emu_service(store, name: str, address: str) -> dict:
    """One of emu's own LoadBalancer Services as the mirror writes it: planned address in spec and status."""
    return create(store, service(name, emu=True, loadBalancerIP=address),
                  {"loadBalancer": {"ingress": [{"ip": address, "ipMode": "VIP"}]}})


def get(store, name: str, namespace: str = "default") -> dict | None:
    return store.get("services", namespace, name)


def ingress(store, name: str) -> list[dict]:
    return ((get(store, name).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


def events(store, name: str) -> list[tuple[str, str, str]]:
    found = [e for e in store.list_objects("events") if e["involvedObject"]["name"] == name]
    found.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [(e["type"], e["reason"], e["message"]) for e in found]


def test_a_service_made_through_the_api_gets_the_highest_free_address_of_the_pool(tmp_path):
    store = new_store(tmp_path)
    m = lb_manager(store)
    create(store, service("web"))
    settle(m)
    assert ingress(store, "web") == [{"ip": "172.28.0.254", "ipMode": "VIP"}]
    assert get(store, "web")["metadata"]["finalizers"] == [FINALIZER]
    assert events(store, "web") == [("Normal", "EnsuringLoadBalancer", "Ensuring load balancer"),
                                    ("Normal", "EnsuredLoadBalancer", "Ensured load balancer")]
    assert [e["source"]["component"] for e in store.list_objects("events")] == ["service-controller"] * 2
    rv = store.revision
    settle(m)  # nothing left to do: no write, no event
    assert store.revision == rv


def test_emus_own_services_are_avoided_and_never_touched(tmp_path):
    store = new_store(tmp_path)
    mine = emu_service(store, "emu-lb", "172.28.0.254")
    m = lb_manager(store)
    create(store, service("web"))
    settle(m)
    assert ingress(store, "web")[0]["ip"] == "172.28.0.253"
    assert get(store, "emu-lb") == mine  # not even a finalizer: the mirror owns it
    assert events(store, "emu-lb") == []
    create(store, service("plain", type_="ClusterIP"))
    settle(m)
    assert ingress(store, "plain") == [] and not get(store, "plain")["metadata"].get("finalizers")


def test_load_balancer_ip_is_honoured_when_in_the_pool_and_free(tmp_path):
    store = new_store(tmp_path)
    m = lb_manager(store)
    create(store, service("asked", loadBalancerIP="172.28.0.251"))
    settle(m)
    assert ingress(store, "asked") == [{"ip": "172.28.0.251", "ipMode": "VIP"}]


@pytest.mark.parametrize("asked, why", [
    ("203.0.113.7", "spec.loadBalancerIP 203.0.113.7 is not in the LoadBalancer pool 172.28.0.250-172.28.0.254 "
                    "(networking.loadBalancerPool of the lab); ask for an address in the pool, or leave "
                    "loadBalancerIP out for any free one"),
    ("172.28.0.252", "spec.loadBalancerIP 172.28.0.252 is held by service default/emu-lb; ask for another "
                     "address of the pool 172.28.0.250-172.28.0.254, or leave loadBalancerIP out"),
    ("not-an-ip", "spec.loadBalancerIP 'not-an-ip' is not an IPv4 address; ask for one in the LoadBalancer pool "
                  "172.28.0.250-172.28.0.254, or leave loadBalancerIP out for any free one"),
])
def test_a_load_balancer_ip_that_cannot_be_given_is_reported_and_nothing_is_written(tmp_path, asked, why):
    store = new_store(tmp_path)
    emu_service(store, "emu-lb", "172.28.0.252")
    m = lb_manager(store)
    made = create(store, service("asked", loadBalancerIP=asked))
    settle(m)
    assert get(store, "asked") == made  # pending: no address, no finalizer
    assert events(store, "asked") == [
        ("Warning", "SyncLoadBalancerFailed", f"Error syncing load balancer: failed to ensure load balancer: {why}")]
    # asked again for a good address: it gets it
    Client(store).mutate("services", "default", "asked",
                         lambda s: {**s, "spec": {**s["spec"], "loadBalancerIP": "172.28.0.250"}})
    settle(m)
    assert ingress(store, "asked")[0]["ip"] == "172.28.0.250"


def test_an_exhausted_pool_is_reported_and_a_released_address_goes_to_the_waiting_service(tmp_path):
    store = new_store(tmp_path)
    m = lb_manager(store, "172.28.0.253-172.28.0.254")
    emu_service(store, "emu-lb", "172.28.0.253")
    create(store, service("first"))
    settle(m)
    waiting = create(store, service("second"))
    settle(m)
    assert ingress(store, "first")[0]["ip"] == "172.28.0.254"
    assert get(store, "second") == waiting
    assert events(store, "second") == [
        ("Warning", "SyncLoadBalancerFailed", "Error syncing load balancer: failed to ensure load balancer: the "
         "LoadBalancer pool 172.28.0.253-172.28.0.254 has no free address (all 2 are held); delete a "
         "LoadBalancer Service, or widen networking.loadBalancerPool in the topology")]
    # deleted: held by the finalizer until the controller released the address, then gone
    c = Client(store)
    c.delete("services", "default", "first")
    assert get(store, "first")["metadata"].get("deletionTimestamp")
    settle(m)
    assert get(store, "first") is None
    assert events(store, "first")[-2:] == [("Normal", "DeletingLoadBalancer", "Deleting load balancer"),
                                           ("Normal", "DeletedLoadBalancer", "Deleted load balancer")]
    assert ingress(store, "second")[0]["ip"] == "172.28.0.254"


def test_a_type_change_away_from_load_balancer_releases_the_address(tmp_path):
    store = new_store(tmp_path)
    m = lb_manager(store)
    create(store, service("web"))
    settle(m)
    Client(store).mutate("services", "default", "web",
                         lambda s: {**s, "spec": {**s["spec"], "type": "ClusterIP"}})
    settle(m)
    web = get(store, "web")
    assert web["status"]["loadBalancer"] == {} and not web["metadata"].get("finalizers")
    create(store, service("next"))
    settle(m)
    assert ingress(store, "next")[0]["ip"] == "172.28.0.254"  # the address is free again


def test_another_load_balancer_class_is_left_alone_and_emus_class_is_served(tmp_path):
    store = new_store(tmp_path)
    m = lb_manager(store)
    theirs = create(store, service("theirs", loadBalancerClass="example.com/other-lb"))
    create(store, service("named", loadBalancerClass="emu.io/load-balancer"))
    settle(m)
    assert get(store, "theirs") == theirs and events(store, "theirs") == []
    assert ingress(store, "named")[0]["ip"] == "172.28.0.254"


def test_an_address_emu_takes_anyway_moves_the_other_service(tmp_path):
    """emu's planner avoids the addresses it sees; one it planned while the API server did not
    answer can still land on a held one: emu's Service keeps it, the other moves."""
    store = new_store(tmp_path)
    m = lb_manager(store)
    create(store, service("web"))
    settle(m)
    assert ingress(store, "web")[0]["ip"] == "172.28.0.254"
    emu_service(store, "emu-lb", "172.28.0.254")
    settle(m)
    assert ingress(store, "web") == [{"ip": "172.28.0.253", "ipMode": "VIP"}]
    assert ingress(store, "emu-lb")[0]["ip"] == "172.28.0.254"


def test_an_address_asked_for_and_taken_by_emu_anyway_is_given_up(tmp_path):
    store = new_store(tmp_path)
    m = lb_manager(store)
    create(store, service("pinned", loadBalancerIP="172.28.0.251"))
    settle(m)
    emu_service(store, "emu-lb", "172.28.0.251")
    settle(m)
    assert ingress(store, "pinned") == []  # pending: never two Services on one address
    assert events(store, "pinned")[-1][:2] == ("Warning", "SyncLoadBalancerFailed")
    Client(store).delete("services", "default", "emu-lb")
    settle(m)
    assert ingress(store, "pinned")[0]["ip"] == "172.28.0.251"  # released: its turn


def test_addresses_held_and_the_choice(tmp_path):
    assert load_balancer_addresses(service("x", emu=True, loadBalancerIP="172.28.0.9")) == {"172.28.0.9"}
    assert load_balancer_addresses(service("x", loadBalancerIP="172.28.0.9")) == set()  # only asked for
    pool = Pool("172.28.0.250-172.28.0.251")
    held = {"172.28.0.251": ["default/other"]}
    assert choose_address(pool, get_like("a"), lambda a: held.get(a, [])) == "172.28.0.250"
    keeps = get_like("a", status_ip="172.28.0.250")
    assert choose_address(pool, keeps, lambda a: {"172.28.0.250": ["default/a"]}.get(a, [])) == "172.28.0.250"
    for bad in ("172.28.0.9", "10.0.0.1-", "b-a", "172.28.0.9-172.28.0.1"):
        with pytest.raises(ValueError, match="load balancer pool"):
            Pool(bad)


def get_like(name: str, status_ip: str = "") -> dict:
    obj = service(name)
    if status_ip:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": status_ip}]}}
    return obj


def test_registry_wants_a_pool_and_refuses_a_bad_one(tmp_path):
    store = new_store(tmp_path)
    logs: list[str] = []
    m = build_manager(store, clock=FakeClock(), enabled=(), log=logs.append)
    assert register(m, {"enabled": ("servicelb",)}) == []
    assert any("no load_balancer_pool given" in line for line in logs)
    with pytest.raises(ValueError, match="is not a range FIRST-LAST"):
        start_named(store, ["servicelb"], {"load_balancer_pool": "172.28.0.250"})


def test_the_labs_api_server_runs_servicelb_with_the_labs_pool(tmp_path, capsys):
    from emu.api.topology.load import load_text
    from emu.apiserver.__main__ import main
    from emu.control.state import plan_cluster
    from emu.node.plan.cni import API_CONTROLLERS, start_apiserver_line

    state = plan_cluster(load_text("name: lab\nnodes: [{name: cp, role: control-plane}]\n"), "emu-lab",
                         "172.28.5.0/24")
    assert "servicelb" in API_CONTROLLERS
    assert "--load-balancer-pool 172.28.5.223-172.28.5.254" in start_apiserver_line(state)
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--insecure", "--load-balancer-pool", "172.28.5.223",
              "--controllers", "servicelb"])
    said = capsys.readouterr().err
    assert "--load-balancer-pool: load balancer pool '172.28.5.223' is not a range FIRST-LAST" in said


# ---------------------------------------------------------------- the real kubectl

def eventually(fn, what: str, bound: float = 20.0):
    """fn() until it returns a true value; the bound only keeps a broken run from hanging."""
    end = time.monotonic() + bound
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached (last: {got!r})")
        time.sleep(0.05)


FAR = """
apiVersion: v1
kind: Service
metadata: {name: far}
spec:
  type: LoadBalancer
  loadBalancerIP: 203.0.113.7
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_kubectl_expose_type_load_balancer_shows_the_address_and_delete_releases_it(apiserver):
    """`kubectl expose --type=LoadBalancer` against the API server with the controller running:
    EXTERNAL-IP from the pool, `kubectl describe` shows the Events, `kubectl delete` completes."""
    path = shutil.which("kubectl")
    if not path:
        pytest.skip("kubectl is not installed on this machine")
    from conftest import Kubectl

    kubectl = Kubectl(path, apiserver)
    m = start_named(apiserver.store, ["servicelb"], {"load_balancer_pool": POOL}, log=lambda s: None)
    try:
        kubectl("create", "deployment", "web", "--image=registry.k8s.io/e2e-test-images/agnhost:2.52")
        kubectl("expose", "deployment", "web", "--type=LoadBalancer", "--port=80", "--target-port=8080")
        row = eventually(lambda: "172.28.0.254" in kubectl("get", "svc", "web") and kubectl("get", "svc", "web"),
                         "web's EXTERNAL-IP")
        header, line = row.splitlines()
        assert header.split()[:4] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP"]
        assert line.split()[1] == "LoadBalancer" and line.split()[3] == "172.28.0.254"
        described = kubectl("describe", "svc", "web")
        assert "LoadBalancer Ingress:" in described and "172.28.0.254" in described
        assert "EnsuredLoadBalancer" in eventually(lambda: kubectl("describe", "svc", "web"), "events")
        kubectl("apply", "-f", "-", input=FAR)
        failed = eventually(lambda: [e for e in json.loads(kubectl("get", "events", "-o", "json"))["items"]
                                     if e["involvedObject"]["name"] == "far"], "far's Warning")
        assert failed[0]["reason"] == "SyncLoadBalancerFailed"
        assert "not in the LoadBalancer pool" in failed[0]["message"]
        assert kubectl("get", "svc", "far").splitlines()[1].split()[3] == "<pending>"
        kubectl("delete", "svc", "web", "--timeout=20s")  # waits for the finalizer the controller removes
        assert "NotFound" in kubectl.run("get", "svc", "web", check=False).stderr
        kubectl("delete", "svc", "far", "--timeout=20s")
    finally:
        m.stop()
