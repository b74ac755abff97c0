"""The Deployment controller against a real Store, with the ReplicaSet controller, the
scheduler and a fake kubelet: creation, scaling, rolling updates that keep maxSurge and
maxUnavailable at every step, Recreate, rollout restart and undo, history cleanup, and
the status `kubectl rollout status` reads."""

from __future__ import annotations

import copy

import pytest
from ctl_helpers import (
    FakeClock,
    add_nodes,
    kubelet,
    live,
    manager,
    namespace,
    new_store,
    node,
    pod_template,
    pods,
    settle,
)

from emu.apiserver.controllers import deployment as dep
from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.replicaset import pod_ready

DEPLOY = "deployments.apps"
RS = "replicasets.apps"


def deployment(name: str, replicas: int, strategy: dict | None = None, **spec) -> dict:
    obj = {"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": name, "namespace": "default"},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": pod_template({"app": name}), **spec}}
    if strategy:
        obj["spec"]["strategy"] = strategy
    return obj


@pytest.fixture
def env(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"), node("n2"), node("n3"))
    m = manager(store, "deployment", "replicaset", "scheduler")
    yield store, m, Client(store)
    store.close()


def get(store, name="web"):
    return store.get(DEPLOY, "default", name)


def rss(store, name="web"):
    return [r for r in store.list_objects(RS, "default") if r["metadata"]["name"].startswith(name + "-")]


def cond(d, ctype):
    return next((c for c in d["status"].get("conditions") or [] if c["type"] == ctype), None)


def rollout_done(d) -> bool:
    """What `kubectl rollout status` checks (kubectl's DeploymentStatusViewer)."""
    s, n = d.get("status") or {}, d["spec"]["replicas"]
    return (d["metadata"]["generation"] <= s.get("observedGeneration", 0) and s.get("updatedReplicas", 0) >= n
            and s.get("replicas", 0) <= s.get("updatedReplicas", 0)
            and s.get("availableReplicas", 0) >= s.get("updatedReplicas", 0))


def set_image(c, image, name="web"):
    def change(o):
        o["spec"]["template"]["spec"]["containers"][0]["image"] = image
        return o
    c.mutate(DEPLOY, "default", name, change)


def test_create_scale_and_status(env):
    store, m, c = env
    c.create(DEPLOY, deployment("web", 3))
    settle(m, store)
    d = get(store)
    [rs] = rss(store)
    h = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{h}" and h == dep.template_hash(d["spec"]["template"])
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": h}
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert rs["metadata"]["annotations"][dep.REVISION] == "1" == d["metadata"]["annotations"][dep.REVISION]
    assert rs["metadata"]["annotations"][dep.DESIRED] == "3"
    assert rs["metadata"]["annotations"][dep.MAX_REPLICAS] == "4"  # 3 + 25% of 3 rounded up
    ps = pods(store, app="web")
    assert len(ps) == 3 and all(p["metadata"]["labels"]["pod-template-hash"] == h for p in ps)
    assert all(p["metadata"]["name"].startswith(f"web-{h}-") for p in ps)
    s = d["status"]
    assert {k: s[k] for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas",
                              "observedGeneration")} == {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 3,
                                                         "availableReplicas": 3, "observedGeneration": 1}
    assert "unavailableReplicas" not in s
    assert (cond(d, "Available")["status"], cond(d, "Available")["reason"]) == ("True", "MinimumReplicasAvailable")
    assert cond(d, "Progressing")["reason"] == "NewReplicaSetAvailable"
    assert cond(d, "Progressing")["message"] == f'ReplicaSet "web-{h}" has successfully progressed.'
    assert rollout_done(d)

    c.mutate(DEPLOY, "default", "web", lambda o: {**o, "spec": {**o["spec"], "replicas": 6}})
    settle(m, store)
    assert len(pods(store, app="web")) == 6 and len(rss(store)) == 1
    assert rss(store)[0]["metadata"]["annotations"][dep.DESIRED] == "6"
    c.mutate(DEPLOY, "default", "web", lambda o: {**o, "spec": {**o["spec"], "replicas": 2}})
    settle(m, store)
    assert len(live(pods(store, app="web"))) == 2
    d = get(store)
    assert d["status"]["replicas"] == 2 and rollout_done(d)


