"""The API server's store: SQLite (WAL), one transaction a write, one global
revision that is every object's resourceVersion, and a watch cache.

Rows keep each object's JSON text as served, so a list splices texts without
parsing them. Labels and field-selector values sit beside the text so that
selectors parse only those. The watch cache holds the last `window` events;
a watch from before the window gets 410 Gone, as after an etcd compaction."""

from __future__ import annotations

import base64
import binascii
import collections
import json
import queue
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from emu.apiserver import errors
from emu.apiserver.selectors import FieldSelector, LabelSelector

# generateName's suffix alphabet and length (k8s.io/apiserver's names.SimpleNameGenerator: no vowels, no 0/1/3).
NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
NAME_SUFFIX = 5
MAX_GENERATE_NAME = 63 - NAME_SUFFIX

# metadata keys in the order Kubernetes' JSON encoding writes them
_META_ORDER = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
               "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
               "ownerReferences", "finalizers", "managedFields")

DELETE = object()  # a write function's answer: remove the object


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def canonical(obj: dict) -> dict:
    """kind, apiVersion, metadata (its keys in Kubernetes' order), then the rest as given."""
    out = {}
    for k in ("kind", "apiVersion"):
        if k in obj:
            out[k] = obj[k]
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        # Go's omitempty: an emptied map or list is not written
        m = {k: meta[k] for k in _META_ORDER if k in meta and meta[k] not in ({}, [])}
        m.update({k: v for k, v in meta.items() if k not in m and k not in _META_ORDER})
        out["metadata"] = m
    for k, v in obj.items():
        if k not in out:
            out[k] = v
    return out


def dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _split_key(key: str) -> tuple[str, str]:
    plural, _, group = key.partition(".")
    return plural, group


@dataclass
class Event:
    """One change: ADDED, MODIFIED or DELETED, with the object's text at revision `rv`."""

    type: str
    rv: int
    key: str
    namespace: str
    name: str
    body: str
    labels: dict
    fields: dict
    prev_body: str = ""
    prev_labels: dict | None = None
    prev_fields: dict | None = None


class Watcher:
    """A watch on one resource: events arrive in revision order on `events` (type, body text, rv)."""

    def __init__(self, store: "Store", key: str, namespace: str, labels: LabelSelector, fields: FieldSelector):
        self.store = store
        self.key = key
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.sent_rv = 0  # the revision up to which every event has been queued
        self.closed = False

    def _match(self, labels: dict | None, fields: dict | None) -> bool:
        if labels is None:
            return False
        return self.labels.matches(labels) and self.fields.matches(fields)

    def offer(self, ev: Event) -> None:
        """Queue `ev` as this watcher sees it: an object leaving the selection is DELETED, entering is ADDED."""
        self.sent_rv = ev.rv
        if ev.key != self.key or (self.namespace and ev.namespace != self.namespace):
            return
        cur = self._match(ev.labels, ev.fields)
        if ev.type == "MODIFIED":
            prev = self._match(ev.prev_labels, ev.prev_fields)
            if cur and prev:
                self.events.put(("MODIFIED", ev.body, ev.rv))
            elif cur:
                self.events.put(("ADDED", ev.body, ev.rv))
            elif prev:
                old = json.loads(ev.prev_body)
                old.setdefault("metadata", {})["resourceVersion"] = str(ev.rv)
                self.events.put(("DELETED", dumps(old), ev.rv))
        elif cur:
            self.events.put((ev.type, ev.body, ev.rv))

    def next(self, timeout: float) -> tuple[str, str, int] | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def bookmark_rv(self) -> int | None:
        """The revision a BOOKMARK may carry now: every event up to it has been delivered (None if some are queued)."""
        with self.store._lock:
            if not self.events.empty():
                return None
            return self.store.revision

    def stop(self) -> None:
        self.closed = True
        self.store._unwatch(self)


