"""emu.apiserver.mirror: the objects emu's commands drive, written into a real store."""

from emu.apiserver import mirror
from emu.apiserver.storage import Store


def pod(name: str, ready: str = "True", namespace: str = "default") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": {"app": "x"}},
        "spec": {"nodeName": "worker", "containers": [{"name": "c", "image": "emu/node"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.2", "conditions": [{"type": "Ready", "status": ready}]},
    }  # fmt: skip


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "status": {"phase": "Active"}}


def test_sync_creates_replaces_only_what_changed_and_deletes_what_left(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    assert mirror.sync(store, [namespace("default"), pod("a"), pod("b")]) == \
        {"created": 3, "updated": 0, "deleted": 0, "unchanged": 0}  # fmt: skip
    before = store.get("pods", "default", "a")
    watcher = store.watch("pods", resource_version=str(store.revision))
    counts = mirror.sync(store, [namespace("default"), pod("a"), pod("b", ready="False")])
    assert counts == {"created": 0, "updated": 1, "deleted": 0, "unchanged": 2}
    assert store.get("pods", "default", "a")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    b = store.get("pods", "default", "b")
    assert b["status"]["conditions"] == [{"type": "Ready", "status": "False"}]  # status written with the rest
    event = watcher.next(1.0)
    assert event is not None and event[0] == "MODIFIED" and '"name":"b"' in event[1].replace(" ", "")
    assert mirror.sync(store, [namespace("default"), pod("b", ready="False")])["deleted"] == 1
    assert store.get("pods", "default", "a") is None
    assert store.get("pods", "default", "b")["metadata"]["uid"] == b["metadata"]["uid"]  # the same pod


def test_the_system_namespaces_stay_and_other_kinds_are_left_alone(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    mirror.sync(store, [namespace("default"), namespace("kube-system"), namespace("team")])
    store.create("configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "team"}})
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "team"},
                "data": {"a": "1"}}  # fmt: skip
    mirror.sync(store, [namespace("team"), settings])
    store.update("configmaps", {**settings, "data": {"a": "2"}})  # a user's change
    mirror.sync(store, [namespace("team"), settings])
    assert store.get("configmaps", "team", "settings")["data"] == {"a": "2"}  # emu wrote it once, then left it
    store.create("secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "team"}})
    mirror.sync(store, [])
    names = {o["metadata"]["name"] for o in store.list_objects("namespaces")}
    assert names == {"default", "kube-system"}  # "team" was emu's; the system ones stay
    assert store.get("secrets", "team", "s") is not None  # not a kind emu drives


def test_writes_to_driven_kinds_are_refused_for_everyone_but_emu():
    error = mirror.refuse("kubernetes-admin", "patch", "", "nodes", "", name="worker")
    assert error is not None and error.code == 405 and "emu apply -f" in error.message
    assert mirror.refuse("emu-controller", "patch", "", "nodes", "", name="worker") is None
    # Kinds emu owns one by one (OWNED): a new one made through the API is its maker's.
    for group, resource in (("apps", "deployments"), ("apps", "replicasets"), ("apps", "daemonsets"), ("", "services"),
                            ("", "namespaces"), ("networking.k8s.io", "networkpolicies")):
        assert mirror.refuse("kubernetes-admin", "create", group, resource, "default", body=lambda: {}) is None
    assert mirror.refuse("kubernetes-admin", "list", "", "pods", "default") is None
    assert mirror.refuse("kubernetes-admin", "create", "", "secrets", "default") is None
    assert mirror.refuse("kubernetes-admin", "create", "", "configmaps", "default") is None  # written once, then theirs
    # Endpoints are the API server's controllers' (and a user's, for a service without a selector).
    assert mirror.refuse("kubernetes-admin", "create", "discovery.k8s.io", "endpointslices", "default") is None
    # A node writes the status of its pods (NodeRestriction checks which), nothing else of them.
    assert mirror.refuse("system:node:worker", "patch", "", "pods", "default", "status") is None
    assert mirror.refuse("system:node:worker", "patch", "", "pods", "default") is not None
    assert mirror.refuse("kubernetes-admin", "patch", "", "pods", "default", "status") is not None


def test_an_object_of_a_kind_emu_does_not_mirror_is_refused(tmp_path):
    import pytest

    from emu.apiserver.errors import ApiError

    store = Store(str(tmp_path / "state.db"))
    with pytest.raises(ApiError, match="does not mirror"):
        mirror.sync(store, [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "d"}}])


def node(name: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}


def test_a_move_binds_an_emu_pod_to_its_new_node_not_ready_until_that_node_reports(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    mirror.sync(store, [namespace("default"), node("worker", "172.18.0.3"), node("w1", "172.18.0.4"), pod("a"),
                        pod("b")])  # fmt: skip
    before = store.get("pods", "default", "a")
    watcher = store.watch("pods", resource_version=str(store.revision))
    counts = mirror.move(store, [{"namespace": "default", "name": "a", "node": "w1", "ip": "10.244.2.7"}])
    assert counts == {"moved": 1, "unchanged": 0}
    after = store.get("pods", "default", "a")
    assert after["spec"]["nodeName"] == "w1" and after["metadata"]["uid"] == before["metadata"]["uid"]
    status = after["status"]
    assert (status["phase"], status["podIP"], status["podIPs"], status["hostIP"]) == \
        ("Pending", "10.244.2.7", [{"ip": "10.244.2.7"}], "172.18.0.4")  # fmt: skip
    assert {c["type"]: c["status"] for c in status["conditions"]} == \
        {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "False", "Ready": "False"}  # fmt: skip
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    event = watcher.next(1.0)
    assert event is not None and event[0] == "MODIFIED"
    assert watcher.next(0.1) is None  # only that pod: b and the rest are as they were
    assert store.get("pods", "default", "b")["spec"]["nodeName"] == "worker"
    # Told twice (the hub retries after a lost answer): nothing changes.
    assert mirror.move(store, [{"namespace": "default", "name": "a", "node": "w1", "ip": "10.244.2.7"}]) == \
        {"moved": 0, "unchanged": 1}  # fmt: skip


def test_a_move_of_what_is_not_an_emu_pod_or_to_no_node_is_refused(tmp_path):
    import pytest

    from emu.apiserver.errors import ApiError

    store = Store(str(tmp_path / "state.db"))
    mirror.sync(store, [namespace("default"), node("w1", "172.18.0.4"), pod("a")])
    theirs = {**pod("k"), "metadata": {"name": "k", "namespace": "default"}}
    store.create("pods", theirs)  # made through the API: the kubelet's, not emu's
    cases = [
        ({"namespace": "default", "name": "k", "node": "w1", "ip": "10.244.2.7"}, "not one of emu's pods"),
        ({"namespace": "default", "name": "ghost", "node": "w1", "ip": "10.244.2.7"}, "not one of emu's pods"),
        ({"namespace": "default", "name": "a", "node": "w9", "ip": "10.244.2.7"}, "no such Node"),
        ({"namespace": "default", "name": "a", "node": "w1"}, "every move must be"),
    ]
    for move, words in cases:
        with pytest.raises(ApiError) as caught:
            mirror.move(store, [move])
        assert caught.value.code == 400 and words in caught.value.message, move
    assert store.get("pods", "default", "a")["spec"]["nodeName"] == "worker"


def service(name: str, ip: str, node_port: int | None = None, mark: bool = False) -> dict:
    ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
              **({"nodePort": node_port} if node_port else {})}]  # fmt: skip
    meta = {"name": name, "namespace": "default"}
    if mark:
        meta["annotations"] = {mirror.MANAGED_BY: mirror.MANAGER}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "selector": {"app": "x"}, "ports": ports}}  # fmt: skip