def drive_rollout(store, m, name, replicas, surge, unavailable, check_recreate=False):
    """Roll the deployment to completion, making one pod Ready at a time, checking the strategy's bounds each step."""
    d = get(store, name)
    new_hash = dep.template_hash(d["spec"]["template"])
    steps = 0
    max_seen = 0
    min_avail = replicas
    while True:
        m.run_until_idle()
        ps = live(pods(store, app=name))
        ready = [p for p in ps if pod_ready(p)]
        max_seen = max(max_seen, len(ps))
        min_avail = min(min_avail, len(ready))
        assert len(ps) <= replicas + surge, f"step {steps}: {len(ps)} pods > {replicas} + maxSurge {surge}"
        assert len(ready) >= replicas - unavailable, f"step {steps}: {len(ready)} ready < {replicas} - {unavailable}"
        if check_recreate:
            hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in ps}
            assert len(hashes) <= 1, f"step {steps}: old and new pods at once: {hashes}"
        if rollout_done(get(store, name)) and all(p["metadata"]["labels"]["pod-template-hash"] == new_hash
                                                  for p in ps) and len(ps) == replicas:
            return steps, max_seen, min_avail
        waiting = sorted(p["metadata"]["name"] for p in ps if p["spec"].get("nodeName") and not pod_ready(p))
        assert waiting, f"step {steps}: the rollout is stuck: {get(store, name)['status']}"
        kubelet(store, ready=True, only={waiting[0]})
        steps += 1
        assert steps < 100


@pytest.mark.parametrize("replicas,strategy,surge,unavailable", [
    (4, {"maxSurge": 1, "maxUnavailable": 0}, 1, 0),
    (4, {"maxSurge": 0, "maxUnavailable": 1}, 0, 1),
    (10, {"maxSurge": "25%", "maxUnavailable": "25%"}, 3, 2),  # 2.5 rounds up for surge, down for unavailable
    (3, {"maxSurge": "50%", "maxUnavailable": "0%"}, 2, 0),
])
def test_rolling_update_respects_max_surge_and_max_unavailable(env, replicas, strategy, surge, unavailable):
    store, m, c = env
    c.create(DEPLOY, deployment("web", replicas, {"type": "RollingUpdate", "rollingUpdate": strategy}))
    settle(m, store)
    first = rss(store)[0]["metadata"]["name"]
    set_image(c, "nginx:1.27")
    _steps, max_seen, min_avail = drive_rollout(store, m, "web", replicas, surge, unavailable)
    assert max_seen == replicas + surge  # the bounds were reached, not just respected
    assert min_avail == replicas - unavailable
    d = get(store)
    assert d["metadata"]["annotations"][dep.REVISION] == "2"
    old = next(r for r in rss(store) if r["metadata"]["name"] == first)
    assert old["spec"]["replicas"] == 0 and old["metadata"]["annotations"][dep.REVISION] == "1"
    events = [e["message"] for e in store.list_objects("events", "default") if e["reason"] == "ScalingReplicaSet"]
    assert any(e.startswith(f"Scaled down replica set {first} from ") and e.endswith(" to 0") for e in events)


def test_rolling_update_status_while_in_progress(env):
    store, m, c = env
    c.create(DEPLOY, deployment("web", 2, {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}))
    settle(m, store)
    set_image(c, "nginx:1.27")
    m.run_until_idle()
    d = get(store)
    new = next(r for r in rss(store) if r["metadata"]["annotations"][dep.REVISION] == "2")
    assert d["status"]["updatedReplicas"] == 1 and d["status"]["replicas"] == 3
    assert d["status"]["unavailableReplicas"] == 1
    assert cond(d, "Progressing")["reason"] in ("ReplicaSetUpdated", "NewReplicaSetCreated")
    assert new["metadata"]["name"] in cond(d, "Progressing")["message"]
    assert not rollout_done(d)
    settle(m, store)
    d = get(store)
    assert rollout_done(d) and cond(d, "Progressing")["reason"] == "NewReplicaSetAvailable"