class Store:
    """SQLite-backed object store with a global revision and a watch cache (docs/apiserver.md "Storage")."""

    def __init__(self, path: str, window: int = 10_000):
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,"
            " uid TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL, labels TEXT NOT NULL, fields TEXT NOT NULL,"
            " PRIMARY KEY (resource, namespace, name))")
        # Where `,"managedFields":[...]` sits in body (NULL: nowhere, or a row written before this was kept).
        if "managed_start" not in {row[1] for row in self._db.execute("PRAGMA table_info(objects)")}:
            self._db.execute("ALTER TABLE objects ADD COLUMN managed_start INTEGER")
            self._db.execute("ALTER TABLE objects ADD COLUMN managed_end INTEGER")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        self.revision = int(row[0]) if row else 1
        if not row:
            self._db.execute("INSERT INTO meta VALUES ('revision', ?)", (str(self.revision),))
        self._cache: collections.deque[Event] = collections.deque(maxlen=window)
        self.window_start = self.revision  # every event after this revision is in the cache
        self._watchers: set[Watcher] = set()

    def close(self) -> None:
        with self._lock:
            for w in list(self._watchers):
                w.closed = True
            self._watchers.clear()
            self._db.close()

    # ------------------------------------------------------------ reads

    def get_text(self, key: str, namespace: str, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM objects WHERE resource=? AND namespace=? AND name=?",
                                   (key, namespace, name)).fetchone()
        return row[0] if row else None

    def get(self, key: str, namespace: str, name: str) -> dict | None:
        """The stored object, or None."""
        text = self.get_text(key, namespace, name)
        return json.loads(text) if text is not None else None

    def list(self, key: str, namespace: str = "", labels: LabelSelector | None = None,
             fields: FieldSelector | None = None, limit: int = 0,
             continue_token: str = "") -> tuple[list[str], int, str]:
        """(object texts ordered by namespace and name, the list's revision, the next page's continue token or "")."""
        return self._list(key, namespace, labels, fields, limit, continue_token, False)

    def list_split(self, key: str, namespace: str = "", labels: LabelSelector | None = None,
                   fields: FieldSelector | None = None, limit: int = 0,
                   continue_token: str = "") -> tuple[list[tuple[dict, str | None]], int, str]:
        """As list, each object parsed without its metadata.managedFields, beside their JSON text
        (None when it has none): for whoever serves the object without reading its managedFields
        (the Table form), half the parsing of a pod."""
        rows, rv, token = self._list(key, namespace, labels, fields, limit, continue_token, True)
        return [split_managed(*row) for row in rows], rv, token

    def _list(self, key: str, namespace: str, labels: LabelSelector | None, fields: FieldSelector | None,
              limit: int, continue_token: str, spans: bool) -> tuple[list, int, str]:
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        start: tuple[str, str] | None = None
        with self._lock:
            rv = self.revision
            if continue_token:
                rv, start = self._decode_continue(continue_token)
            sql = ("SELECT namespace, name, body, labels, fields, managed_start, managed_end FROM objects"
                   " WHERE resource=?")
            args: list = [key]
            if namespace:
                sql += " AND namespace=?"
                args.append(namespace)
            if start is not None:
                sql += " AND (namespace, name) > (?, ?)"
                args += list(start)
            sql += " ORDER BY namespace, name"
            cur = self._db.execute(sql, args)
            out: list[str] = []
            last: tuple[str, str] | None = None
            more = False
            rows = cur
            if continue_token and rv < self.revision:
                rows = self._rows_at(rv, key, namespace, start, cur)
            for ns, name, body, lab, fld, managed_start, managed_end in rows:
                if not labels.empty() and not labels.matches(json.loads(lab) if isinstance(lab, str) else lab):
                    continue
                if not fields.empty() and not fields.matches(json.loads(fld) if isinstance(fld, str) else fld):
                    continue
                if limit and len(out) >= limit:
                    more = True
                    break
                out.append((body, managed_start, managed_end) if spans else body)
                last = (ns, name)
            cur.close()
        token = self._encode_continue(rv, last) if more and last else ""
        return out, rv, token

    def _rows_at(self, rv: int, key: str, namespace: str, start: tuple[str, str], rows):
        """The rows after `start` as they were at revision `rv` (a continue page is the first
        page's snapshot, as etcd's read at the list's revision makes it): the current rows,
        with each object changed since as the first change after `rv` found it (its previous
        text; none for one added since). Every event after `rv` is in the cache (the continue
        token was checked against the window)."""
        then: dict[tuple[str, str], tuple | None] = {}
        for ev in self._cache:
            where = (ev.namespace, ev.name)
            if ev.rv <= rv or ev.key != key or (namespace and ev.namespace != namespace) or where <= start:
                continue
            if where not in then:
                then[where] = None if ev.type == "ADDED" else (
                    *where, ev.prev_body, ev.prev_labels or {}, ev.prev_fields or {}, None, None)
        restored = sorted(row for row in then.values() if row is not None)
        index = 0
        for row in rows:
            while index < len(restored) and restored[index][:2] < row[:2]:
                yield restored[index]
                index += 1
            if (row[0], row[1]) not in then:
                yield row
        yield from restored[index:]

    def list_objects(self, key: str, namespace: str = "") -> list[dict]:
        """Every object of a resource, parsed (for the server's own bookkeeping)."""
        texts, _, _ = self.list(key, namespace)
        return [json.loads(t) for t in texts]

    def namespaces_in_use(self, namespace: str) -> list[tuple[str, str]]:
        """(resource, name) of every object stored in `namespace`."""
        with self._lock:
            return self._db.execute("SELECT resource, name FROM objects WHERE namespace=? ORDER BY resource, name",
                                    (namespace,)).fetchall()

    @staticmethod
    def _encode_continue(rv: int, last: tuple[str, str]) -> str:
        raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(last)}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def _decode_continue(self, token: str) -> tuple[int, tuple[str, str]]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
            rv, start = int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
            if data.get("v") != "meta.k8s.io/v1":
                raise ValueError("unknown version")
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as e:
            raise errors.bad_request(f"continue key is not valid: {e}") from None
        if rv < self.window_start:
            raise errors.gone("The provided continue parameter is too old to display a consistent list result. "
                              "You can start a new list without the continue parameter.")
        return rv, start

    # ------------------------------------------------------------ writes

    def write(self, key: str, namespace: str, name: str, fn: Callable[[dict | None], object],
              fields_of: Callable[[dict], dict], dry_run: bool = False) -> tuple[str, dict | None]:
        """Run `fn(current object or None)` and store what it returns, in one transaction.

        fn returns the new object, DELETE to remove the current one, or None to change
        nothing; it may raise ApiError. A new object with a deletionTimestamp and no
        finalizers is removed instead. Returns (event type or "", the object as
        written or removed, with its new resourceVersion)."""
        with self._lock:
            text = self.get_text(key, namespace, name)
            current = json.loads(text) if text is not None else None
            new = fn(json.loads(text) if text is not None else None)
            if new is None:
                return "", current
            if new is not DELETE:
                meta = new.get("metadata") or {}
                if meta.get("deletionTimestamp") and not finalizers(new) and current is not None \
                        and not graceful_pod(new):
                    new = DELETE
            if new is DELETE:
                if current is None:
                    return "", None
                obj = current
                etype = "DELETED"
            else:
                obj = new
                etype = "MODIFIED" if current is not None else "ADDED"
            rv = self.revision + 1
            obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
            obj = canonical(obj)
            if dry_run:
                return etype, obj
            body = dumps(obj)
            labels = (obj.get("metadata") or {}).get("labels") or {}
            flds = fields_of(obj)
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("UPDATE meta SET value=? WHERE key='revision'", (str(rv),))
                if etype == "DELETED":
                    db.execute("DELETE FROM objects WHERE resource=? AND namespace=? AND name=?",
                               (key, namespace, name))
                else:
                    db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)",
                               (key, namespace, name, obj["metadata"].get("uid", ""), rv, body,
                                dumps(labels), dumps(flds), *managed_span(body, obj)))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.revision = rv
            ev = Event(etype, rv, key, namespace, name, body, labels, flds)
            if etype in ("MODIFIED", "DELETED") and current is not None:  # (a continue page's snapshot needs both)
                ev.prev_body = text or ""
                ev.prev_labels = (current.get("metadata") or {}).get("labels") or {}
                ev.prev_fields = fields_of(current)
            self._publish(ev)
            return etype, obj

    def _publish(self, ev: Event) -> None:
        if len(self._cache) == self._cache.maxlen:
            self.window_start = self._cache[0].rv
        self._cache.append(ev)
        for w in list(self._watchers):
            w.offer(ev)

    def create(self, key: str, obj: dict, fields_of: Callable[[dict], dict] = lambda o: {},
               dry_run: bool = False) -> dict:
        """Store a new object: uid, creationTimestamp, a generated name for generateName; 409 if it exists."""
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace", "")
        generated = not meta.get("name") and meta.get("generateName")
        plural, group = _split_key(key)
        for _ in range(8):
            if generated:
                meta["name"] = meta["generateName"][:MAX_GENERATE_NAME] + "".join(
                    random.choice(NAME_CHARS) for _ in range(NAME_SUFFIX))
            name = meta["name"]

            def fn(current):
                if current is not None:
                    raise errors.already_exists(plural, name, group)
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = now_rfc3339()
                meta.pop("resourceVersion", None)
                return obj

            try:
                return self.write(key, namespace, name, fn, fields_of, dry_run)[1]
            except errors.ApiError as e:
                if not generated or e.reason != "AlreadyExists":
                    raise
        raise errors.ApiError(409, "AlreadyExists", f'{key} "{meta["name"]}" already exists', None)

    def update(self, key: str, obj: dict, fields_of: Callable[[dict], dict] = lambda o: {},
               dry_run: bool = False) -> dict:
        """Replace a stored object; its metadata.resourceVersion, when given, must be the stored one (else 409)."""
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        plural, group = _split_key(key)

        def fn(current):
            if current is None:
                raise errors.not_found(plural, name, group)
            check_version(key, current, obj)
            keep_identity(current, obj)
            return obj

        return self.write(key, namespace, name, fn, fields_of, dry_run)[1]

    def delete(self, key: str, namespace: str, name: str, fields_of: Callable[[dict], dict] = lambda o: {},
               dry_run: bool = False) -> tuple[bool, dict]:
        """Delete an object: with finalizers it is only marked (deletionTimestamp). (removed?, object)."""
        plural, group = _split_key(key)

        def fn(current):
            if current is None:
                raise errors.not_found(plural, name, group)
            return mark_deleted(current)

        etype, obj = self.write(key, namespace, name, fn, fields_of, dry_run)
        return etype == "DELETED" or (dry_run and obj is not None and not (obj["metadata"].get("finalizers"))), obj

    # ------------------------------------------------------------ watch

    def watch(self, key: str, namespace: str = "", labels: LabelSelector | None = None,
              fields: FieldSelector | None = None, resource_version: str = "") -> Watcher:
        """A watcher that gets every change after `resource_version`; with "" or "0", first an ADDED
        for every current object. 410 Gone when the revision is older than the cache's window."""
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        w = Watcher(self, key, namespace, labels, fields)
        with self._lock:
            if resource_version in ("", "0"):
                texts, rv, _ = self.list(key, namespace, labels, fields)
                for t in texts:
                    w.events.put(("ADDED", t, rv))
                w.sent_rv = rv
            else:
                try:
                    since = int(resource_version)
                except ValueError:
                    raise errors.bad_request(f'invalid resource version: "{resource_version}"') from None
                if since < self.window_start:
                    raise errors.gone(f"too old resource version: {since} ({self.window_start})")
                w.sent_rv = since
                backlog = []
                for ev in reversed(self._cache):
                    if ev.rv <= since:
                        break
                    backlog.append(ev)
                for ev in reversed(backlog):
                    w.offer(ev)
                w.sent_rv = self.revision
            self._watchers.add(w)
        return w

    def _unwatch(self, w: Watcher) -> None:
        with self._lock:
            self._watchers.discard(w)

    def watcher_count(self) -> int:
        with self._lock:
            return len(self._watchers)


