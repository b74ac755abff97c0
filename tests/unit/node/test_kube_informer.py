"""emu.node.kube.informer against emu's real API server: paged lists, watches,
selectors, and an API server killed with kill -9 and started again (resume
from the last resourceVersion; relist on 410 Gone). The handlers' view must
end equal to the server's objects with every change seen once."""

from __future__ import annotations

import threading
import time

import pytest
from kube_testserver import ChildProcess, InProcess

from emu.apiserver import resources
from emu.apiserver.storage import Store
from emu.node.kube.client import resource_path
from emu.node.kube.informer import Informer, key_of

SERVICES_ALL = resource_path("v1", "services")
SERVICES = resource_path("v1", "services", "default")
PODS = resource_path("v1", "pods", "default")
CONFIGMAPS = resource_path("v1", "configmaps", "default")


def service(name: str, port: int = 80) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": 8080}]}}  # fmt: skip


def pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "emu/node"}]}}  # fmt: skip


class Recorder:
    """The handlers' view: what they were told, checked as it comes (an add of a known
    key, an update that is not newer than what the view holds, a delete of an unknown
    key are violations: an event lost or seen twice)."""

    def __init__(self):
        self.view: dict[str, dict] = {}
        self.events: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self.cond = threading.Condition()

    def rv(self, obj: dict) -> int:
        return int(obj["metadata"]["resourceVersion"])

    def add(self, obj: dict) -> None:
        key = key_of(obj)
        with self.cond:
            if key in self.view:
                self.violations.append(f"add of {key}, which the view has")
            self.view[key] = obj
            self.events.append(("add", key))
            self.cond.notify_all()

    def update(self, old: dict, new: dict) -> None:
        key = key_of(new)
        with self.cond:
            if self.view.get(key) is not old:
                self.violations.append(f"update of {key}: old is not what the view has")
            if self.rv(new) <= self.rv(old):
                self.violations.append(f"update of {key} to {self.rv(new)}, not newer than {self.rv(old)}")
            self.view[key] = new
            self.events.append(("update", key))
            self.cond.notify_all()

    def delete(self, obj: dict) -> None:
        key = key_of(obj)
        with self.cond:
            if key not in self.view:
                self.violations.append(f"delete of {key}, which the view lacks")
            self.view.pop(key, None)
            self.events.append(("delete", key))
            self.cond.notify_all()

    def handlers(self) -> dict:
        return {"on_add": self.add, "on_update": self.update, "on_delete": self.delete}

    def wait(self, predicate, timeout: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def versions(self) -> dict[str, str]:
        with self.cond:
            return {key: obj["metadata"]["resourceVersion"] for key, obj in self.view.items()}


def server_versions(client, path: str) -> dict[str, str]:
    return {key_of(o): o["metadata"]["resourceVersion"] for o in client.list(path)["items"]}


def eventually(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture()
def server(tmp_path):
    s = InProcess(tmp_path)
    yield s
    s.stop()


def test_lists_in_pages_then_watches_from_the_list(server):
    admin = server.client()
    for i in range(5):
        admin.create(SERVICES, service(f"s{i}"))
    recorder = Recorder()
    informer = Informer(server.client("kube-proxy"), SERVICES_ALL, page_size=2, **recorder.handlers()).start()
    try:
        assert informer.wait_synced(20)
        assert sorted(recorder.view) == [f"default/s{i}" for i in range(5)]
        def lists():  # (the server logs a request once it has answered it: a moment later)
            return [line for line in server.requests() if line.startswith("GET /api/v1/services?") and "watch=" not in line]

        assert eventually(lambda: len(lists()) == 3) and all("limit=2" in line for line in lists())
        assert informer.lists == 1
        admin.create(SERVICES, service("s5"))
        admin.patch(SERVICES + "/s1", {"metadata": {"labels": {"x": "y"}}})
        admin.delete(SERVICES + "/s2")
        assert recorder.wait(lambda r: len(r.events) == 8)
        assert recorder.events[5:] == [("add", "default/s5"), ("update", "default/s1"), ("delete", "default/s2")]
        assert recorder.view["default/s1"]["metadata"]["labels"] == {"x": "y"}
        assert recorder.versions() == server_versions(admin, SERVICES_ALL)
        assert "managedFields" not in recorder.view["default/s1"]["metadata"]  # the default transform
        assert informer.get("default/s5")["metadata"]["name"] == "s5"
        assert recorder.violations == []
    finally:
        informer.stop()
    assert not informer.thread.is_alive()


def test_a_kubelets_field_selector_sees_only_its_nodes_pods(server):
    admin = server.client()
    admin.create(PODS, pod("a", "worker"))
    admin.create(PODS, pod("b", "worker2"))
    recorder = Recorder()
    informer = Informer(server.client("nodes/worker"), resource_path("v1", "pods"),
                        field_selector="spec.nodeName=worker", **recorder.handlers()).start()  # fmt: skip
    try:
        assert informer.wait_synced(20)
        assert list(recorder.view) == ["default/a"]
        admin.create(PODS, pod("c", "worker2"))
        admin.create(PODS, pod("d", "worker"))
        admin.delete(PODS + "/a", grace_period_seconds=0)
        assert recorder.wait(lambda r: ("delete", "default/a") in r.events)
        assert recorder.events == [("add", "default/a"), ("add", "default/d"), ("delete", "default/a")]
        assert recorder.violations == []
    finally:
        informer.stop()


def test_an_object_leaving_a_label_selection_is_deleted_from_the_view(server):
    admin = server.client()
    admin.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m", "labels": {"app": "x"}}})
    recorder = Recorder()
    informer = Informer(admin, CONFIGMAPS, label_selector="app=x", **recorder.handlers()).start()
    try:
        assert informer.wait_synced(20)
        admin.patch(CONFIGMAPS + "/m", {"metadata": {"labels": {"app": "y"}}})
        assert recorder.wait(lambda r: len(r.events) == 2)
        admin.patch(CONFIGMAPS + "/m", {"metadata": {"labels": {"app": "x"}}})
        assert recorder.wait(lambda r: len(r.events) == 3)
        assert recorder.events == [("add", "default/m"), ("delete", "default/m"), ("add", "default/m")]
        assert recorder.violations == []
    finally:
        informer.stop()


def test_a_failing_handler_does_not_stop_the_informer(server):
    admin = server.client()
    recorder = Recorder()
    failed = []

    def add(obj):
        if obj["metadata"]["name"] == "bad" and not failed:
            failed.append(obj)
            raise RuntimeError("a bug in a handler")
        recorder.add(obj)

    logged: list[str] = []
    informer = Informer(admin, SERVICES, on_add=add, log=logged.append).start()
    try:
        assert informer.wait_synced(20)
        admin.create(SERVICES, service("bad"))
        admin.create(SERVICES, service("good"))
        assert recorder.wait(lambda r: "default/good" in r.view)
        assert failed and any("a handler failed: RuntimeError: a bug in a handler" in line for line in logged)
    finally:
        informer.stop()


@pytest.fixture()
def child(tmp_path):
    s = ChildProcess(tmp_path)
    yield s
    s.stop()


def test_the_api_server_killed_and_back_the_watch_resumes_from_its_revision(child):
    admin = child.client()
    for i in range(3):
        admin.create(SERVICES, service(f"s{i}"))
    recorder = Recorder()
    logged: list[str] = []
    informer = Informer(child.client("kube-proxy"), SERVICES_ALL, log=logged.append, **recorder.handlers()).start()
    try:
        assert informer.wait_synced(20)
        latest = admin.list(SERVICES)["metadata"]["resourceVersion"]
        # Bookmarks bring the informer to the server's revision (services and others alike).
        assert eventually(lambda: informer.resource_version == latest)
        child.kill()
        assert eventually(lambda: informer.reconnects >= 1)  # it tried, and backs off
        child.start()
        admin.create(SERVICES, service("s3"))
        admin.patch(SERVICES + "/s0", {"metadata": {"labels": {"after": "restart"}}})
        admin.delete(SERVICES + "/s1")
        assert recorder.wait(lambda r: ("delete", "default/s1") in r.events)
        assert recorder.events[3:] == [("add", "default/s3"), ("update", "default/s0"), ("delete", "default/s1")]
        assert recorder.versions() == server_versions(admin, SERVICES_ALL)
        assert (informer.lists, informer.relists_after_gone) == (1, 0), logged  # resumed, never listed again
        assert recorder.violations == []
    finally:
        informer.stop()


def test_changes_made_while_the_server_was_down_come_by_a_relist_after_410(child):
    admin = child.client()
    for i in range(3):
        admin.create(SERVICES, service(f"s{i}"))
    recorder = Recorder()
    logged: list[str] = []
    informer = Informer(child.client("kube-proxy"), SERVICES_ALL, log=logged.append, **recorder.handlers()).start()
    try:
        assert informer.wait_synced(20)
        child.kill()
        # Another API server on the same storage changed things meanwhile (an HA pair sharing
        # etcd): the restarted server's watch window starts after them, so the informer's
        # revision is too old (410 Expired) and only a new list can tell what changed.
        store = Store(str(child.db))
        info = resources.lookup("", "v1", "services")
        s0 = store.get(info.key, "default", "s0")
        s0["metadata"]["labels"] = {"changed": "offline"}
        store.update(info.key, s0, info.field_values)
        store.delete(info.key, "default", "s2", info.field_values)
        added = service("s9")
        added["metadata"]["namespace"] = "default"
        store.create(info.key, added, info.field_values)
        store.close()
        child.start()
        assert recorder.wait(lambda r: len(r.events) == 6)
        assert sorted(recorder.events[3:]) == [("add", "default/s9"), ("delete", "default/s2"), ("update", "default/s0")]
        assert recorder.view["default/s0"]["metadata"]["labels"] == {"changed": "offline"}
        assert informer.relists_after_gone == 1 and informer.lists == 2, logged
        assert any("too old resource version" in line and "listing again" in line for line in logged)
        # And it watches on from the new list.
        admin.create(SERVICES, service("s10"))
        assert recorder.wait(lambda r: "default/s10" in r.view)
        assert recorder.versions() == server_versions(admin, SERVICES_ALL)
        assert recorder.violations == []
    finally:
        informer.stop()


def test_a_watch_window_overrun_relists_without_a_restart(tmp_path):
    server = InProcess(tmp_path, window=3, bookmark_interval=60)
    recorder = Recorder()
    logged: list[str] = []
    try:
        admin = server.client()
        admin.create(SERVICES, service("a"))
        informer = Informer(admin, SERVICES_ALL, log=logged.append, **recorder.handlers()).start()
        assert informer.wait_synced(20) and eventually(lambda: informer.watch is not None)
        for i in range(5):  # other kinds' writes push the informer's revision out of the window
            admin.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}})
        informer.watch.close()  # the connection breaks: it watches again from its (now too old) revision
        assert eventually(lambda: informer.relists_after_gone == 1)
        admin.create(SERVICES, service("b"))
        assert recorder.wait(lambda r: "default/b" in r.view)
        assert recorder.events == [("add", "default/a"), ("add", "default/b")]
        assert recorder.violations == []
        informer.stop()
    finally:
        server.stop()


