"""Services: allocation, validation, endpoints, environment variables and kube-proxy's iptables rules."""

import copy

import pytest

from emu.errors import EmuError, TopologyError
from emu.node.proxy import iptables
from emu.node.services import load_balancer_owner, pod_service_env, service_endpoints, service_env
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

LAB = """\
name: lab
nodes:
  - {name: cp, role: control-plane}
  - {name: w1}
  - {name: w2}
pods:
  - name: web-a
    node: w1
    labels: {app: web}
    containers: [{name: s, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
  - name: web-b
    node: w2
    labels: {app: web}
    containers: [{name: s, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
services:
  - name: web
    type: NodePort
    selector: {app: web}
    clusterIP: 10.96.0.50
    ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
  - name: sticky
    selector: {app: web}
    clusterIP: 10.96.0.51
    sessionAffinity: ClientIP
    sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
    ports: [{port: 80, targetPort: 8080}]
  - name: local
    type: NodePort
    externalTrafficPolicy: Local
    selector: {app: web}
    clusterIP: 10.96.0.52
    ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
  - name: empty
    selector: {app: nothing}
    clusterIP: 10.96.0.53
    ports: [{port: 80, protocol: UDP}]
  - name: lb
    type: LoadBalancer
    selector: {app: web}
    clusterIP: 10.96.0.54
    ports: [{port: 80, targetPort: 8080, nodePort: 30082}]
  - name: headless
    clusterIP: None
    selector: {app: web}
    ports: [{port: 80}]
  - name: external
    type: ExternalName
    externalName: example.com
"""


def state(text=LAB, previous=None):
    return plan_cluster(load_text(text), "emu-lab", "172.28.5.0/24", previous)


def all_ready(s):
    return {pod.uid: True for pod in s.pods.values()}


def endpoints(s, ready=None):
    ready = all_ready(s) if ready is None else ready
    return {key: service_endpoints(s, svc, ready) for key, svc in s.services.items()}




def test_chain_names_are_kube_proxys():
    # Values seen on real clusters for the kubernetes and kube-dns services.
    assert iptables.service_chain("default/kubernetes:https", "tcp") == "KUBE-SVC-NPX46M4PTMTKRN6Y"
    assert iptables.service_chain("kube-system/kube-dns:dns", "udp") == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert iptables.service_chain("kube-system/kube-dns:dns-tcp", "tcp") == "KUBE-SVC-ERIFXISQEP7F7OF4"


def test_every_cluster_has_the_kubernetes_service():
    kubernetes = state().services["default/kubernetes"]
    assert kubernetes.cluster_ip == "10.96.0.1"
    assert [(p.name, p.port, p.target_port) for p in kubernetes.ports] == [("https", 443, 6443)]
    eps = endpoints(state())["default/kubernetes"]["https"]
    assert [e.address for e in eps] == ["172.28.5.2:6443"]


def test_rules_match_golden_for_worker(golden):
    s = state()
    golden("iptables_w1.rules", iptables.restore_text(iptables.render(s, "w1", endpoints(s))))


def test_rules_match_golden_for_node_without_local_endpoints(golden):
    s = state()
    golden("iptables_cp.rules", iptables.restore_text(iptables.render(s, "cp", endpoints(s))))


def test_probability_is_one_over_n_minus_i():
    text = LAB.replace("  - name: web-b\n", "  - name: web-c\n    node: w1\n    labels: {app: web}\n"
                       "    containers: [{name: s, workload: netexec, ports: [{name: http, containerPort: 8080}]}]\n"
                       "  - name: web-b\n")
    s = state(text)
    rules = iptables.render(s, "w1", endpoints(s))["nat"][iptables.service_chain("default/web:http", "tcp")]
    probabilities = [r.split("--probability ")[1].split()[0] for r in rules if "--probability" in r]
    assert probabilities == ["0.3333333333", "0.5000000000"]
    assert rules[-1].endswith(" -j " + iptables.endpoint_chain("default/web:http", "tcp", "10.244.2.2:8080"))


def test_unready_endpoint_leaves_the_rules():
    s = state()
    ready = all_ready(s) | {s.pods["default/web-b"].uid: False}
    rules = iptables.render(s, "w1", endpoints(s, ready))
    text = iptables.restore_text(rules)
    assert "10.244.2.2:8080" not in text and "10.244.1.2:8080" in text


def test_no_endpoints_rejects():
    s = state()
    filter_rules = iptables.render(s, "w1", endpoints(s))["filter"]["KUBE-SERVICES"]
    assert '-m comment --comment "default/empty has no endpoints" -m udp -p udp -d 10.96.0.53/32 --dport 80 -j REJECT' in filter_rules