def test_recreate_never_mixes_old_and_new_pods(env):
    store, m, c = env
    c.create(DEPLOY, deployment("web", 3, {"type": "Recreate"}))
    settle(m, store)
    set_image(c, "nginx:1.27")
    drive_rollout(store, m, "web", 3, 0, 3, check_recreate=True)


def test_rollout_restart_and_undo(env):
    store, m, c = env
    c.create(DEPLOY, deployment("web", 2))
    settle(m, store)
    rs1 = rss(store)[0]["metadata"]["name"]

    def restart(o):  # what `kubectl rollout restart` patches
        o["spec"]["template"]["metadata"].setdefault("annotations", {})[
            "kubectl.kubernetes.io/restartedAt"] = "2026-12-07T12:00:00Z"
        return o
    c.mutate(DEPLOY, "default", "web", restart)
    settle(m, store)
    assert len(rss(store)) == 2
    rs2 = next(r for r in rss(store) if r["metadata"]["name"] != rs1)
    assert rs2["metadata"]["annotations"][dep.REVISION] == "2"
    assert all(p["metadata"]["labels"]["pod-template-hash"] == rs2["metadata"]["labels"]["pod-template-hash"]
               for p in pods(store, app="web"))
    assert rollout_done(get(store))

    # `kubectl rollout undo`: the revision-1 template back into the deployment (without the hash label)
    old = next(r for r in rss(store) if r["metadata"]["name"] == rs1)
    template = copy.deepcopy(old["spec"]["template"])
    del template["metadata"]["labels"]["pod-template-hash"]
    c.mutate(DEPLOY, "default", "web", lambda o: {**o, "spec": {**o["spec"], "template": template}})
    settle(m, store)
    names = {r["metadata"]["name"]: r for r in rss(store)}
    assert set(names) == {rs1, rs2["metadata"]["name"]}  # the old ReplicaSet is the new one again
    assert names[rs1]["metadata"]["annotations"][dep.REVISION] == "3"
    assert names[rs1]["spec"]["replicas"] == 2 and names[rs2["metadata"]["name"]]["spec"]["replicas"] == 0
    assert get(store)["metadata"]["annotations"][dep.REVISION] == "3"


def test_revision_history_limit_deletes_old_replica_sets(env):
    store, m, c = env
    c.create(DEPLOY, deployment("web", 1, revisionHistoryLimit=1))
    settle(m, store)
    for tag in ("1.26", "1.27", "1.28"):
        set_image(c, f"nginx:{tag}")
        settle(m, store)
    revisions = sorted(int(r["metadata"]["annotations"][dep.REVISION]) for r in rss(store))
    assert revisions == [3, 4]


def test_fenceposts_and_hash():
    assert dep.resolve_fenceposts("25%", "25%", 10) == (3, 2)
    assert dep.resolve_fenceposts(0, 0, 10) == (0, 1)
    assert dep.resolve_fenceposts("0%", "0%", 3) == (0, 1)
    t = pod_template({"app": "x"})
    assert dep.template_hash(t) == dep.template_hash(copy.deepcopy(t))
    assert dep.template_hash(t) != dep.template_hash(t, 1)
    assert all(ch in "bcdfghjklmnpqrstvwxz2456789" for ch in dep.template_hash(t))


