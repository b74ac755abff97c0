"""The garbage collector, as kube-controller-manager's: ownerReferences and the three
deletion propagation policies.

- Background (kubectl's default): the server removes the owner at once; the collector
  then deletes every object whose ownerReferences all name owners (by uid) that no
  longer exist, and drops references to missing owners from objects that still have
  another owner.
- Foreground: the server keeps the owner with a deletionTimestamp and the finalizer
  foregroundDeletion; the collector deletes its dependents (in the foreground
  themselves when they have dependents) and removes the finalizer once no dependent
  whose reference has blockOwnerDeletion: true is left, and the store then removes the
  owner.
- Orphan: the server keeps the owner with the finalizer orphan; the collector removes
  the references to it from every dependent, then the finalizer.

The server's part (DELETE with DeleteOptions.propagationPolicy / orphanDependents) is
`add_deletion_finalizers(object, options)`, a pure function server.py calls on the
stored object before marking it deleted (see its docstring).

The collector watches every stored kind except Events (which nothing owns), keeps
per-informer indexes of uids and of the owner uids objects refer to, and checks an
owner's absence against the store itself (not only its cache) before deleting.
Queue keys are "<resource>|<namespace>|<name>"."""

from __future__ import annotations

from emu.apiserver import resources
from emu.apiserver.controllers.framework import Controller, Watch, being_deleted
from emu.apiserver.mirror import emu_owned

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"


def deletion_finalizers(propagation_policy: str | None, kind: str = "", orphan_dependents: bool | None = None) \
        -> list[str]:
    """The finalizers a DELETE adds for its propagation policy (kube-apiserver's deletion strategy):
    Foreground -> [foregroundDeletion], Orphan -> [orphan], Background -> []; with no policy,
    orphanDependents true -> [orphan], else the kind's default, which for every kind served
    here (apps/v1, core/v1 ...) is Background -> []."""
    if propagation_policy == "Foreground":
        return [FOREGROUND]
    if propagation_policy == "Orphan":
        return [ORPHAN]
    if propagation_policy == "Background":
        return []
    if orphan_dependents is True or orphan_dependents == "true":
        return [ORPHAN]
    return []


def add_deletion_finalizers(obj: dict, options: dict) -> dict:
    """Set the propagation policy's finalizer on `obj` (the stored object a DELETE is about to mark)
    and return it. server.py calls it on the stored object before storage.mark_deleted, so that an
    object given foregroundDeletion or orphan is only marked (deletionTimestamp) and the garbage
    collector finishes the job. As upstream's deletion strategy: Orphan adds orphan and drops
    foregroundDeletion, Foreground the reverse, Background drops both; no policy changes nothing
    (orphanDependents: true counts as Orphan)."""
    policy = options.get("propagationPolicy")
    orphan_dependents = options.get("orphanDependents")
    if policy is None and orphan_dependents in (True, "true"):
        policy = "Orphan"
    if policy is None:
        return obj
    want = deletion_finalizers(policy, obj.get("kind", ""))
    meta = obj.setdefault("metadata", {})
    fins = [f for f in meta.get("finalizers") or [] if f not in (FOREGROUND, ORPHAN)] + want
    if fins:
        meta["finalizers"] = fins
    else:
        meta.pop("finalizers", None)
    return obj


def gc_resources() -> list[resources.ResourceInfo]:
    """The stored kinds the collector watches."""
    return [r for r in resources.RESOURCES if r.stored and not r.storage_plural and r.key != "events"]