def test_a_change_between_two_pages_of_the_list_comes_once_by_the_watch(server):
    """A write between two pages of the list: the second page is the list's snapshot (as
    kube-apiserver serves it from etcd at the list's revision), and the watch from that
    revision brings the change: the handlers hear the add, then the update, once each."""
    admin = server.client()
    for name in ("a", "b"):
        admin.create(SERVICES, service(name))

    class WriteBetweenPages(type(admin)):
        pages = 0

        def list(self, *args, **kwargs):
            page = super().list(*args, **kwargs)
            WriteBetweenPages.pages += 1
            if WriteBetweenPages.pages == 1:
                admin.patch(SERVICES + "/b", {"metadata": {"labels": {"between": "pages"}}})
            return page

    client = WriteBetweenPages(server.url, str(server.pki / "ca.crt"), str(server.pki / "admin.crt"),
                               str(server.pki / "admin.key"))  # fmt: skip
    recorder = Recorder()
    informer = Informer(client, SERVICES_ALL, page_size=1, **recorder.handlers()).start()
    try:
        assert informer.wait_synced(20)
        admin.create(SERVICES, service("c"))  # a later change, to know the one between the pages has been read
        assert recorder.wait(lambda r: "default/c" in r.view)
        assert recorder.view["default/b"]["metadata"]["labels"] == {"between": "pages"}
        assert recorder.events == [("add", "default/a"), ("add", "default/b"), ("update", "default/b"),
                                   ("add", "default/c")]  # fmt: skip
        assert recorder.violations == []
    finally:
        informer.stop()