def test_local_policy_drops_nodeport_on_node_without_endpoints():
    s = state()
    external = iptables.render(s, "cp", endpoints(s))["filter"]["KUBE-EXTERNAL-SERVICES"]
    assert any("default/local has no local endpoints" in r and "--dport 30081 -j DROP" in r for r in external)
    on_w1 = iptables.render(s, "w1", endpoints(s))["nat"]
    assert iptables.local_chain("default/local", "tcp") in on_w1


def test_partial_sync_rewrites_only_what_changed():
    """kube-proxy's partial sync (its TestSyncProxyRulesRepeated): both tables, their
    fixed chains in full, of the service chains only the changed ones, -X the gone."""
    s = state()
    before = iptables.render(s, "w1", endpoints(s))
    after = iptables.render(s, "w1", endpoints(s, all_ready(s) | {s.pods["default/web-b"].uid: False}))
    text = iptables.restore_text(after, before)
    declared = [line for line in text.splitlines() if line.startswith(":")]
    gone = [line for line in text.splitlines() if line.startswith("-X")]
    # web-b served web, sticky, local and lb: its four endpoint chains are deleted.
    fixed = [f":{chain} - [0:0]" for table in ("filter", "nat") for chain in iptables.BASE_CHAINS[table]]
    assert declared[:len(iptables.BASE_CHAINS["filter"])] == fixed[:len(iptables.BASE_CHAINS["filter"])]
    assert set(fixed) <= set(declared) and text.count("*filter") == text.count("*nat") == 1
    assert f":{iptables.service_chain('default/web:http', 'tcp')} - [0:0]" in declared
    assert len(gone) == 4
    unchanged = iptables.service_chain("default/kubernetes:https", "tcp")
    assert unchanged in iptables.restore_text(after) and f":{unchanged}" not in text  # web-b did not serve it
    assert len(declared) < len(iptables.restore_text(after).splitlines())
    assert iptables.restore_text(after, after) == "\n"  # nothing changed: nothing sent


def test_large_clusters_leave_comments_off_endpoint_rules():
    s = state()
    many = {key: {port: eps * 1 for port, eps in by_port.items()} for key, by_port in endpoints(s).items()}
    from emu.node.services import Endpoint

    many["default/web"]["http"] = [Endpoint(f"10.244.9.{i % 250}", 8000 + i, "w2", None) for i in range(1001)]
    nat = iptables.render(s, "w1", many)["nat"]
    sep = iptables.endpoint_chain("default/web:http", "tcp", "10.244.9.0:8000")
    assert nat[sep] == ["-s 10.244.9.0/32 -j KUBE-MARK-MASQ", "-m tcp -p tcp -j DNAT --to-destination 10.244.9.0:8000"]
    assert all("--comment" in rule for rule in nat[iptables.service_chain("default/web:http", "tcp")])


def test_headless_and_external_name_get_no_rules():
    s = state()
    text = iptables.restore_text(iptables.render(s, "w1", endpoints(s)))
    assert "default/headless" not in text and "default/external" not in text


def test_allocation_is_stable_and_in_the_dynamic_band():
    text = LAB.replace("    clusterIP: 10.96.0.50\n", "").replace("nodePort: 30080", "name: http")
    text = text.replace("ports: [{name: http, port: 80, targetPort: http, name: http}]", "ports: [{name: http, port: 80, targetPort: http}]")
    first = state(text)
    web = first.services["default/web"]
    assert web.cluster_ip.startswith("10.96.") and not web.cluster_ip.startswith("10.96.0.")
    assert 30000 <= web.ports[0].node_port <= 32767
    second = state(text, previous=first)
    assert second.services["default/web"] == web


def test_load_balancer_gets_a_pool_address_and_one_owner():
    s = state()
    lb = s.services["default/lb"]
    assert lb.load_balancer_ip == "172.28.5.223"
    eps = endpoints(s)["default/lb"]
    owners = {load_balancer_owner(s, lb, eps) for _ in range(3)}
    assert len(owners) == 1


def test_service_environment_variables():
    s = state()
    env = service_env(s.services["default/web"])
    assert env == {
        "WEB_SERVICE_HOST": "10.96.0.50",
        "WEB_SERVICE_PORT": "80",
        "WEB_SERVICE_PORT_HTTP": "80",
        "WEB_PORT": "tcp://10.96.0.50:80",
        "WEB_PORT_80_TCP": "tcp://10.96.0.50:80",
        "WEB_PORT_80_TCP_PROTO": "tcp",
        "WEB_PORT_80_TCP_PORT": "80",
        "WEB_PORT_80_TCP_ADDR": "10.96.0.50",
    }
    pod = s.pods["default/web-a"]
    pod_env = pod_service_env(s.services, pod, pod.enable_service_links)
    assert pod_env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and pod_env["STICKY_SERVICE_HOST"] == "10.96.0.51"
    assert "HEADLESS_SERVICE_HOST" not in pod_env and "EXTERNAL_SERVICE_HOST" not in pod_env


