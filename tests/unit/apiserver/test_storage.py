"""The store: revisions, optimistic concurrency, lists with continue, the watch
cache (fan-out, selector transitions, 410 window), finalizers, restarts."""

from __future__ import annotations

import json
import sqlite3

import pytest

from emu.apiserver.errors import ApiError
from emu.apiserver.selectors import FieldSelector, LabelSelector
from emu.apiserver.storage import NAME_CHARS, Store


def cm(name, ns="default", labels=None, **extra):
    return {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns,
                                                                  "labels": labels or {}, **extra}}


def fields_of(o):
    return {"metadata.name": o["metadata"]["name"], "metadata.namespace": o["metadata"].get("namespace", "")}


@pytest.fixture()
def store(tmp_path):
    s = Store(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_revisions_uid_and_timestamps(store):
    start = store.revision
    a = store.create("configmaps", cm("a"))
    b = store.create("configmaps", cm("b"))
    assert (a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"]) == (str(start + 1), str(start + 2))
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["metadata"]["creationTimestamp"].endswith("Z")
    assert list(a) == ["kind", "apiVersion", "metadata"]
    assert list(a["metadata"])[:2] == ["name", "namespace"]


def test_already_exists_and_conflict_messages(store):
    a = store.create("configmaps", cm("a"))
    with pytest.raises(ApiError) as e:
        store.create("configmaps", cm("a"))
    assert (e.value.code, e.value.message) == (409, 'configmaps "a" already exists')
    store.update("configmaps", json.loads(json.dumps(a)))  # the stored rv: accepted
    with pytest.raises(ApiError) as e:
        store.update("configmaps", a)  # a's rv is now stale
    assert e.value.code == 409
    assert e.value.message == ('Operation cannot be fulfilled on configmaps "a": the object has been modified; '
                               'please apply your changes to the latest version and try again')
    d = store.create("deployments.apps", cm("d"))
    store.update("deployments.apps", json.loads(json.dumps(d)))
    with pytest.raises(ApiError) as e:
        store.update("deployments.apps", d)
    assert e.value.message.startswith('Operation cannot be fulfilled on deployments.apps "d"')
    assert e.value.details == {"name": "d", "group": "apps", "kind": "deployments"}


def test_generate_name(store):
    made = store.create("configmaps", {"metadata": {"generateName": "web-", "namespace": "default"}})
    name = made["metadata"]["name"]
    assert name.startswith("web-") and len(name) == 9 and set(name[4:]) <= set(NAME_CHARS)


def test_list_order_selectors_and_continue(store):
    for ns, name in [("b", "x"), ("a", "z"), ("a", "y"), ("c", "w")]:
        store.create("configmaps", cm(name, ns, {"keep": "yes"} if name != "w" else {}), fields_of)
    texts, rv, token = store.list("configmaps")
    assert [(json.loads(t)["metadata"]["namespace"], json.loads(t)["metadata"]["name"]) for t in texts] == \
        [("a", "y"), ("a", "z"), ("b", "x"), ("c", "w")]
    assert token == "" and rv == store.revision
    page1, rv1, token = store.list("configmaps", limit=2, labels=LabelSelector.parse("keep=yes"))
    assert [json.loads(t)["metadata"]["name"] for t in page1] == ["y", "z"] and token
    page2, rv2, token2 = store.list("configmaps", limit=2, labels=LabelSelector.parse("keep=yes"),
                                    continue_token=token)
    assert [json.loads(t)["metadata"]["name"] for t in page2] == ["x"] and token2 == "" and rv2 == rv1
    only_b, _, _ = store.list("configmaps", "b")
    assert [json.loads(t)["metadata"]["name"] for t in only_b] == ["x"]
    by_field, _, _ = store.list("configmaps", fields=FieldSelector.parse("metadata.namespace!=a"))
    assert [json.loads(t)["metadata"]["name"] for t in by_field] == ["x", "w"]
    with pytest.raises(ApiError) as e:
        store.list("configmaps", continue_token="not-a-token")
    assert e.value.code == 400


def test_a_continue_page_is_the_snapshot_of_the_lists_revision(store):
    """As etcd's read at the list's revision: what changed after the first page shows as it was then."""
    for name in "abcdef":
        store.create("configmaps", cm(name, labels={"keep": "yes"}), fields_of)
    page1, rv, token = store.list("configmaps", limit=2, labels=LabelSelector.parse("keep=yes"))
    assert [json.loads(t)["metadata"]["name"] for t in page1] == ["a", "b"]
    c = store.get("configmaps", "default", "c")
    store.update("configmaps", {**c, "data": {"k": "2"}}, fields_of)  # changed
    store.delete("configmaps", "default", "d", fields_of)  # deleted
    store.create("configmaps", cm("cc", labels={"keep": "yes"}), fields_of)  # added
    e = store.get("configmaps", "default", "e")
    store.update("configmaps", {**e, "metadata": {**e["metadata"], "labels": {}}}, fields_of)  # left the selection
    store.update("configmaps", {**store.get("configmaps", "default", "e"), "data": {"k": "3"}}, fields_of)
    rest, rv2, token2 = store.list("configmaps", labels=LabelSelector.parse("keep=yes"), continue_token=token)
    then = [json.loads(t) for t in rest]
    assert [o["metadata"]["name"] for o in then] == ["c", "d", "e", "f"] and rv2 == rv and token2 == ""
    assert all(int(o["metadata"]["resourceVersion"]) <= rv for o in then)
    assert "data" not in then[0] and then[2]["metadata"]["labels"] == {"keep": "yes"}
    # Pages of the snapshot keep going in order; a new list sees the current objects.
    page, _, more = store.list("configmaps", limit=1, continue_token=token)
    assert [json.loads(t)["metadata"]["name"] for t in page] == ["c"] and more
    page, _, _ = store.list("configmaps", limit=2, continue_token=more)
    assert [json.loads(t)["metadata"]["name"] for t in page] == ["d", "e"]
    now, _, _ = store.list("configmaps", labels=LabelSelector.parse("keep=yes"))
    assert [json.loads(t)["metadata"]["name"] for t in now] == ["a", "b", "c", "cc", "f"]


def test_watch_fan_out_and_transitions(store):
    all_w = store.watch("configmaps", resource_version=str(store.revision))
    team_a = store.watch("configmaps", labels=LabelSelector.parse("team=a"), resource_version=str(store.revision))
    other_ns = store.watch("configmaps", "elsewhere", resource_version=str(store.revision))
    o = store.create("configmaps", cm("m", labels={"team": "a"}))
    o["metadata"]["labels"] = {"team": "b"}
    o = store.update("configmaps", o)
    o["metadata"]["labels"] = {"team": "a"}
    o = store.update("configmaps", o)
    store.delete("configmaps", "default", "m")

    def drain(w):
        out = []
        while (ev := w.next(0.05)) is not None:
            out.append((ev[0], json.loads(ev[1])["metadata"]["labels"]["team"], ev[2]))
        return out

    got = drain(all_w)
    assert [(t, team) for t, team, _ in got] == [("ADDED", "a"), ("MODIFIED", "b"), ("MODIFIED", "a"),
                                                 ("DELETED", "a")]
    assert [rv for _, _, rv in got] == sorted(rv for _, _, rv in got)
    assert [(t, team) for t, team, _ in drain(team_a)] == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "a"),
                                                           ("DELETED", "a")]
    assert drain(other_ns) == []
    for w in (all_w, team_a, other_ns):
        w.stop()
    assert store.watcher_count() == 0