def test_a_frozen_api_server_is_noticed_by_the_silence_and_the_watch_resumes(child):
    """SIGSTOP keeps the server's connections open and silent (a paused control-plane
    container): without an idle timeout the watch would wait for minutes."""
    admin = child.client()
    admin.create(SERVICES, service("s0"))
    recorder = Recorder()
    logged: list[str] = []
    informer = Informer(child.client("kube-proxy", timeout=1.0), SERVICES_ALL, idle_timeout=1.0, log=logged.append,
                        **recorder.handlers()).start()  # fmt: skip
    try:
        assert informer.wait_synced(20)
        child.freeze()
        assert eventually(lambda: informer.reconnects >= 1)
        assert any("TimeoutError" in line for line in logged), logged
        child.thaw()
        admin.create(SERVICES, service("s1"))
        assert recorder.wait(lambda r: "default/s1" in r.view)
        assert recorder.events == [("add", "default/s0"), ("add", "default/s1")]
        assert informer.lists == 1 and recorder.violations == []
    finally:
        informer.stop()


def test_watches_that_end_at_once_are_backed_off_not_spun(server):
    logged: list[str] = []
    # timeoutSeconds=0: the server ends every watch as soon as it starts, with nothing in it.
    informer = Informer(server.client(), SERVICES_ALL, watch_timeout=0.5, log=logged.append).start()
    try:
        assert informer.wait_synced(20)
        assert eventually(lambda: informer.reconnects >= 3)
        # Spinning, it would have watched hundreds of times by now; backing off, a handful.
        assert informer.watches <= informer.reconnects + 1 < 30
        assert any("the watch ended at once without an event" in line for line in logged)
    finally:
        informer.stop()