def test_a_container_gets_the_services_there_are_when_it_starts_and_the_state_keeps_none():
    """As the kubelet: the variables are made when a container starts (its start
    script), from the Services then; the state stores none (a namespace of 1,000
    Services would give each pod 7,000)."""
    from emu.node.plan import cni

    without = LAB.split("services:")[0] + "services: []\n"
    first = state(without)
    second = state(LAB, previous=first)
    pod = second.pods["default/web-a"]

    def started(s) -> str:
        plan = cni.node_plan(s, s.node(pod.node), [s.pods[pod.key]], [], new_node=False)
        sourced = plan.files[cni.service_env_file(pod)]  # ". <the set of variables>"
        return plan.files[sourced.split()[1]]

    assert "WEB_SERVICE_HOST" not in started(first) and "export KUBERNETES_SERVICE_HOST=10.96.0.1\n" in started(first)
    assert "export WEB_SERVICE_HOST=10.96.0.50\n" in started(second)
    assert "SERVICE_HOST" not in second.to_json()


def test_enable_service_links_false():
    s = state(LAB.replace("    node: w1\n", "    node: w1\n    enableServiceLinks: false\n"))
    pod = s.pods["default/web-a"]
    env = pod_service_env(s.services, pod, pod.enable_service_links)
    assert pod.enable_service_links is False
    assert "WEB_SERVICE_HOST" not in env and env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"


def problems(text):
    with pytest.raises(TopologyError) as caught:
        load_text(text, "lab.yaml")
    return "\n".join(p.render("lab.yaml") for p in caught.value.problems)


BASE = "nodes: [{name: a}]\nservices:\n  - name: s\n"


@pytest.mark.parametrize(
    "service, expected",
    [
        ("    clusterIP: 10.97.0.5\n    ports: [{port: 80}]\n", "is not a usable address of serviceSubnet"),
        ("    clusterIP: 10.96.0.1\n    ports: [{port: 80}]\n", "is taken by service 'default/kubernetes'"),
        ("    type: NodePort\n    ports: [{port: 80, nodePort: 20000}]\n", "nodePort"),
        ("    ports: [{port: 80, nodePort: 30001}]\n", "nodePort needs type NodePort or LoadBalancer"),
        ("    selector: {app: a}\n    ports: [{port: 80, targetPort: nosuch}]\n"
         "pods: [{name: p, labels: {app: a}, containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]}]\n",
         "targetPort 'nosuch' names no container port of the pods service 'default/s' selects (their port names: http)"),
        ("    type: ExternalName\n    externalName: x.com\n    selector: {a: b}\n", "has type ExternalName and a selector"),
        ("    type: ExternalName\n", "has type ExternalName but no externalName"),
        ("    ports: [{port: 80}, {port: 81}]\n", "has several ports, so each needs a name"),
        ("    ports: []\n", "needs at least one port"),
        ("    externalTrafficPolicy: Local\n    ports: [{port: 80}]\n", "externalTrafficPolicy: Local is for NodePort"),
        ("    sessionAffinityConfig: {clientIP: {timeoutSeconds: 5}}\n    ports: [{port: 80}]\n", "needs sessionAffinity: ClientIP"),
    ],
)
def test_service_validation(service, expected):
    assert expected in problems(BASE + service)


def test_node_port_taken_twice():
    text = BASE + "    type: NodePort\n    ports: [{port: 80, nodePort: 30001}]\n" \
        "  - name: t\n    type: NodePort\n    ports: [{port: 80, nodePort: 30001}]\n"
    assert "services[1].ports[0].nodePort: nodePort 30001 is taken by service 'default/s'" in problems(text)


def test_cluster_ip_taken_twice():
    text = BASE + "    clusterIP: 10.96.0.20\n    ports: [{port: 80}]\n" \
        "  - name: t\n    clusterIP: 10.96.0.20\n    ports: [{port: 80}]\n"
    assert "clusterIP 10.96.0.20 is taken by service 'default/s'" in problems(text)


def test_cached_render_equals_a_fresh_one():
    s = state()
    cache: dict = {}
    first = iptables.render(s, "w1", endpoints(s), cache=cache)
    assert first == iptables.render(s, "w1", endpoints(s))
    kept = copy.deepcopy(first)  # the agent keeps the last ruleset, to write only what changed
    changed = endpoints(s, all_ready(s) | {s.pods["default/web-b"].uid: False})
    assert iptables.render(s, "w1", changed, cache=cache) == iptables.render(s, "w1", changed)
    assert iptables.render(s, "w1", endpoints(s), cache=cache) == first == kept  # its lists, shared with the cache, untouched


