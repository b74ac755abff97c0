"""The control loops' machinery: informers, work queues, a client over the Store,
and the manager that runs controllers in the API server's process.

Contract for a controller (subclass `Controller`):
- `name`: what logs and Events say (`replicaset-controller`, `default-scheduler`).
- `watches()`: `[Watch(resource key, mapper), ...]`. The manager shares one
  `Informer` per resource key (`pods`, `replicasets.apps`: `ResourceInfo.key`)
  between controllers. On every change the mapper gets the object (for a
  MODIFIED change, the old and the new object in turn; for DELETED the last
  state) and returns the queue keys (`"namespace/name"`, `"name"` for
  cluster-scoped objects) to reconcile. `Watch(key)` without a mapper enqueues
  the object's own key.
- `reconcile(key) -> None | float`: make the world match the object named by
  `key`, reading from the informers' caches (`self.informer(resource)`) and
  writing through `self.client`. It runs in one worker thread per controller,
  never twice at once. Before each call the manager brings every informer up to
  the store's revision: writes a reconcile made are in the caches the next
  time (read-your-writes, so controllers need no "expectations" as upstream's).
  An exception puts the key back with per-key exponential back-off (5 ms
  doubling to 1000 s, client-go's default item rate limiter); a number returned
  asks for another reconcile after that many seconds (`AddAfter`); None forgets
  the key's failures.
- Writes go through `Client`: `create` (with the kind's create defaults, as
  the server applies them), `update` (optimistic concurrency: the object's
  resourceVersion must still be the stored one, else `ApiError` 409),
  `update_status`, `mutate(resource, ns, name, fn)` (get, change, update;
  retried on conflict as client-go's `retry.RetryOnConflict`), `delete`.
  Objects a controller makes carry `controller_ref(owner)` in
  metadata.ownerReferences (controller: true, blockOwnerDeletion: true).
- `ControllerManager(store, clock=time.monotonic)`: `add(controller)`,
  `start()` (each informer's watch in a daemon thread; each controller's worker
  is an `emu.node.agent.runner.Runner` in a daemon thread), `stop()`, and
  `run_until_idle()` for tests: in the caller's thread, deliver every pending
  watch event and reconcile every key that is due by `clock()`, until nothing
  is left; keys waiting out a back-off or a requeue delay stay queued (advance
  the injected clock and call again). Deterministic: controllers in the order
  added, keys in the order queued.
- Informers relist when the store answers a watch with 410 Gone (a restart
  or a watcher that fell out of the window): the cache is replaced and every
  difference is delivered as ADDED/MODIFIED/DELETED.
"""

from __future__ import annotations

import collections
import heapq
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from emu.apiserver import errors, resources, storage
from emu.apiserver.errors import ApiError
from emu.apiserver.selectors import LabelSelector
from emu.apiserver.storage import Store

Log = Callable[[str], None]
Mapper = Callable[[dict], Iterable[str]]


def jcopy(value):
    """A deep copy of JSON data (dicts, lists, scalars): copy.deepcopy's result, several times faster."""
    if type(value) is dict:
        return {k: jcopy(v) for k, v in value.items()}
    if type(value) is list:
        return [jcopy(v) for v in value]
    return value


def obj_key(obj: dict) -> str:
    """client-go's MetaNamespaceKeyFunc: "namespace/name", or "name" when cluster-scoped."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or ""
    return f"{ns}/{meta.get('name', '')}" if ns else meta.get("name", "")


def split_key(key: str) -> tuple[str, str]:
    """(namespace, name) of a queue key."""
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else ("", ns)


def info_for(resource: str) -> resources.ResourceInfo:
    """The ResourceInfo whose storage key is `resource` (`pods`, `deployments.apps`)."""
    for r in resources.RESOURCES:
        if r.key == resource and not r.storage_plural and r.stored:
            return r
    raise KeyError(f"no stored resource {resource!r}")


def controller_ref(owner: dict) -> dict:
    """The ownerReference a controller puts on what it makes (controller and blockOwnerDeletion true)."""
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def controller_of(obj: dict) -> dict | None:
    """The ownerReference with controller: true, or None (metav1.GetControllerOf)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def owned_by(obj: dict, owner: dict) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref.get("uid") == owner["metadata"].get("uid")