def test_catch_up_lists_a_quiet_collection_again_to_reach_a_revision(tmp_path):
    """A write elsewhere (a ConfigMap) moves the server's revision on; the services
    informer hears nothing of it (no bookmark: a server that sends none). Asked to
    catch up to that revision it lists again once, reaches it, and goes on watching:
    a change after that still arrives, seen once. An informer already there does not list."""
    server = InProcess(tmp_path, bookmark_interval=3600)
    admin = server.client()
    admin.create(SERVICES, service("s0"))
    recorder = Recorder()
    informer = Informer(server.client("kube-proxy"), SERVICES_ALL, **recorder.handlers()).start()
    try:
        assert informer.wait_synced(20)
        before = informer.revision()
        elsewhere = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "elsewhere"}}
        revision = int(admin.create(CONFIGMAPS, elsewhere)["metadata"]["resourceVersion"])
        assert informer.revision() == before < revision
        assert informer.catch_up(revision, 20)
        assert informer.revision() >= revision and informer.lists == 2
        assert informer.catch_up(before, 20) and informer.lists == 2  # already there: no list
        admin.create(SERVICES, service("s1"))
        assert recorder.wait(lambda r: "default/s1" in r.view)
        assert [e for e in recorder.events if e[1] == "default/s0"] == [("add", "default/s0")]
        assert recorder.violations == []
    finally:
        informer.stop()
        server.stop()