def test_progress_deadline_exceeded_and_paused(tmp_path):
    import time as _time
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"))
    clock = FakeClock(_time.time())  # one fake clock for the queue's delays and the conditions' timestamps
    m = manager(store, "deployment", "replicaset", "scheduler", clock=clock, wall=clock)
    c = Client(store)
    c.create(DEPLOY, deployment("web", 2, progressDeadlineSeconds=60))
    m.run_until_idle()  # pods never become ready: no kubelet
    d = get(store)
    assert cond(d, "Progressing")["status"] == "True"
    assert cond(d, "Available")["reason"] == "MinimumReplicasUnavailable"
    clock.advance(30)
    m.run_until_idle()
    assert cond(get(store), "Progressing")["status"] == "True"
    clock.advance(32)
    m.run_until_idle()  # the requeue at the deadline finds no progress
    p = cond(get(store), "Progressing")
    assert (p["status"], p["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert p["message"].endswith("has timed out progressing.")
    # paused: a template change makes no new ReplicaSet; resuming rolls it out
    c.mutate(DEPLOY, "default", "web", lambda o: {**o, "spec": {**o["spec"], "paused": True}})
    set_image(c, "nginx:2")
    m.run_until_idle()
    assert len(rss(store)) == 1
    c.mutate(DEPLOY, "default", "web", lambda o: {**o, "spec": {**o["spec"], "paused": False}})
    m.run_until_idle()
    assert len(rss(store)) == 2


def test_scaling_during_a_rollout_is_proportional(env):
    store, m, c = env
    c.create(DEPLOY, deployment("web", 10))  # maxSurge 25% -> 3, maxUnavailable 25% -> 2
    settle(m, store)
    old = rss(store)[0]["metadata"]["name"]
    set_image(c, "nginx:2")
    m.run_until_idle()  # new pods not ready: the new ReplicaSet at 5, the old one at 8 (13 = 10 + 3)
    sizes = {r["metadata"]["name"] == old: r["spec"]["replicas"] for r in rss(store)}
    assert sizes == {True: 8, False: 5}
    c.mutate(DEPLOY, "default", "web", lambda o: {**o, "spec": {**o["spec"], "replicas": 20}})
    m.run_until_idle()
    # 12 more pods allowed (20 + 5 surge - 13), shared by size: 8*25/13 -> 15, 5*25/13 -> 10 (getReplicaSetFraction)
    sizes = {r["metadata"]["name"] == old: r["spec"]["replicas"] for r in rss(store)}
    assert sizes == {True: 15, False: 10}
    assert all(r["metadata"]["annotations"][dep.MAX_REPLICAS] == "25" for r in rss(store))
    settle(m, store)
    d = get(store)
    assert rollout_done(d) and d["status"]["replicas"] == 20


def test_a_restarted_control_plane_changes_nothing(tmp_path):
    """After a restart (a new Store on the same file, new informers), the controllers find every object
    as they left it: same ReplicaSet names (the hash is stable across processes), no new pods, no writes."""
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"), node("n2"))
    m = manager(store, "deployment", "replicaset", "scheduler", "statefulset", "daemonset", "garbagecollector")
    c = Client(store)
    c.create(DEPLOY, deployment("web", 3))
    c.create("statefulsets.apps", {"kind": "StatefulSet", "apiVersion": "apps/v1",
                                   "metadata": {"name": "db", "namespace": "default"},
                                   "spec": {"replicas": 2, "serviceName": "db",
                                            "selector": {"matchLabels": {"app": "db"}},
                                            "template": pod_template({"app": "db"})}})
    c.create("daemonsets.apps", {"kind": "DaemonSet", "apiVersion": "apps/v1",
                                 "metadata": {"name": "agent", "namespace": "default"},
                                 "spec": {"selector": {"matchLabels": {"app": "agent"}},
                                          "template": pod_template({"app": "agent"})}})
    settle(m, store)
    revision = store.revision
    store.close()
    store = new_store(tmp_path)
    m = manager(store, "deployment", "replicaset", "scheduler", "statefulset", "daemonset", "garbagecollector")
    steps = m.run_until_idle()
    assert steps > 0  # every object was looked at again
    assert store.revision == revision  # and nothing was written
    store.close()


def test_min_ready_seconds_delays_availability(tmp_path):
    import time as _time
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"))
    clock = FakeClock(_time.time())
    m = manager(store, "deployment", "replicaset", "scheduler", clock=clock, wall=clock)
    c = Client(store)
    c.create(DEPLOY, deployment("web", 2, minReadySeconds=10))
    m.run_until_idle()
    kubelet(store, ready=True)  # Ready now (the pods' lastTransitionTime is the real time, as the clock's start)
    m.run_until_idle()
    d = get(store)
    assert d["status"]["readyReplicas"] == 2 and "availableReplicas" not in d["status"]
    assert not rollout_done(d)
    clock.advance(12)  # the ReplicaSet asked to look again when the pods would be available
    m.run_until_idle()
    d = get(store)
    assert d["status"]["availableReplicas"] == 2 and rollout_done(d)