def selector_of(obj: dict) -> LabelSelector | None:
    """spec.selector (a metav1.LabelSelector) as a LabelSelector; None when missing (matches nothing)."""
    sel = (obj.get("spec") or {}).get("selector")
    if not isinstance(sel, dict):
        return None
    text = resources._format_selector(sel)
    return LabelSelector.parse(text) if text else LabelSelector()


def labels_of(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def being_deleted(obj: dict) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


# ---------------------------------------------------------------- informer

class _Bell:
    """A watch's event queue that also sets a threading.Event on every put."""

    def __init__(self, inner, bell: threading.Event):
        self.inner = inner
        self.bell = bell

    def put(self, item) -> None:
        self.inner.put(item)
        self.bell.set()

    def get(self, block: bool = True, timeout: float | None = None):
        return self.inner.get(block, timeout)

    def get_nowait(self):
        return self.inner.get_nowait()

    def empty(self) -> bool:
        return self.inner.empty()


class Informer:
    """A resource's objects as a cache kept by list + watch over the in-process Store.

    `cache` maps "namespace/name" to the object (a dict; treat as read-only,
    deep-copy before changing). `add_index(name, fn)` keeps, for each value
    fn(obj) returns, the keys of the objects that have it (`by_index`).
    Handlers `fn(event_type, old, new)` run for every change, in the thread that
    calls `pump`, after the cache has it and outside the informer's lock (they may
    read other informers)."""

    def __init__(self, store: Store, resource: str, log: Log):
        self.store = store
        self.resource = resource
        self.log = log
        self.cache: dict[str, dict] = {}
        self.rv = 0
        self.watcher: storage.Watcher | None = None
        self.handlers: list[Callable[[str, dict | None, dict | None], None]] = []
        self.index_fns: dict[str, Callable[[dict], Iterable[str]]] = {}
        self.indexes: dict[str, dict[str, set[str]]] = {}
        self.lock = threading.RLock()
        self.bell = threading.Event()
        self._outbox: list[tuple[str, dict | None, dict | None]] = []
        self.relists = 0

    def add_index(self, name: str, fn: Callable[[dict], Iterable[str]]) -> None:
        with self.lock:
            self.index_fns[name] = fn
            self.indexes[name] = collections.defaultdict(set)
            for k, obj in self.cache.items():
                for v in fn(obj):
                    self.indexes[name][v].add(k)

    def by_index(self, name: str, value: str) -> list[dict]:
        """The cached objects whose index `name` has `value`, ordered by key."""
        with self.lock:
            keys = sorted(self.indexes[name].get(value, ()))
            return [self.cache[k] for k in keys if k in self.cache]

    def count(self, name: str, value: str) -> int:
        """How many cached objects have `value` in index `name`."""
        with self.lock:
            return len(self.indexes[name].get(value, ()))

    def get(self, key: str) -> dict | None:
        with self.lock:
            return self.cache.get(key)

    def list(self, namespace: str = "", selector: LabelSelector | None = None) -> list[dict]:
        """Cached objects (of `namespace` when given, matching `selector` when given), ordered by key."""
        with self.lock:
            out = []
            for k in sorted(self.cache):
                obj = self.cache[k]
                if namespace and (obj.get("metadata") or {}).get("namespace") != namespace:
                    continue
                if selector is not None and not selector.matches(labels_of(obj)):
                    continue
                out.append(obj)
            return out

    def _index(self, key: str, old: dict | None, new: dict | None) -> None:
        for name, fn in self.index_fns.items():
            idx = self.indexes[name]
            if old is not None:
                for v in fn(old):
                    idx[v].discard(key)
                    if not idx[v]:
                        del idx[v]
            if new is not None:
                for v in fn(new):
                    idx[v].add(key)

    def _deliver(self, etype: str, old: dict | None, new: dict | None) -> None:
        # queued under the lock, run by `pump` after releasing it: a handler may read other informers
        # (the garbage collector looks up owners everywhere), and holding two informer locks at once in
        # different orders in different threads would deadlock
        self._outbox.append((etype, old, new))

    def _run_handlers(self) -> None:
        with self.lock:
            outbox, self._outbox = self._outbox, []
        for etype, old, new in outbox:
            self._handle(etype, old, new)

    def _handle(self, etype: str, old: dict | None, new: dict | None) -> None:
        for h in self.handlers:
            try:
                h(etype, old, new)
            except Exception as e:  # noqa: BLE001 - one handler's bug must not stop the informer
                self.log(f"informer {self.resource}: handler failed: {type(e).__name__}: {e}")

    def _relist(self) -> None:
        """List, replace the cache, deliver the differences, and watch from the list's revision."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        texts, rv, _ = self.store.list(self.resource)
        fresh = {}
        for t in texts:
            obj = json.loads(t)
            fresh[obj_key(obj)] = obj
        old_cache, self.cache = self.cache, {}
        for name in self.indexes:
            self.indexes[name] = collections.defaultdict(set)
        for k, obj in fresh.items():
            self.cache[k] = obj
            self._index(k, None, obj)
        self.rv = rv
        self._watch(str(rv))
        self.relists += 1
        for k, obj in fresh.items():
            old = old_cache.get(k)
            if old is None:
                self._deliver("ADDED", None, obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._deliver("MODIFIED", old, obj)
        for k, old in old_cache.items():
            if k not in fresh:
                self._deliver("DELETED", old, None)

    def _watch(self, resource_version: str) -> None:
        w = self.store.watch(self.resource, resource_version=resource_version)
        # Ring the bell on every event the store queues for this watch, so the informer's thread can
        # wait for events without taking one out of the queue: only `pump`, under the lock, consumes,
        # which keeps the cache in revision order whichever thread pumps. Rung once now for what the
        # store queued before the bell was hung.
        w.events = _Bell(w.events, self.bell)
        self.bell.set()
        self.watcher = w

    def pump(self, timeout: float = 0.0) -> int:
        """Apply the watch's pending events to the cache and deliver them, after waiting up to `timeout`
        seconds for one. Returns the number of events handled. Lists first, and relists when the watch
        ended and the store answers 410 Gone for the revision the cache has."""
        if timeout > 0:
            self.bell.wait(timeout)
            self.bell.clear()
        w = self.watcher
        if w is not None and not w.closed and w.events.empty() and not self._outbox:
            return 0  # nothing queued: a completed write's event would be (the store queues it before returning)
        try:
            return self._consume()
        finally:
            self._run_handlers()

    def _consume(self) -> int:
        n = 0
        with self.lock:
            if self.watcher is None or self.watcher.closed:
                if self.rv == 0:
                    self._relist()
                else:
                    try:
                        self._watch(str(self.rv))
                    except ApiError as e:
                        if e.code != 410:
                            raise
                        self._relist()
            w = self.watcher
            while not w.events.empty():  # the only consumer is here, under the lock
                etype, body, rv = w.events.get_nowait()
                obj = json.loads(body)
                k = obj_key(obj)
                old = self.cache.get(k)
                self.rv = max(self.rv, rv)
                n += 1
                if etype == "DELETED":
                    self.cache.pop(k, None)
                    self._index(k, old, None)
                    self._deliver("DELETED", old or obj, None)
                else:
                    self.cache[k] = obj
                    self._index(k, old, obj)
                    self._deliver(etype, old, obj)
            return n

    def stop(self) -> None:
        with self.lock:
            if self.watcher is not None:
                self.watcher.stop()
                self.watcher = None


# ---------------------------------------------------------------- work queue

class WorkQueue:
    """client-go's rate-limited work queue: a key is queued once (dedup); a key added while
    it is being processed is queued again when `done`; `add_rate_limited` waits base*2^failures
    (capped) before the key is ready again; `forget` resets the failures."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, base_delay: float = 0.005,
                 max_delay: float = 1000.0, on_add: Callable[[], None] = lambda: None):
        self.clock = clock
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.on_add = on_add
        self.queue: collections.deque[str] = collections.deque()
        self.dirty: set[str] = set()
        self.processing: set[str] = set()
        self.waiting: list[tuple[float, int, str]] = []  # heap of (ready at, seq, key)
        self.failures: dict[str, int] = {}
        self._seq = 0
        self.lock = threading.Lock()

    def add(self, key: str) -> None:
        with self.lock:
            if key in self.dirty:
                return
            self.dirty.add(key)
            if key not in self.processing:
                self.queue.append(key)
        self.on_add()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            return self.add(key)
        with self.lock:
            self._seq += 1
            heapq.heappush(self.waiting, (self.clock() + delay, self._seq, key))
        self.on_add()

    def add_rate_limited(self, key: str) -> float:
        """Queue `key` again after its back-off; returns the delay."""
        with self.lock:
            n = self.failures.get(key, 0)
            self.failures[key] = n + 1
        delay = min(self.base_delay * (2 ** n), self.max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        with self.lock:
            self.failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self.failures.get(key, 0)

    def _promote(self) -> None:
        now = self.clock()
        while self.waiting and self.waiting[0][0] <= now:
            _, _, key = heapq.heappop(self.waiting)
            if key not in self.dirty:
                self.dirty.add(key)
                if key not in self.processing:
                    self.queue.append(key)

    def get(self) -> str | None:
        """The next ready key (now being processed), or None."""
        with self.lock:
            self._promote()
            if not self.queue:
                return None
            key = self.queue.popleft()
            self.processing.add(key)
            self.dirty.discard(key)
            return key

    def done(self, key: str) -> None:
        with self.lock:
            self.processing.discard(key)
            if key in self.dirty:
                self.queue.append(key)

    def next_delay(self) -> float | None:
        """Seconds until a waiting key is ready (0 when one is ready now), None when nothing waits."""
        with self.lock:
            if self.queue:
                return 0.0
            if not self.waiting:
                return None
            return max(0.0, self.waiting[0][0] - self.clock())

    def __len__(self) -> int:
        with self.lock:
            return len(self.queue) + len(self.waiting)


# ---------------------------------------------------------------- client

class Client:
    """Writes as an API client makes them, through the Store's public methods, with the kind's
    defaults (resources.prepare_create / prepare_update) and its field-selector values."""

    def __init__(self, store: Store, manager_name: str = "kube-controller-manager"):
        self.store = store
        self.manager_name = manager_name
        # the last events written, by what makes two events the same (client-go's EventCorrelator key)
        self._recent_events: collections.OrderedDict[tuple, tuple[str, str]] = collections.OrderedDict()
        self._events_lock = threading.Lock()

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        return self.store.get(resource, namespace, name)

    def create(self, resource: str, obj: dict) -> dict:
        """POST: defaults and create-time fields, then store (409 AlreadyExists when the name is taken)."""
        info = info_for(resource)
        obj = jcopy(obj)
        obj.setdefault("kind", info.kind)
        obj.setdefault("apiVersion", info.api_version)
        resources.prepare_create(info, obj)
        namespace = (obj.get("metadata") or {}).get("namespace", "")
        # NamespaceLifecycle, as the API applies it to every client, checked under the store's lock
        # so that a namespace being finalized cannot get an object after its last look at it.
        with self.store._lock:
            if info.namespaced and namespace:
                found = self.store.get("namespaces", "", namespace)
                if found is None:
                    raise errors.not_found("namespaces", namespace, "")
                if (found.get("metadata") or {}).get("deletionTimestamp") and info.kind != "Event":
                    raise errors.forbidden(info.plural, (obj.get("metadata") or {}).get("name", ""),
                                           f"unable to create new content in namespace {namespace} because it is "
                                           "being terminated", info.group)  # fmt: skip
            return self.store.create(resource, obj, info.field_values)

    def update(self, resource: str, obj: dict) -> dict:
        """PUT of the main resource: spec and metadata; the stored status is kept, generation bumped on a
        spec change. 409 Conflict when obj's resourceVersion is not the stored one."""
        info = info_for(resource)
        new = jcopy(obj)
        meta = new.get("metadata") or {}

        def fn(current):
            if current is None:
                raise errors.not_found(info.plural, meta.get("name", ""), info.group)
            storage.check_version(resource, current, new)
            storage.keep_identity(current, new)
            resources.prepare_update(info, new, current)
            if new == current:
                return None
            return new

        _etype, out = self.store.write(resource, meta.get("namespace", ""), meta.get("name", ""), fn,
                                      info.field_values)
        return out

    def update_status(self, resource: str, obj: dict) -> dict:
        """PUT of /status: only status changes; 409 Conflict on a stale resourceVersion."""
        info = info_for(resource)
        meta = obj.get("metadata") or {}

        def fn(current):
            if current is None:
                raise errors.not_found(info.plural, meta.get("name", ""), info.group)
            storage.check_version(resource, current, obj)
            if current.get("status") == obj.get("status"):
                return None
            new = jcopy(current)
            new["status"] = jcopy(obj.get("status") or {})
            return new

        _, out = self.store.write(resource, meta.get("namespace", ""), meta.get("name", ""), fn, info.field_values)
        return out

    def write_status(self, resource: str, obj: dict, status: dict, omit_zero: tuple[str, ...] = ()) -> None:
        """A controller's computed status for `obj`: the counts in `omit_zero` left out when 0 (Go's
        omitempty), the stored conditions kept, and written only when it differs from the stored one."""
        for key in omit_zero:
            if not status.get(key):
                status.pop(key, None)
        old = obj.get("status") or {}
        if "conditions" in old:
            status["conditions"] = old["conditions"]
        if status == old:
            return

        def change(current: dict) -> dict:
            current["status"] = status
            return current

        meta = obj["metadata"]
        self.mutate(resource, meta.get("namespace", ""), meta["name"], change, status=True)

    def mutate(self, resource: str, namespace: str, name: str, change: Callable[[dict], dict | None],
               status: bool = False, attempts: int = 5) -> dict | None:
        """Get, `change(copy)` (returns the object to write, or None for no write), update; retried on 409
        (retry.RetryOnConflict). None when the object is gone."""
        for attempt in range(attempts):
            current = self.store.get(resource, namespace, name)
            if current is None:
                return None
            new = change(jcopy(current))
            if new is None:
                return current
            try:
                return self.update_status(resource, new) if status else self.update(resource, new)
            except ApiError as e:
                if e.code == 404:
                    return None  # deleted meanwhile: nothing left to change
                if e.code != 409 or attempt == attempts - 1:
                    raise
        return None

    def delete(self, resource: str, namespace: str, name: str, uid: str = "",
               finalizers: Iterable[str] = ()) -> bool:
        """DELETE (with a uid precondition when given; `finalizers` added as the server adds a propagation
        policy's). False when it was already gone or is another object now."""
        info = info_for(resource)
        extra = list(finalizers)

        def fn(current):
            if current is None:
                return None
            meta = current["metadata"]
            if uid and meta.get("uid") != uid:
                return None
            if extra and not meta.get("deletionTimestamp"):
                meta["finalizers"] = list(meta.get("finalizers") or []) + [
                    f for f in extra if f not in (meta.get("finalizers") or [])]
            return storage.mark_deleted(current)

        etype, _out = self.store.write(resource, namespace, name, fn, info.field_values)
        return bool(etype)

    def event(self, involved: dict, etype: str, reason: str, message: str, component: str) -> None:
        """A core/v1 Event about `involved`, as client-go's EventRecorder writes one; the same event again
        (same object, type, reason, message, source) raises the first one's count and lastTimestamp."""
        meta = involved.get("metadata") or {}
        now = storage.now_rfc3339()
        ns = meta.get("namespace") or "default"
        same = (meta.get("uid", ""), meta.get("name", ""), ns, etype, reason, message, component)
        with self._events_lock:
            seen = self._recent_events.get(same)
        if seen is not None:
            def again(ev: dict):
                ev["count"] = (ev.get("count") or 1) + 1
                ev["lastTimestamp"] = now
                return ev
            try:
                if self.mutate("events", seen[0], seen[1], again) is not None:
                    return
            except ApiError:
                pass  # write a new one

        ev = {"kind": "Event", "apiVersion": "v1",
              "metadata": {"name": f"{meta.get('name', '')}.{uuid.uuid4().hex[:16]}", "namespace": ns},
              "involvedObject": {"kind": involved.get("kind", ""), "namespace": meta.get("namespace", ""),
                                 "name": meta.get("name", ""), "uid": meta.get("uid", ""),
                                 "apiVersion": involved.get("apiVersion", ""),
                                 "resourceVersion": meta.get("resourceVersion", "")},
              "reason": reason, "message": message, "source": {"component": component},
              "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": etype,
              "eventTime": None, "reportingComponent": component, "reportingInstance": ""}
        if not ev["involvedObject"]["namespace"]:
            del ev["involvedObject"]["namespace"]
        try:
            self.create("events", ev)
        except ApiError:
            return  # events are best effort, as the recorder's
        with self._events_lock:
            self._recent_events[same] = (ns, ev["metadata"]["name"])
            self._recent_events.move_to_end(same)
            while len(self._recent_events) > 4096:  # the correlator's LRU size
                self._recent_events.popitem(last=False)


# ---------------------------------------------------------------- controller

@dataclass
class Watch:
    """A resource a controller watches and how its objects map to the controller's queue keys."""

    resource: str
    mapper: Mapper | None = None
    # instead of a mapper: (event type, old or None, new or None) -> keys, for a controller that
    # maps by the kind of change (the garbage collector enqueues dependents only of deleted owners)
    events: Callable[[str, dict | None, dict | None], Iterable[str]] | None = None


class Controller:
    """Base of every control loop (see the module docstring for the contract)."""

    name = "controller"

    def __init__(self):
        self.manager: ControllerManager | None = None
        self.queue: WorkQueue | None = None
        self.client: Client | None = None

    def watches(self) -> list[Watch]:
        raise NotImplementedError

    def setup(self) -> None:
        """Called once the informers exist (add indexes here)."""

    def reconcile(self, key: str) -> float | None:
        raise NotImplementedError

    def informer(self, resource: str) -> Informer:
        return self.manager.informer(resource)

    def now(self) -> float:
        """Wall-clock seconds (injectable through the manager, for timestamps compared with objects')."""
        return self.manager.wall()

    def log(self, message: str) -> None:
        self.manager.log(f"{self.name}: {message}")


def mapper_self(obj: dict) -> list[str]:
    return [obj_key(obj)]


def mapper_owner(kind: str) -> Mapper:
    """Map an object to its controller's key when that controller is of `kind`."""
    def fn(obj: dict) -> list[str]:
        ref = controller_of(obj)
        if ref is None or ref.get("kind") != kind:
            return []
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        return [f"{ns}/{ref['name']}" if ns else ref["name"]]
    return fn


class ControllerManager:
    """Runs controllers over shared informers: `start()`/`stop()` with threads, `run_until_idle()` in tests."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, log: Log | None = None):
        self.store = store
        self.clock = clock
        self.wall = wall
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.client = Client(store)
        self.controllers: list[Controller] = []
        self.informers: dict[str, Informer] = {}
        self.runners = []
        self.threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._started = False

    def informer(self, resource: str) -> Informer:
        inf = self.informers.get(resource)
        if inf is None:
            inf = Informer(self.store, resource, self.log)
            self.informers[resource] = inf
        return inf

    def add(self, controller: Controller) -> Controller:
        """Register a controller (before `start`); its informers are made or shared."""
        if self._started:
            raise RuntimeError(f"add {controller.name} before ControllerManager.start(): its informers need threads")
        controller.manager = self
        controller.client = self.client
        controller.queue = WorkQueue(self.clock)
        for w in controller.watches():
            inf = self.informer(w.resource)
            if w.events is not None:
                inf.handlers.append(self._event_handler(controller, w.events))
            else:
                inf.handlers.append(self._handler(controller, w.mapper or mapper_self))
        controller.setup()
        self.controllers.append(controller)
        return controller

    @staticmethod
    def _handler(controller: Controller, mapper: Mapper):
        def handle(etype: str, old: dict | None, new: dict | None) -> None:
            keys: list[str] = []
            for obj in (old, new):
                if obj is not None:
                    for k in mapper(obj):
                        if k not in keys:
                            keys.append(k)
            for k in keys:
                controller.queue.add(k)
        return handle

    @staticmethod
    def _event_handler(controller: Controller, fn):
        def handle(etype: str, old: dict | None, new: dict | None) -> None:
            for k in fn(etype, old, new):
                controller.queue.add(k)
        return handle

    def sync_informers(self) -> int:
        """Bring every informer up to the store's revision (events delivered); the number handled."""
        return sum(inf.pump(0) for inf in list(self.informers.values()))

    def process_one(self, controller: Controller) -> bool:
        """Reconcile the controller's next ready key; False when none is ready."""
        key = controller.queue.get()
        if key is None:
            return False
        self.sync_informers()
        try:
            after = controller.reconcile(key)
        except Exception as e:  # noqa: BLE001 - a failed reconcile is retried with back-off
            delay = controller.queue.add_rate_limited(key)
            # a conflict is the normal outcome of two writers racing; say so only when it keeps happening
            if not (isinstance(e, ApiError) and e.code == 409 and controller.queue.num_requeues(key) <= 3):
                self.log(f"{controller.name}: syncing {key!r} failed: {type(e).__name__}: {e}; again in {delay:g}s")
        else:
            controller.queue.forget(key)
            if isinstance(after, (int, float)) and not isinstance(after, bool) and after >= 0:
                controller.queue.add_after(key, after)
        finally:
            controller.queue.done(key)
        return True

    def run_until_idle(self, max_steps: int = 100_000) -> int:
        """Deliver events and reconcile every ready key, in this thread, until nothing is ready.
        Returns the number of reconciles; raises RuntimeError when `max_steps` is reached (a loop
        that never settles)."""
        steps = 0
        while True:
            self.sync_informers()
            progressed = False
            for c in self.controllers:
                while self.process_one(c):
                    steps += 1
                    progressed = True
                    if steps >= max_steps:
                        raise RuntimeError(f"controllers did not settle after {steps} reconciles")
                    self.sync_informers()
            if not progressed and self.sync_informers() == 0 and not any(
                    c.queue.next_delay() == 0 for c in self.controllers):
                return steps

    # ------------------------------------------------------------ threads

    def start(self) -> None:
        """Watch every informer in a daemon thread and run each controller's worker (a Runner) in another."""
        from emu.node.agent.runner import Runner

        if self._started:
            return
        self._started = True
        self._stop.clear()
        self.sync_informers()
        for name, inf in self.informers.items():
            t = threading.Thread(target=self._watch_loop, args=(inf,), name=f"informer-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        for c in self.controllers:
            runner = Runner(c.name, self._worker(c), self.log, clock=self.clock, retry_interval=1.0)
            c.queue.on_add = runner.request
            self.runners.append(runner)
            t = threading.Thread(target=runner.loop, args=(self._stop.is_set,), name=c.name, daemon=True)
            t.start()
            runner.thread = t
            self.threads.append(t)

    def _worker(self, c: Controller):
        def work(requested: bool) -> float | None:
            while not self._stop.is_set() and self.process_one(c):
                pass
            return c.queue.next_delay()
        return work

    def _watch_loop(self, inf: Informer) -> None:
        while not self._stop.is_set():
            try:
                inf.pump(5.0)  # the bell wakes it at once; the timeout only notices a watch the store closed
            except Exception as e:  # noqa: BLE001 - the store closing, a relist failing: try again
                if self._stop.is_set():
                    return
                self.log(f"informer {inf.resource}: {type(e).__name__}: {e}")
                time.sleep(1.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads (each finishes its current reconcile) and the watches."""
        self._stop.set()
        for r in self.runners:
            r.request()
        for inf in self.informers.values():
            inf.bell.set()
        for t in self.threads:
            t.join(timeout)
        self.threads.clear()
        self.runners.clear()
        for inf in self.informers.values():
            inf.stop()
        self._started = False