def test_services_made_through_the_api_are_theirs_and_emus_may_not_take_their_addresses(tmp_path):
    import pytest

    from emu.apiserver.errors import ApiError

    store = Store(str(tmp_path / "state.db"))
    mirror.sync(store, [namespace("default"), service("echo", "10.96.0.20")])
    assert mirror.emu_owned(store.get("services", "default", "echo"))  # emu's mark, as on its pods
    store.create("services", service("kweb", "10.96.0.30", node_port=30999))  # kubectl's
    assert mirror.sync(store, [namespace("default"), service("echo", "10.96.0.20")])["deleted"] == 0
    assert store.get("services", "default", "kweb") is not None  # not emu's: left alone
    # kubectl's writes: refused to emu's Service, taken for its own; the mark is emu's alone.
    current = {"echo": store.get("services", "default", "echo"), "kweb": store.get("services", "default", "kweb")}
    refused = mirror.refuse("kubernetes-admin", "delete", "", "services", "default", name="echo",
                            current=lambda: current["echo"])  # fmt: skip
    assert refused is not None and refused.code == 405
    assert mirror.refuse("kubernetes-admin", "delete", "", "services", "default", name="kweb",
                         current=lambda: current["kweb"]) is None  # fmt: skip
    assert mirror.refuse("kubernetes-admin", "create", "", "services", "default", body=lambda: service("s", "")) is None
    marked = mirror.refuse("kubernetes-admin", "create", "", "services", "default",
                           body=lambda: service("s", "", mark=True))  # fmt: skip
    assert marked is not None and marked.code == 403
    # An emu Service that would take kubectl's address or node port: refused, saying which.
    for clash, words in ((service("new", "10.96.0.30"), "10.96.0.30"), (service("new", "10.96.0.31", 30999), "30999")):
        with pytest.raises(ApiError) as caught:
            mirror.sync(store, [namespace("default"), service("echo", "10.96.0.20"), clash])
        assert caught.value.code == 409 and words in caught.value.message and "default/kweb" in caught.value.message
    # One of emu's named as kubectl's: refused too.
    with pytest.raises(ApiError) as caught:
        mirror.sync(store, [namespace("default"), service("kweb", "10.96.0.40")])
    assert caught.value.code == 409 and "made through the API" in caught.value.message