MANAGED_KEY = ',"managedFields":'


def managed_span(body: str, obj: dict) -> tuple[int | None, int | None]:
    """Where `,"managedFields":[...]` of obj's metadata is in body (dumps(obj)), or (None, None)."""
    managed = (obj.get("metadata") or {}).get("managedFields")
    if not managed:
        return None, None
    piece = MANAGED_KEY + dumps(managed)
    # The first such text is metadata's: what comes before it in a canonical object
    # (kind, apiVersion, metadata's name ... finalizers) holds no key of that name.
    start = body.find(piece)
    return (start, start + len(piece)) if start > 0 else (None, None)


def split_managed(body: str, start: int | None, end: int | None) -> tuple[dict, str | None]:
    """The object parsed without metadata.managedFields, and their JSON text (None when it has none)."""
    if start is None or end is None:
        obj = json.loads(body)
        managed = (obj.get("metadata") or {}).pop("managedFields", None)
        return obj, dumps(managed) if managed is not None else None
    return json.loads(body[:start] + body[end:]), body[start + len(MANAGED_KEY):end]


def finalizers(obj: dict) -> list:
    """What holds an object being deleted: metadata.finalizers, and a Namespace's spec.finalizers."""
    out = list((obj.get("metadata") or {}).get("finalizers") or [])
    if obj.get("kind") == "Namespace" and obj.get("apiVersion", "v1") == "v1":
        out += (obj.get("spec") or {}).get("finalizers") or []
    return out