def test_watch_from_zero_sends_current_objects_first(store):
    store.create("configmaps", cm("a"))
    store.create("configmaps", cm("b"))
    w = store.watch("configmaps", resource_version="0")
    store.create("configmaps", cm("c"))
    names = []
    while (ev := w.next(0.05)) is not None:
        names.append((ev[0], json.loads(ev[1])["metadata"]["name"]))
    assert names == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    w.stop()


def test_watch_window_410(tmp_path):
    s = Store(str(tmp_path / "w.db"), window=3)
    first = s.create("configmaps", cm("a"))
    for n in "bcde":
        s.create("configmaps", cm(n))
    with pytest.raises(ApiError) as e:
        s.watch("configmaps", resource_version=first["metadata"]["resourceVersion"])
    assert (e.value.code, e.value.reason) == (410, "Expired")
    assert e.value.message == f"too old resource version: {first['metadata']['resourceVersion']} ({s.window_start})"
    w = s.watch("configmaps", resource_version=str(s.window_start))
    assert w.next(0.05)[0] == "ADDED"
    s.close()


def test_finalizers_mark_then_remove(store):
    store.create("configmaps", cm("f", finalizers=["example.com/x"]))
    removed, obj = store.delete("configmaps", "default", "f")
    assert not removed and obj["metadata"]["deletionTimestamp"]
    obj["metadata"]["finalizers"] = []
    store.update("configmaps", obj)
    assert store.get("configmaps", "default", "f") is None
    with pytest.raises(ApiError) as e:
        store.delete("configmaps", "default", "f")
    assert e.value.message == 'configmaps "f" not found'