def test_a_sync_of_many_services_lists_the_services_a_bounded_number_of_times(tmp_path):
    """The clash check once listed every Service for each of emu's: a 1,000-Service lab's
    unchanged re-sync took 27 s of the API server's CPU. Counted, not timed."""
    store = Store(str(tmp_path / "state.db"))
    store.create("services", service("kweb", "10.96.1.250", node_port=30999))  # kubectl's
    objects = [namespace("default"), *(service(f"s{i}", f"10.96.0.{i + 10}") for i in range(200))]
    listed: list[str] = []
    real = store.list_objects

    def counting(key, *args, **kwargs):
        listed.append(key)
        return real(key, *args, **kwargs)

    store.list_objects = counting
    mirror.sync(store, objects)
    mirror.sync(store, objects)  # unchanged
    assert listed.count("services") <= 4, listed.count("services")  # two syncs: the check and the deletions


def policy(name: str, mark: bool = False) -> dict:
    meta: dict = {"name": name, "namespace": "default"}
    if mark:
        meta["annotations"] = {mirror.MANAGED_BY: mirror.MANAGER}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}  # fmt: skip


def test_network_policies_made_through_the_api_are_theirs_and_emus_stay_emus(tmp_path):
    """kubectl creates, changes and deletes its own NetworkPolicies (every node's policy agent
    watches the API server); emu's carry its mark and may not be changed with kubectl."""
    import pytest

    from emu.apiserver.errors import ApiError

    store = Store(str(tmp_path / "state.db"))
    key = "networkpolicies.networking.k8s.io"
    mirror.sync(store, [namespace("default"), policy("emus")])
    assert mirror.emu_owned(store.get(key, "default", "emus"))
    store.create(key, policy("kubectls"))
    assert mirror.sync(store, [namespace("default"), policy("emus")])["deleted"] == 0
    assert store.get(key, "default", "kubectls") is not None  # not emu's: left alone
    mirror.sync(store, [namespace("default")])
    assert store.get(key, "default", "emus") is None and store.get(key, "default", "kubectls") is not None
    mirror.sync(store, [namespace("default"), policy("emus")])
    current = {"emus": store.get(key, "default", "emus"), "kubectls": store.get(key, "default", "kubectls")}
    for verb in ("update", "patch", "delete"):
        refused = mirror.refuse("kubernetes-admin", verb, "networking.k8s.io", "networkpolicies", "default",
                                name="emus", current=lambda: current["emus"])  # fmt: skip
        assert refused is not None and refused.code == 405
        assert mirror.refuse("kubernetes-admin", verb, "networking.k8s.io", "networkpolicies", "default",
                             name="kubectls", current=lambda: current["kubectls"]) is None  # fmt: skip
    marked = mirror.refuse("kubernetes-admin", "create", "networking.k8s.io", "networkpolicies", "default",
                           body=lambda: policy("x", mark=True))  # fmt: skip
    assert marked is not None and marked.code == 403
    with pytest.raises(ApiError) as caught:  # one of emu's named as kubectl's
        mirror.sync(store, [namespace("default"), policy("emus"), policy("kubectls")])
    assert caught.value.code == 409 and "made through the API" in caught.value.message


def test_a_namespace_made_through_the_api_is_shared_and_never_deleted_by_emu(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    store.create("namespaces", namespace("team"))  # kubectl create namespace team
    counts = mirror.sync(store, [namespace("default"), namespace("team"), namespace("emus"),
                                 pod("a", namespace="team")])  # fmt: skip
    assert not mirror.emu_owned(store.get("namespaces", "", "team")) and store.get("pods", "team", "a") is not None
    assert mirror.emu_owned(store.get("namespaces", "", "emus"))
    assert counts["created"] == 3  # default (no store bootstrap here), emus, the pod
    mirror.sync(store, [namespace("default")])
    assert store.get("namespaces", "", "team") is not None  # not emu's to delete
    assert store.get("namespaces", "", "emus") is None