def test_internal_traffic_policy_local_uses_node_local_endpoints_only():
    text = LAB + "  - name: internal\n    internalTrafficPolicy: Local\n    selector: {app: web}\n" \
        "    clusterIP: 10.96.0.55\n    ports: [{port: 80, targetPort: 8080}]\n"
    s = state(text)
    on_w1 = iptables.render(s, "w1", endpoints(s))
    svl = iptables.local_chain("default/internal", "tcp")
    jumps = [r for r in on_w1["nat"][svl] if "KUBE-SEP" in r]
    assert len(jumps) == 1 and "10.244.1.2:8080" in jumps[0]
    assert any(r.endswith(f"-j {svl}") and "10.96.0.55/32" in r for r in on_w1["nat"]["KUBE-SERVICES"])
    on_cp = iptables.render(s, "cp", endpoints(s))
    assert any("default/internal has no local endpoints" in r and r.endswith("-j DROP")
               for r in on_cp["filter"]["KUBE-SERVICES"])


def test_a_recreated_pod_does_not_inherit_readiness():
    from emu.node.records import PodState

    s = state()
    old = s.pods["default/web-a"]
    ready = all_ready(s)
    s.pods[old.key] = PodState(**{**old.__dict__, "ip": "10.244.1.99"})  # same name, new IP
    addresses = [e.address for e in endpoints(s, ready)["default/web"]["http"]]
    assert "10.244.1.99:8080" not in addresses and old.ip + ":8080" not in addresses


def test_endpoint_tracker_gives_what_a_full_count_gives_after_each_readiness_change():
    import copy
    import random

    from emu.node.services import EndpointTracker, all_endpoints

    s = state()
    uids = sorted(p.uid for p in s.pods.values())
    tracker, generator = EndpointTracker(), random.Random(7)
    ready = {uid: True for uid in uids}
    assert tracker.update(s, ready) == all_endpoints(s, ready)
    for _ in range(30):
        ready = {uid: generator.random() < 0.5 for uid in uids if generator.random() < 0.9}  # some unknown
        held, copied = tracker.endpoints, copy.deepcopy(tracker.endpoints)
        assert tracker.update(s, ready) == all_endpoints(s, ready)
        assert held == copied  # what an earlier sync holds is never changed in place
    again = state()  # a new state: counted in full
    assert tracker.update(again, {}) == all_endpoints(again, {})


def test_load_balancer_addresses_of_services_made_through_the_api_are_left_to_them():
    """emu's planner takes pool addresses from the lowest up, around the addresses kubectl's
    Services hold (given by the API server's servicelb controller); a declared one they hold is refused."""
    theirs = (set(), set(), {"172.28.5.223": "default/kweb"})
    first = plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24", reserved=theirs)
    assert first.services["default/lb"].load_balancer_ip == "172.28.5.224"
    moved = plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24", state(), reserved=theirs)
    assert moved.services["default/lb"].load_balancer_ip == "172.28.5.224"  # .223 was emu's before: now kweb's
    declared = LAB.replace("    clusterIP: 10.96.0.54\n", "    clusterIP: 10.96.0.54\n    loadBalancerIP: 172.28.5.223\n")
    with pytest.raises(EmuError, match="loadBalancerIP 172.28.5.223 is held by service default/kweb, made through "
                                       "the API"):
        plan_cluster(load_text(declared), "emu-lab", "172.28.5.0/24", reserved=theirs)


def test_foreign_service_addresses_include_the_load_balancer_addresses_of_kubectls_services():
    from emu.control.apiserver import foreign_service_addresses

    class Api:  # the answer of GET /api/v1/services
        def get(self, path):
            assert path == "/api/v1/services"
            lb = {"loadBalancer": {"ingress": [{"ip": "172.28.5.254", "ipMode": "VIP"}]}}
            return 200, {"items": [
                {"metadata": {"name": "kweb", "namespace": "default"},
                 "spec": {"type": "LoadBalancer", "clusterIP": "10.96.7.7", "ports": [{"port": 80, "nodePort": 31000}]},
                 "status": lb},
                {"metadata": {"name": "lb", "namespace": "default", "annotations": {"emu.io/managed-by": "emu"}},
                 "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.54", "loadBalancerIP": "172.28.5.223"},
                 "status": {"loadBalancer": {"ingress": [{"ip": "172.28.5.223"}]}}},
            ]}  # fmt: skip

    assert foreign_service_addresses(Api()) == ({"10.96.7.7"}, {31000}, {"172.28.5.254": "default/kweb"})
