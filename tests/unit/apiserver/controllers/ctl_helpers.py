"""Shared pieces of the controller tests (imported, not a conftest): a real Store on a
temporary SQLite file, a manager with an injected clock, Nodes and Pods as the
kubelet and kubectl would write them, and a fake kubelet that starts bound pods."""

from __future__ import annotations

import copy

from emu.apiserver import storage
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.framework import Client, Controller, Watch
from emu.apiserver.storage import Store


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def new_store(tmp_path) -> Store:
    """A store with the namespaces every cluster has (the API server makes them at start):
    controllers create only in namespaces that exist (NamespaceLifecycle)."""
    store = Store(str(tmp_path / "state.db"))
    for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
        namespace(store, name)
    return store


def manager(store: Store, *enabled: str, clock: FakeClock | None = None, wall=None):
    """A manager of the `enabled` controllers on a fake monotonic clock (and `wall`, default the real time)."""
    logs: list[str] = []
    kw = {"wall": wall} if wall is not None else {}
    m = build_manager(store, clock=clock or FakeClock(), enabled=enabled, log=logs.append, **kw)
    m.logs = logs
    run = m.run_until_idle

    def run_until_idle(*args, **kwargs):
        """The manager's run_until_idle, failing the test when a reconcile raised (a bug the retries would hide)."""
        steps = run(*args, **kwargs)
        failures = [line for line in logs if " failed: " in line]
        assert not failures, "\n".join(failures)
        return steps
    m.run_until_idle = run_until_idle
    return m


def node(name: str, labels: dict | None = None, taints: list | None = None, ready: bool = True,
         unschedulable: bool = False) -> dict:
    obj = {"kind": "Node", "apiVersion": "v1",
           "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                 **(labels or {})}},
           "spec": {},
           "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                      "reason": "KubeletReady" if ready else "KubeletNotReady"}]}}
    if taints:
        obj["spec"]["taints"] = taints
    if unschedulable:
        obj["spec"]["unschedulable"] = True
    return obj


def add_nodes(store: Store, *nodes: dict) -> None:
    c = Client(store)
    for n in nodes:
        status = n.get("status")
        out = c.create("nodes", n)
        out["status"] = status
        c.update_status("nodes", out)


def namespace(store: Store, name: str = "default") -> None:
    if store.get("namespaces", "", name) is None:
        Client(store).create("namespaces", {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}})


def pod_template(labels: dict, image: str = "nginx:1.25", annotations: dict | None = None) -> dict:
    meta = {"labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"metadata": meta, "spec": {"containers": [{"name": "app", "image": image}]}}


def pods(store: Store, namespace: str = "default", **label_eq) -> list[dict]:
    out = store.list_objects("pods", namespace)
    return [p for p in out if all(p["metadata"].get("labels", {}).get(k) == v for k, v in label_eq.items())]


def live(objs: list[dict]) -> list[dict]:
    return [o for o in objs if not o["metadata"].get("deletionTimestamp")]


def kubelet(store: Store, ready: bool = True, only: set[str] | None = None) -> int:
    """What a kubelet does for pods bound to its node: Running, an IP, Ready (or not). Returns pods changed.
    Pods being deleted are removed (a kubelet's graceful stop with grace 0)."""
    c = Client(store)
    changed = 0
    for i, p in enumerate(store.list_objects("pods")):
        meta = p["metadata"]
        if only is not None and meta["name"] not in only:
            continue
        if not (p.get("spec") or {}).get("nodeName"):
            continue
        if meta.get("deletionTimestamp"):
            continue
        st = copy.deepcopy(p.get("status") or {})
        want = "True" if ready else "False"
        conds = [c_ for c_ in st.get("conditions") or [] if c_.get("type") not in ("Ready", "ContainersReady",
                                                                                 "Initialized")]
        conds += [{"type": t, "status": want if t != "Initialized" else "True",
                   "lastTransitionTime": storage.now_rfc3339()} for t in ("Initialized", "Ready", "ContainersReady")]
        st.update({"phase": "Running", "podIP": f"10.244.0.{10 + i}", "conditions": conds})
        if st != p.get("status"):
            p["status"] = st
            c.update_status("pods", p)
            changed += 1
    return changed


def settle(m, store: Store, ready: bool = True, rounds: int = 50) -> None:
    """Run controllers and the fake kubelet until neither changes anything."""
    for _ in range(rounds):
        m.run_until_idle()
        if not kubelet(store, ready):
            m.run_until_idle()
            return
    raise AssertionError("controllers and kubelet did not settle")


class FakeKubelet(Controller):
    """A kubelet for every node at once, as a control loop: a pod bound to a node becomes Running
    with an IP and Ready True (what the node agents will write in stage 4)."""

    name = "fake-kubelet"

    def watches(self):
        return [Watch("pods")]

    def reconcile(self, key: str):
        pod = self.informer("pods").get(key)
        if pod is None or not (pod.get("spec") or {}).get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            return
        if (pod.get("status") or {}).get("phase") == "Running":
            return

        def change(p: dict):
            st = p.setdefault("status", {})
            now = storage.now_rfc3339()
            st["phase"] = "Running"
            st["podIP"] = st["hostIP"] = "10.244.1.1"
            st["startTime"] = now
            conds = [c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"]
            conds += [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                      for t in ("Initialized", "Ready", "ContainersReady")]
            st["conditions"] = conds
            return p
        self.client.mutate("pods", *key.split("/", 1), change, status=True)
        return