def test_restart_keeps_objects_and_revision(tmp_path):
    path = str(tmp_path / "state.db")
    s = Store(path)
    s.create("configmaps", cm("a"))
    rev = s.revision
    s.close()
    s = Store(path)
    assert s.get("configmaps", "default", "a")["metadata"]["resourceVersion"] == str(rev)
    assert s.revision == rev and s.window_start == rev
    with pytest.raises(ApiError) as e:
        s.watch("configmaps", resource_version=str(rev - 1))
    assert e.value.code == 410
    s.close()
    rows = sqlite3.connect(path).execute("SELECT resource, namespace, name, rv FROM objects").fetchall()
    assert rows == [("configmaps", "default", "a", rev)]


def test_dry_run_writes_nothing(store):
    before = store.revision
    out = store.create("configmaps", cm("dry"), dry_run=True)
    assert out["metadata"]["name"] == "dry"
    assert store.get("configmaps", "default", "dry") is None and store.revision == before


def test_concurrent_read_modify_write_loses_nothing(store):
    """Writers that retry on 409 never lose an increment: each write is one transaction with its check."""
    import threading

    store.create("configmaps", {**cm("counter"), "data": {"n": "0"}})
    conflicts = []

    def bump(times: int) -> None:
        for _ in range(times):
            while True:
                obj = store.get("configmaps", "default", "counter")
                obj["data"]["n"] = str(int(obj["data"]["n"]) + 1)
                try:
                    store.update("configmaps", obj)
                    break
                except ApiError as e:
                    assert e.code == 409
                    conflicts.append(1)

    threads = [threading.Thread(target=bump, args=(50,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.get("configmaps", "default", "counter")["data"]["n"] == "300"


def test_every_watcher_sees_the_same_ordered_events(store):
    """Many watchers and concurrent writers: each watcher gets every event once, in revision order."""
    import threading

    start = str(store.revision)
    watchers = [store.watch("configmaps", resource_version=start) for _ in range(20)]

    def write(prefix: str) -> None:
        for i in range(50):
            store.create("configmaps", cm(f"{prefix}-{i}"))

    threads = [threading.Thread(target=write, args=(p,)) for p in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seen = []
    for w in watchers:
        events = []
        while (ev := w.next(0.05)) is not None:
            events.append((ev[0], ev[2]))
        w.stop()
        seen.append(events)
    assert len(seen[0]) == 200
    assert [rv for _, rv in seen[0]] == list(range(int(start) + 1, int(start) + 201))
    assert all(s == seen[0] for s in seen)


MANAGED = [{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
            "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {".": {}, "f:k:{\"x\":1}]},\"": {}}}}]


def test_list_split_parses_objects_without_their_managed_fields(store):
    # A label and a nested template that look like managedFields: only metadata's are split off.
    store.create("configmaps", cm("a", labels={"managedFields": "x"}, annotations={"n": ',"managedFields":[]'},
                                  managedFields=MANAGED))
    store.create("configmaps", cm("b"))
    template = {"metadata": {"name": "t", "managedFields": MANAGED}}
    store.create("configmaps", {**cm("c"), "template": template})
    split, rv, _ = store.list_split("configmaps")
    assert rv == store.revision
    for (obj, managed), text in zip(split, store.list("configmaps")[0]):
        whole = json.loads(text)
        assert obj["metadata"].get("managedFields") is None
        assert (json.loads(managed) if managed else None) == whole["metadata"].pop("managedFields", None)
        assert obj == whole
    assert [m is not None for _, m in split] == [True, False, False]
    assert split[2][0]["template"] == template


def test_a_store_from_before_managed_spans_is_read_and_written(tmp_path):
    path = str(tmp_path / "state.db")
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE objects (resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,"
                " uid TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL, labels TEXT NOT NULL,"
                " fields TEXT NOT NULL, PRIMARY KEY (resource, namespace, name))")
    body = json.dumps({**cm("old", managedFields=MANAGED), "data": {"k": "v"}}, separators=(",", ":"))
    old.execute("INSERT INTO objects VALUES ('configmaps','default','old','u',5,?,'{}','{}')", (body,))
    old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    old.execute("INSERT INTO meta VALUES ('revision', '5')")
    old.commit()
    old.close()
    s = Store(path)
    [(obj, managed)], _, _ = s.list_split("configmaps")
    assert json.loads(managed) == MANAGED and obj["data"] == {"k": "v"} and "managedFields" not in obj["metadata"]
    s.create("configmaps", cm("new", managedFields=MANAGED))
    assert [json.loads(m) for _, m in s.list_split("configmaps")[0]] == [MANAGED, MANAGED]
    s.close()