def check_version(key: str, current: dict, new: dict) -> None:
    """409 Conflict when `new` names a resourceVersion other than the stored one."""
    want = (new.get("metadata") or {}).get("resourceVersion")
    if want and want != (current.get("metadata") or {}).get("resourceVersion"):
        plural, group = _split_key(key)
        raise errors.conflict(plural, (current.get("metadata") or {}).get("name", ""), group)


def keep_identity(current: dict, new: dict) -> None:
    """What an update may not change: uid, creationTimestamp, deletion marks (copied from the stored object)."""
    meta = new.setdefault("metadata", {})
    old = current.get("metadata") or {}
    for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
        if k in old:
            meta[k] = old[k]
        else:
            meta.pop(k, None)
    meta.pop("selfLink", None)


def graceful_pod(obj: dict) -> bool:
    """A pod being deleted gracefully (deletionGracePeriodSeconds > 0): it stays, with
    no finalizers too, until its node's kubelet deletes it with a grace period of 0."""
    return obj.get("kind") == "Pod" and obj.get("apiVersion", "v1") == "v1" and bool((obj.get("metadata") or {}).get("deletionGracePeriodSeconds"))


def mark_deleted(current: dict, grace: int = 0) -> object:
    """DELETE for an object without finalizers; with finalizers, the object marked for deletion."""
    meta = current.setdefault("metadata", {})
    if not finalizers(current):
        return DELETE
    if meta.get("deletionTimestamp"):
        return None  # already being deleted: nothing changes
    meta["deletionTimestamp"] = now_rfc3339()
    meta["deletionGracePeriodSeconds"] = grace
    if meta.get("generation"):
        meta["generation"] += 1
    return current
