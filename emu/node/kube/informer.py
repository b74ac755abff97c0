"""An informer: client-go's reflector and cache, for the node agent.

`Informer(client, path, handlers...)` keeps a local copy of one collection
(Services, EndpointSlices, this node's Pods) and tells handlers what changed:
- it lists the collection (pages of `page_size` with `limit`/`continue`),
  then watches from the list's resourceVersion;
- when a watch ends (the server's timeoutSeconds) or its connection breaks
  (the API server restarted), it watches again from the last resourceVersion
  it saw, BOOKMARK events included, so nothing is missed and nothing is
  listed again;
- on 410 Gone (Expired: that revision left the server's window, or the server
  restarted and its window starts later) it lists again and reconciles the
  cache with the list: handlers get on_add for what appeared, on_update for
  what changed, on_delete for what is gone while it was not looking;
- an event for an object the cache already holds at that resourceVersion or
  later is dropped, so the handlers see each change once, also when a list
  and the watch after it overlap (emu's API server serves `continue` pages
  from the current data, not from the first page's snapshot).
`catch_up(revision)` lists again at once when the informer has not seen
`revision` yet (a quiet collection's watch brings nothing past its last
change until a BOOKMARK, seconds later): afterwards the cache is at least as
new as that revision, which is how a caller learns that what it holds
reflects every write up to it (emu up's wait for programmed rules).
A watch silent for `idle_timeout` (no event, no BOOKMARK: a frozen server keeps
its connections open) is given up and watched again.
Reconnections back off from 0.2 s to 10 s, with jitter, as client-go's reflector
does, so an API server that is down is not hammered by every node at once.

Handlers run in the informer's thread, one at a time, in the order of the
changes (client-go runs each listener in its own goroutine; here the caller
keeps handlers short: record the change and wake its own sync job). The loop
is an emu.node.agent.runner.Runner, the agent's one loop runner.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable

from emu.node.agent.runner import Runner
from emu.node.kube.client import ApiError, Client

Handler = Callable[..., None]
MIN_BACKOFF = 0.2
MAX_BACKOFF = 10.0
WATCH_TIMEOUT = 300.0  # client-go picks 5 to 10 minutes at random; the server ends the watch then
# A watch that brings nothing, not even a BOOKMARK, for this long is taken for broken (a
# frozen or cut-off API server keeps the TCP connection open): emu's server sends a
# bookmark every 5 s to an idle watch that asks for them.
IDLE_TIMEOUT = 60.0


def key_of(obj: dict) -> str:
    """'namespace/name' (or 'name' for a cluster-scoped object), client-go's MetaNamespaceKeyFunc."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    # Interned: the cache and its users key their dicts by the same string, held once.
    return sys.intern(f"{namespace}/{meta.get('name', '')}" if namespace else meta.get("name", ""))