def _key(resource: str, obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{resource}|{meta.get('namespace', '')}|{meta.get('name', '')}"


def _refs(obj: dict) -> list[dict]:
    return (obj.get("metadata") or {}).get("ownerReferences") or []


class GarbageCollector(Controller):
    name = "garbage-collector-controller"

    def watches(self):
        return [Watch(r.key, events=self._events_for(r.key)) for r in gc_resources()]

    def setup(self) -> None:
        for r in gc_resources():
            inf = self.informer(r.key)
            if "uid" not in inf.index_fns:
                inf.add_index("uid", lambda o: [o["metadata"].get("uid", "")])
            if "owner-uids" not in inf.index_fns:
                inf.add_index("owner-uids", lambda o: [ref.get("uid", "") for ref in _refs(o)])

    # ------------------------------------------------------------ lookups

    def _dependents(self, uid: str) -> list[tuple[str, dict]]:
        out = []
        for r in gc_resources():
            for obj in self.informer(r.key).by_index("owner-uids", uid):
                out.append((r.key, obj))
        return out

    def _by_uid(self, uid: str) -> list[tuple[str, dict]]:
        out = []
        for r in gc_resources():
            for obj in self.informer(r.key).by_index("uid", uid):
                out.append((r.key, obj))
        return out

    def _events_for(self, resource: str):
        def fn(etype: str, old: dict | None, new: dict | None) -> list[str]:
            obj = new if new is not None else old
            meta = obj.get("metadata") or {}
            keys = []
            if new is not None:
                fins = set(meta.get("finalizers") or [])
                if _refs(new) or (meta.get("deletionTimestamp") and fins & {FOREGROUND, ORPHAN}):
                    keys.append(_key(resource, new))
            # an owner gone or going: look at its dependents
            if etype == "DELETED" or (new is not None and meta.get("deletionTimestamp")):
                keys += [_key(res, d) for res, d in self._dependents(meta.get("uid", ""))]
            # a dependent gone, going or released: an owner deleting in the foreground may be done
            if etype == "DELETED" or meta.get("deletionTimestamp") or (
                    old is not None and new is not None and _refs(old) != _refs(new)):
                for ref in _refs(old or {}) + _refs(new or {}):
                    for res, owner in self._by_uid(ref.get("uid", "")):
                        if being_deleted(owner):
                            keys.append(_key(res, owner))
            return keys
        return fn

    def _owner_exists(self, obj: dict, ref: dict) -> bool:
        """Whether the owner `ref` names exists with that uid (asked of the store, as upstream's live lookup)."""
        info = resources.by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
        if info is None or not info.stored:
            return True  # a kind this server does not serve: cannot tell, leave the reference alone
        ns = (obj.get("metadata") or {}).get("namespace", "") if info.namespaced else ""
        if info.namespaced and not ns:
            return False  # a cluster-scoped object cannot be owned by a namespaced one
        owner = self.client.get(info.key, ns, ref.get("name", ""))
        return owner is not None and owner["metadata"].get("uid") == ref.get("uid")

    # ------------------------------------------------------------ reconcile

    def reconcile(self, key: str) -> float | None:
        resource, ns, name = key.split("|", 2)
        obj = self.informer(resource).get(f"{ns}/{name}" if ns else name)
        if obj is None or emu_owned(obj):
            return None  # (emu's own objects come and go with emu's commands)
        meta = obj["metadata"]
        fins = meta.get("finalizers") or []
        if meta.get("deletionTimestamp") and ORPHAN in fins:
            return self._orphan(resource, obj)
        if meta.get("deletionTimestamp") and FOREGROUND in fins:
            return self._foreground(resource, obj)
        refs = _refs(obj)
        if not refs:
            return None
        dangling = [r for r in refs if not self._owner_exists(obj, r)]
        if not dangling:
            return None
        if len(dangling) == len(refs):
            if not being_deleted(obj):
                has_dependents = bool(self._dependents(meta.get("uid", "")))
                # an owner that waits for its dependents (foreground) passes that on, as upstream does
                foreground = has_dependents and any(self._waiting_for_dependents(r) for r in refs)
                self.client.delete(resource, ns, name, uid=meta.get("uid", ""),
                                   finalizers=[FOREGROUND] if foreground else [])
            return None
        gone = {r.get("uid") for r in dangling}

        def change(o: dict):
            if o["metadata"].get("uid") != meta.get("uid"):
                return None
            o["metadata"]["ownerReferences"] = [r for r in _refs(o) if r.get("uid") not in gone]
            return o
        self.client.mutate(resource, ns, name, change)
        return None

    def _waiting_for_dependents(self, ref: dict) -> bool:
        for _, owner in self._by_uid(ref.get("uid", "")):
            if FOREGROUND in (owner["metadata"].get("finalizers") or []) and being_deleted(owner):
                return True
        return False

    def _remove_finalizer(self, resource: str, obj: dict, finalizer: str) -> None:
        meta = obj["metadata"]

        def change(o: dict):
            if o["metadata"].get("uid") != meta.get("uid") or finalizer not in (o["metadata"].get("finalizers") or []):
                return None
            o["metadata"]["finalizers"] = [f for f in o["metadata"]["finalizers"] if f != finalizer]
            return o
        self.client.mutate(resource, meta.get("namespace", ""), meta["name"], change)

    def _orphan(self, resource: str, owner: dict) -> None:
        uid = owner["metadata"]["uid"]
        for res, dep in self._dependents(uid):
            def change(o: dict):
                refs = _refs(o)
                kept = [r for r in refs if r.get("uid") != uid]
                if kept == refs:
                    return None
                o["metadata"]["ownerReferences"] = kept
                return o
            self.client.mutate(res, dep["metadata"].get("namespace", ""), dep["metadata"]["name"], change)
        self._remove_finalizer(resource, owner, ORPHAN)

    def _foreground(self, resource: str, owner: dict) -> None:
        uid = owner["metadata"]["uid"]
        blocking = 0
        for res, dep in self._dependents(uid):
            ref = next((r for r in _refs(dep) if r.get("uid") == uid), {})
            if ref.get("blockOwnerDeletion"):
                blocking += 1
            if being_deleted(dep):
                continue
            others = [r for r in _refs(dep) if r.get("uid") != uid and self._owner_exists(dep, r)]
            if others:
                # another owner still holds it: only the reference to this owner goes
                def change(o: dict):
                    o["metadata"]["ownerReferences"] = [r for r in _refs(o) if r.get("uid") != uid]
                    return o
                self.client.mutate(res, dep["metadata"].get("namespace", ""), dep["metadata"]["name"], change)
                continue
            has_dependents = bool(self._dependents(dep["metadata"].get("uid", "")))
            self.client.delete(res, dep["metadata"].get("namespace", ""), dep["metadata"]["name"],
                               uid=dep["metadata"].get("uid", ""), finalizers=[FOREGROUND] if has_dependents else [])
        if blocking == 0:
            self._remove_finalizer(resource, owner, FOREGROUND)