def _rv(obj: dict) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def strip_managed_fields(obj: dict) -> dict:
    """The default transform: an object without metadata.managedFields, which no
    node reads (client-go's TransformStripManagedFields; a third of a Service's size)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def _noop(*args) -> None:
    pass


class Informer:
    """A cache of one collection kept by list and watch, with change handlers.

    path: the collection's path (emu.node.kube.client.resource_path), e.g.
    '/apis/discovery.k8s.io/v1/endpointslices' or '/api/v1/pods'.
    label_selector, field_selector: as kubectl's -l and --field-selector (a
    kubelet watches its pods with field_selector='spec.nodeName=<node>').
    on_add(obj), on_update(old, new), on_delete(obj): run in the informer's thread.
    transform: applied to each object before it is cached and handed on."""

    def __init__(
        self,
        client: Client,
        path: str,
        on_add: Handler = _noop,
        on_update: Handler = _noop,
        on_delete: Handler = _noop,
        label_selector: str = "",
        field_selector: str = "",
        page_size: int = 500,
        watch_timeout: float = WATCH_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        transform: Callable[[dict], dict] | None = strip_managed_fields,
        log: Callable[[str], None] = _noop,
        name: str = "",
    ):
        self.client = client
        self.path = path
        self.on_add, self.on_update, self.on_delete = on_add, on_update, on_delete
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.idle_timeout = idle_timeout
        self.transform = transform or (lambda obj: obj)
        self.log = log
        self.name = name or path.rsplit("/", 1)[-1]
        self.cache: dict[str, dict] = {}
        self.lock = threading.Lock()  # guards cache for readers in other threads
        self.resource_version = ""  # the last revision seen ("" : list first)
        self.progress = threading.Condition()  # notified when resource_version moves on
        self.relist_wanted = False  # catch_up asked for a list at once
        self.synced = threading.Event()
        self.stopped = False
        self.backoff = 0.0
        self.watch = None  # the open Watch, so that stop() can end it
        # Counters (tests and benches read them).
        self.lists = 0
        self.watches = 0
        self.relists_after_gone = 0
        self.reconnects = 0
        self.events = 0  # watch events received (bookmarks included)
        # (A run is one watch: minutes long by design, not a stall for the agent's Watchdog.)
        self.runner = Runner(f"informer {self.name}", self._run, log, max_interval=None,
                             stall_after=watch_timeout + idle_timeout + client.timeout,
                             describe=lambda: f"the {self.name} informer")  # fmt: skip
        self.thread: threading.Thread | None = None

    # ---- reading the cache ---------------------------------------------------
    def get(self, key: str) -> dict | None:
        with self.lock:
            return self.cache.get(key)

    def list(self) -> list[dict]:
        with self.lock:
            return list(self.cache.values())

    def keys(self) -> list[str]:
        with self.lock:
            return sorted(self.cache)

    def revision(self) -> int:
        """The revision up to which every change of the collection has been handed to the handlers (0: none)."""
        try:
            return int(self.resource_version or 0)
        except ValueError:
            return 0

    def catch_up(self, revision: int, timeout: float) -> bool:
        """Whether the informer has seen `revision` (or later) within `timeout` seconds; when
        it has not, it lists again at once (a list is served at the server's newest revision)."""
        if self.revision() >= revision:
            return True
        self.relist_wanted = True
        watch = self.watch
        if watch is not None:
            watch.close()
        self.runner.request()
        with self.progress:
            return self.progress.wait_for(lambda: self.revision() >= revision, timeout)

    def _advance(self, resource_version: str) -> None:
        with self.progress:
            self.resource_version = resource_version
            self.progress.notify_all()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Whether the first list has been cached (client-go's HasSynced), waiting up to `timeout`."""
        return self.synced.wait(timeout)

    # ---- running -------------------------------------------------------------
    def start(self) -> Informer:
        """Run in a thread of its own (daemon) until stop()."""
        thread = threading.Thread(target=self.runner.loop, args=(lambda: self.stopped,),
                                  name=self.runner.name, daemon=True)  # fmt: skip
        thread.start()
        # Only a started thread is seen: a stop() from another thread meanwhile must not join
        # one not started yet (RuntimeError); the loop sees `stopped` and ends by itself.
        self.thread = thread
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop and its watch; waits up to `timeout` for the thread."""
        self.stopped = True
        watch = self.watch
        if watch is not None:
            watch.close()
        self.runner.request()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _run(self, requested: bool) -> float | None:
        """One turn: list when needed, then one watch until it ends. Returns when to run again."""
        if self.stopped:
            return None
        try:
            if not self.resource_version or self.relist_wanted:
                self.relist_wanted = False
                self._list()
            started, events = time.monotonic(), self.events
            self._watch()
            if self.relist_wanted:
                return 0.0  # closed by catch_up: list again at once
            if self.events == events and time.monotonic() - started < 1.0 and not self.stopped:
                # Ended at once with nothing in it (a server on its way down): as client-go's
                # reflector, back off as after an error rather than spin.
                return self._failed("the watch ended at once without an event")
        except ApiError as error:
            if error.gone:
                # Our revision left the server's window: list again at once (client-go's relist).
                self.log(f"{self.name}: {error.message}; listing again")
                self.resource_version = ""
                self.relists_after_gone += 1
                return 0.0
            return self._failed(f"{error}")
        except (OSError, ValueError) as error:  # unreachable, refused, reset, timed out, a broken stream
            return self._failed(f"{type(error).__name__}: {error}")
        finally:
            self.watch = None
        self.backoff = 0.0
        return 0.0  # the watch ended as planned (timeoutSeconds): watch again at once

    def _failed(self, why: str) -> float | None:
        if self.stopped:
            return None
        if self.relist_wanted and self.resource_version:
            return 0.0  # the watch was closed by catch_up, not lost
        self.reconnects += 1
        self.backoff = min(MAX_BACKOFF, max(MIN_BACKOFF, self.backoff * 2))
        wait = self.backoff * random.uniform(1.0, 1.5)
        self.log(f"{self.name}: {why}; again from resourceVersion {self.resource_version or '(a new list)'} "
                 f"in {wait:.1f}s")  # fmt: skip
        return wait

    def _list(self) -> None:
        """A full list, page by page, then the cache made equal to it."""
        items: dict[str, dict] = {}
        continue_token = ""
        while True:
            try:
                page = self.client.list(self.path, self.label_selector, self.field_selector, self.page_size,
                                        continue_token)  # fmt: skip
            except ApiError as error:
                if error.gone and continue_token:
                    # The continue token expired between pages: the whole list once more.
                    items, continue_token = {}, ""
                    continue
                raise
            for obj in page.get("items") or []:
                obj = self.transform(obj)
                items[key_of(obj)] = obj
            meta = page.get("metadata") or {}
            if not continue_token:
                list_rv = meta.get("resourceVersion", "")  # the first page's: the list's revision
            continue_token = meta.get("continue") or ""
            if not continue_token:
                break
        self.lists += 1
        self._replace(items)
        self._advance(list_rv)
        self.synced.set()

    def _replace(self, items: dict[str, dict]) -> None:
        """Reconcile the cache with a fresh list, telling the handlers what differs."""
        with self.lock:
            old = self.cache
            self.cache = dict(old)
        for key in [k for k in old if k not in items]:
            with self.lock:
                gone = self.cache.pop(key)
            self._call(self.on_delete, gone)
        for key, obj in items.items():
            before = old.get(key)
            if before is None:
                with self.lock:
                    self.cache[key] = obj
                self._call(self.on_add, obj)
            elif _rv(obj) > _rv(before):
                with self.lock:
                    self.cache[key] = obj
                self._call(self.on_update, before, obj)

    def _watch(self) -> None:
        self.watches += 1
        watch = self.client.watch(self.path, self.resource_version, self.watch_timeout, self.label_selector,
                                  self.field_selector, bookmarks=True, idle_timeout=self.idle_timeout)  # fmt: skip
        self.watch = watch
        if self.stopped or self.relist_wanted:  # (catch_up may have looked for a watch to close just before)
            watch.close()
            return
        self.backoff = 0.0  # connected: a later failure starts backing off from the start
        for kind, obj in watch:
            self.events += 1
            rv = (obj.get("metadata") or {}).get("resourceVersion") or ""
            if kind == "BOOKMARK":
                if rv:
                    self._advance(rv)
                continue
            self._event(kind, self.transform(obj))
            if rv:
                self._advance(rv)

    def _event(self, kind: str, obj: dict) -> None:
        key = key_of(obj)
        before = self.cache.get(key)
        if kind == "DELETED":
            if before is None or _rv(before) > _rv(obj):
                return  # never had it, or it came back later than this deletion (a relist saw it)
            with self.lock:
                self.cache.pop(key, None)
            self._call(self.on_delete, obj)
            return
        if kind not in ("ADDED", "MODIFIED"):
            self.log(f"{self.name}: unknown watch event type {kind!r}, ignored")
            return
        if before is None:
            with self.lock:
                self.cache[key] = obj
            self._call(self.on_add, obj)
        elif _rv(obj) > _rv(before):
            with self.lock:
                self.cache[key] = obj
            self._call(self.on_update, before, obj)
        # else: the cache holds this version or a later one already (a list and a watch overlapping)

    def _call(self, handler: Handler, *args) -> None:
        try:
            handler(*args)
        except Exception as error:  # noqa: BLE001 - a handler's bug must not stop the informer
            self.log(f"{self.name}: a handler failed: {type(error).__name__}: {error}")


class InformerGroup:
    """Informers that feed one view together (kube-proxy's, the policy agent's, the
    ingress controller's): whether all have listed, the revision all have reached,
    and waiting until all have seen one. Subclasses set `informers`."""

    informers: list[Informer]

    def ready(self) -> bool:
        """Whether every informer has listed once: a view made before that lacks what
        the others have not listed yet (kube-proxy waits for its caches too)."""
        return bool(self.informers) and all(informer.synced.is_set() for informer in self.informers)

    def revision(self) -> int:
        return min((informer.revision() for informer in self.informers), default=0)

    def catch_up(self, revision: int, timeout: float) -> bool:
        """Whether every informer has seen `revision` within `timeout` (a quiet one lists again)."""
        deadline = time.monotonic() + timeout
        informers = list(self.informers)
        return bool(informers) and all(
            informer.catch_up(revision, max(0.0, deadline - time.monotonic())) for informer in informers
        )


def start_all(informers: list[Informer], timeout: float) -> bool:
    """Start the informers; whether all synced within `timeout` (client-go's WaitForCacheSync)."""
    for informer in informers:
        informer.start()
    deadline = time.monotonic() + timeout
    return all(informer.wait_synced(max(0.0, deadline - time.monotonic())) for informer in informers)
