"""The Deployment controller, as kube-controller-manager's (pkg/controller/deployment).

A Deployment owns ReplicaSets named "<deployment>-<pod-template-hash>"; the new one is
the ReplicaSet whose template equals the Deployment's (ignoring the hash label).
RollingUpdate scales it up by at most maxSurge above spec.replicas and the old ones
down while at least replicas - maxUnavailable pods are available (percentages:
maxSurge rounds up, maxUnavailable down; both zero means maxUnavailable 1).
Recreate scales every old ReplicaSet to 0, waits for their pods to be gone, then
scales the new one up. A change of spec.replicas alone scales the active ReplicaSets
proportionally (the deployment.kubernetes.io/max-replicas annotations).

Revisions: the new ReplicaSet gets deployment.kubernetes.io/revision = the highest
old revision + 1 and the Deployment the same annotation, so `kubectl rollout
history` lists them and `kubectl rollout undo` (which copies an old ReplicaSet's
template back) makes that ReplicaSet the new one with the next revision.
Old ReplicaSets beyond spec.revisionHistoryLimit with no pods are deleted.

Status: replicas, updatedReplicas, readyReplicas, availableReplicas,
unavailableReplicas, observedGeneration, collisionCount and the conditions
Available (MinimumReplicasAvailable / MinimumReplicasUnavailable) and Progressing
(NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated, NewReplicaSetAvailable,
ProgressDeadlineExceeded) with upstream's messages: what `kubectl rollout status` reads.

pod-template-hash: upstream hashes the template with FNV-32a over Go's spew dump of
the PodTemplateSpec struct, which only Go can reproduce; here it is FNV-32a over the
template's JSON with sorted keys (then, when status.collisionCount is set, the count
as 4 little-endian bytes in an 8-byte buffer), encoded as upstream encodes it
(rand.SafeEncodeString of the decimal sum): stable across restarts and processes,
the same shape ("web-5d7c9b8f47"), different values from a real cluster's."""

from __future__ import annotations

import json
import math
import struct
import time

from emu.apiserver.mirror import emu_owned
from emu.apiserver.controllers.framework import (
    Controller,
    Watch,
    being_deleted,
    controller_of,
    controller_ref,
    jcopy,
    mapper_owner,
    obj_key,
    selector_of,
)
from emu.apiserver.controllers.replicaset import add_owner_indexes, candidates, claim, parse_time, pod_active
from emu.apiserver.errors import ApiError
from emu.apiserver.storage import NAME_CHARS

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"
# annotations of a Deployment that are not copied to its ReplicaSets (deployment/util's skip list)
SKIP_ANNOTATIONS = {"kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY, DESIRED,
                    MAX_REPLICAS, "deprecated.deployment.rollback.to"}

RS = "replicasets.apps"
DEPLOY = "deployments.apps"


# ---------------------------------------------------------------- pure pieces

def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """k8s.io/apimachinery's rand.SafeEncodeString: each byte to a letter of the no-vowel alphabet."""
    return "".join(NAME_CHARS[ord(c) % len(NAME_CHARS)] for c in text)


def template_hash(template: dict, collision_count: int | None = None) -> str:
    """The pod-template-hash of a template (see the module docstring for how it differs from upstream's)."""
    t = jcopy(template or {})
    labels = (t.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    data = json.dumps(t, sort_keys=True, separators=(",", ":")).encode()
    if collision_count is not None:
        data += struct.pack("<I", collision_count & 0xFFFFFFFF) + bytes(4)  # an 8-byte buffer, as upstream's
    return safe_encode(str(fnv32a(data)))


def _without_hash(template: dict) -> dict:
    """The template with no pod-template-hash label and no empty metadata fields (shallow copies only)."""
    t = dict(template or {})
    meta = {k: v for k, v in (t.get("metadata") or {}).items() if v not in ({}, [], None)}
    labels = meta.get("labels")
    if labels and HASH_LABEL in labels:
        labels = {k: v for k, v in labels.items() if k != HASH_LABEL}
        if labels:
            meta["labels"] = labels
        else:
            del meta["labels"]
    t["metadata"] = meta
    return t


def equal_ignore_hash(a: dict, b: dict) -> bool:
    """Two pod templates are equal once the pod-template-hash label is dropped (EqualIgnoreHash)."""
    return _without_hash(a) == _without_hash(b)


def scaled_value(value, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int as is, "N%" of total rounded up or down."""
    if isinstance(value, int):
        return value
    text = str(value)
    if not text.endswith("%"):
        try:
            return int(text)
        except ValueError:
            raise ValueError("invalid value for IntOrString: invalid type: string is not a percentage") from None
    pct = int(text[:-1])
    v = pct * total / 100
    return math.ceil(v) if round_up else math.floor(v)


def resolve_fenceposts(max_surge, max_unavailable, desired: int) -> tuple[int, int]:
    """(surge, unavailable) for `desired` replicas; both zero makes unavailable 1 (ResolveFenceposts)."""
    surge = scaled_value(max_surge if max_surge is not None else 0, desired, True)
    unavailable = scaled_value(max_unavailable if max_unavailable is not None else 0, desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _rolling(d: dict) -> dict | None:
    strategy = (d.get("spec") or {}).get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return None
    return strategy.get("rollingUpdate") or {"maxSurge": "25%", "maxUnavailable": "25%"}


def replicas_of(d: dict) -> int:
    r = (d.get("spec") or {}).get("replicas")
    return 1 if r is None else r


def max_surge(d: dict) -> int:
    ru = _rolling(d)
    if ru is None:
        return 0
    return resolve_fenceposts(ru.get("maxSurge"), ru.get("maxUnavailable"), replicas_of(d))[0]


def max_unavailable(d: dict) -> int:
    ru = _rolling(d)
    if ru is None or replicas_of(d) == 0:
        return 0
    un = resolve_fenceposts(ru.get("maxSurge"), ru.get("maxUnavailable"), replicas_of(d))[1]
    return min(un, replicas_of(d))


def spec_replicas(rs: dict | None) -> int:
    if rs is None:
        return 0
    r = (rs.get("spec") or {}).get("replicas")
    return 1 if r is None else r


def st(rs: dict | None, field: str) -> int:
    return ((rs or {}).get("status") or {}).get(field, 0) or 0


def revision(rs: dict) -> int:
    try:
        return int(((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def created(rs: dict) -> tuple:
    return parse_time(rs["metadata"].get("creationTimestamp")) or 0.0, rs["metadata"]["name"]


def new_rs_replicas(d: dict, all_rss: list[dict], new_rs: dict | None) -> int:
    """NewRSNewReplicas: what the new ReplicaSet may grow to now."""
    if _rolling(d) is None:
        return replicas_of(d)
    current = sum(spec_replicas(r) for r in all_rss)
    total_max = replicas_of(d) + max_surge(d)
    if current >= total_max:
        return spec_replicas(new_rs)
    up = min(total_max - current, replicas_of(d) - spec_replicas(new_rs))
    return spec_replicas(new_rs) + up


def deployment_complete(d: dict, status: dict) -> bool:
    n = replicas_of(d)
    return (status.get("updatedReplicas", 0) == n and status.get("replicas", 0) == n
            and status.get("availableReplicas", 0) == n
            and status.get("observedGeneration", 0) >= d["metadata"].get("generation", 1))


def deployment_progressing(d: dict, new: dict) -> bool:
    old = d.get("status") or {}
    old_old = old.get("replicas", 0) - old.get("updatedReplicas", 0)
    new_old = new.get("replicas", 0) - new.get("updatedReplicas", 0)
    return (new.get("updatedReplicas", 0) > old.get("updatedReplicas", 0) or new_old < old_old
            or new.get("readyReplicas", 0) > old.get("readyReplicas", 0)
            or new.get("availableReplicas", 0) > old.get("availableReplicas", 0))


def get_condition(status: dict, ctype: str) -> dict | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def set_condition(status: dict, cond: dict) -> None:
    """SetDeploymentCondition: no change when status and reason are the same; the transition time kept
    while the status stays."""
    current = get_condition(status, cond["type"])
    if current is not None and current.get("status") == cond["status"] and current.get("reason") == cond["reason"]:
        return
    if current is not None and current.get("status") == cond["status"]:
        cond["lastTransitionTime"] = current.get("lastTransitionTime")
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != cond["type"]] + [cond]


def remove_condition(status: dict, ctype: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != ctype]


# ---------------------------------------------------------------- controller

class DeploymentController(Controller):
    name = "deployment-controller"

    def watches(self):
        return [Watch(DEPLOY), Watch(RS, self._rs_keys)]

    def setup(self) -> None:
        add_owner_indexes(self.informer(RS))
        add_owner_indexes(self.informer("pods"))

    def _rs_keys(self, rs: dict) -> list[str]:
        keys = mapper_owner("Deployment")(rs)
        if keys or controller_of(rs) is not None:
            return keys
        ns = rs["metadata"].get("namespace", "")
        out = []
        for d in self.informer(DEPLOY).list(ns):
            sel = selector_of(d)
            if sel is not None and not sel.empty() and sel.matches(rs["metadata"].get("labels") or {}):
                out.append(obj_key(d))
        return out

    def _ts(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now()))

    def _cond(self, ctype: str, status: str, reason: str, message: str) -> dict:
        now = self._ts()
        return {"type": ctype, "status": status, "lastUpdateTime": now, "lastTransitionTime": now,
                "reason": reason, "message": message}

    # ------------------------------------------------------------ sync

    def reconcile(self, key: str) -> float | None:
        d = self.informer(DEPLOY).get(key)
        if d is None or emu_owned(d):
            return None  # (emu's own are driven by emu's commands)
        d = jcopy(d)
        sel = selector_of(d)
        if sel is None or sel.empty():
            self.client.event(d, "Warning", "SelectingAll",
                              "This deployment is selecting all pods. A non-empty selector is required.", self.name)
            return None
        rss = claim(self, d, candidates(self.informer(RS), d, lambda r: not being_deleted(r)), resource=RS)
        rss = [jcopy(r) for r in rss]
        if being_deleted(d):
            new_rs, old_rss = self._split(d, rss)
            return self._sync_status(d, [r for r in old_rss + [new_rs] if r is not None], new_rs)
        spec = d.get("spec") or {}
        if spec.get("paused") or self._scaling_event(d, rss):
            return self._sync(d, rss)
        if _rolling(d) is None:
            return self._rollout_recreate(d, rss)
        return self._rollout_rolling(d, rss)

    def _split(self, d: dict, rss: list[dict]) -> tuple[dict | None, list[dict]]:
        template = (d.get("spec") or {}).get("template") or {}
        matching = sorted([r for r in rss if equal_ignore_hash((r.get("spec") or {}).get("template"), template)],
                          key=created)
        new_rs = matching[0] if matching else None
        return new_rs, [r for r in rss if r is not new_rs]

    def _scaling_event(self, d: dict, rss: list[dict]) -> bool:
        new_rs, old_rss = self._split(d, rss)
        for rs in [r for r in [new_rs] + old_rss if r is not None and spec_replicas(r) > 0]:
            desired = ((rs["metadata"].get("annotations") or {}).get(DESIRED))
            if desired is None:
                continue
            if desired != str(replicas_of(d)):
                return True
        return False

    def _all(self, d: dict, rss: list[dict], create: bool) -> tuple[dict | None, list[dict]]:
        """getAllReplicaSetsAndSyncRevision: (new ReplicaSet or None, old ones), the new one's revision synced."""
        new_rs, old_rss = self._split(d, rss)
        new_revision = max([revision(r) for r in old_rss] + [0]) + 1
        if new_rs is not None:
            rs = jcopy(new_rs)
            changed = self._rs_annotations(d, rs, new_revision, exists=True)
            if changed:
                new_rs = self.client.update(RS, rs)
            self._deployment_revision(d, new_rs, found=True)
            return new_rs, old_rss
        if not create:
            return None, old_rss
        return self._create_new_rs(d, old_rss, new_revision), old_rss

    def _rs_annotations(self, d: dict, rs: dict, new_revision: int, exists: bool) -> bool:
        """SetNewReplicaSetAnnotations: copy the Deployment's annotations, raise the revision; True if changed."""
        ann = rs["metadata"].setdefault("annotations", {})
        before = dict(ann)
        for k, v in (d["metadata"].get("annotations") or {}).items():
            if k not in SKIP_ANNOTATIONS:
                ann[k] = v
        if revision(rs) < new_revision:
            ann[REVISION] = str(new_revision)
        if not exists:
            ann[DESIRED] = str(replicas_of(d))
            ann[MAX_REPLICAS] = str(replicas_of(d) + max_surge(d))
        return ann != before

    def _deployment_revision(self, d: dict, new_rs: dict, found: bool) -> None:
        """The Deployment's revision annotation follows the new ReplicaSet's; FoundNewReplicaSet when no
        Progressing condition was set yet."""
        rev = str(revision(new_rs))
        if (d["metadata"].get("annotations") or {}).get(REVISION) != rev:
            def change(obj: dict):
                obj["metadata"].setdefault("annotations", {})[REVISION] = rev
                return obj
            out = self.client.mutate(DEPLOY, d["metadata"].get("namespace", ""), d["metadata"]["name"], change)
            if out is not None:
                d["metadata"] = jcopy(out["metadata"])
        if found and self._has_deadline(d) and get_condition(d.get("status") or {}, "Progressing") is None:
            status = jcopy(d.get("status") or {})
            set_condition(status, self._cond("Progressing", "True", "FoundNewReplicaSet",
                                             f'Found new replica set "{new_rs["metadata"]["name"]}"'))
            self._write_status(d, status)

    @staticmethod
    def _has_deadline(d: dict) -> bool:
        v = (d.get("spec") or {}).get("progressDeadlineSeconds")
        return v is not None and v != 2147483647

    def _create_new_rs(self, d: dict, old_rss: list[dict], new_revision: int) -> dict | None:
        spec = d.get("spec") or {}
        status = d.get("status") or {}
        collisions = status.get("collisionCount")
        h = template_hash(spec.get("template") or {}, collisions)
        template = jcopy(spec.get("template") or {})
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
        selector = jcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        name = f"{d['metadata']['name']}-{h}"
        rs = {"kind": "ReplicaSet", "apiVersion": "apps/v1",
              "metadata": {"name": name, "namespace": d["metadata"].get("namespace", ""),
                           "labels": dict(template["metadata"]["labels"]),
                           "ownerReferences": [controller_ref(d)]},
              "spec": {"replicas": 0, "minReadySeconds": spec.get("minReadySeconds", 0) or 0,
                       "selector": selector, "template": template}}
        self._rs_annotations(d, rs, new_revision, exists=False)
        rs["spec"]["replicas"] = new_rs_replicas(d, old_rss + [rs], rs)
        try:
            created_rs = self.client.create(RS, rs)
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise
            existing = self.client.get(RS, rs["metadata"]["namespace"], name)
            if existing is not None and controller_of(existing) and controller_of(existing).get("uid") == \
                    d["metadata"]["uid"] and equal_ignore_hash(existing["spec"].get("template"), spec.get("template")):
                return existing
            # a hash collision: count it, so the next try hashes differently
            st_ = jcopy(status)
            st_["collisionCount"] = (collisions or 0) + 1
            self._write_status(d, st_)
            raise RuntimeError(f"hash collision for replica set {name}; collisionCount is now "
                               f"{st_['collisionCount']}") from None
        n = spec_replicas(created_rs)
        if n > 0:
            self.client.event(d, "Normal", "ScalingReplicaSet", f"Scaled up replica set {name} from 0 to {n}",
                              self.name)
        self._deployment_revision(d, created_rs, found=False)
        if self._has_deadline(d):
            status = jcopy(d.get("status") or {})
            set_condition(status, self._cond("Progressing", "True", "NewReplicaSetCreated",
                                             f'Created new replica set "{name}"'))
            self._write_status(d, status)
        return created_rs

    def _scale_rs(self, d: dict, rs: dict, n: int) -> bool:
        """scaleReplicaSetAndRecordEvent: spec.replicas and the desired/max annotations; True if the size changed."""
        old = spec_replicas(rs)
        ann = rs["metadata"].setdefault("annotations", {})
        want_ann = {DESIRED: str(replicas_of(d)), MAX_REPLICAS: str(replicas_of(d) + max_surge(d))}
        if old == n and all(ann.get(k) == v for k, v in want_ann.items()):
            return False
        rs["spec"]["replicas"] = n
        ann.update(want_ann)
        out = self.client.update(RS, rs)
        rs.clear()
        rs.update(jcopy(out))
        if old != n:
            verb = "up" if n > old else "down"
            self.client.event(d, "Normal", "ScalingReplicaSet",
                              f"Scaled {verb} replica set {rs['metadata']['name']} from {old} to {n}", self.name)
            return True
        return False

    # ------------------------------------------------------------ strategies

    def _rollout_rolling(self, d: dict, rss: list[dict]) -> float | None:
        new_rs, old_rss = self._all(d, rss, create=True)
        if new_rs is None:
            return None
        new_rs = jcopy(new_rs)
        all_rss = old_rss + [new_rs]
        if self._reconcile_new(d, all_rss, new_rs):
            return self._sync_rollout_status(d, all_rss, new_rs)
        if self._reconcile_old(d, all_rss, [r for r in old_rss if spec_replicas(r) > 0], new_rs):
            return self._sync_rollout_status(d, all_rss, new_rs)
        if deployment_complete(d, d.get("status") or {}):
            self._cleanup(d, old_rss)
        return self._sync_rollout_status(d, all_rss, new_rs)

    def _reconcile_new(self, d: dict, all_rss: list[dict], new_rs: dict) -> bool:
        n = replicas_of(d)
        if spec_replicas(new_rs) == n:
            return False
        if spec_replicas(new_rs) > n:
            return self._scale_rs(d, new_rs, n)
        return self._scale_rs(d, new_rs, new_rs_replicas(d, all_rss, new_rs))

    def _reconcile_old(self, d: dict, all_rss: list[dict], old_rss: list[dict], new_rs: dict) -> bool:
        if sum(spec_replicas(r) for r in old_rss) == 0:
            return False
        all_count = sum(spec_replicas(r) for r in all_rss)
        min_available = replicas_of(d) - max_unavailable(d)
        new_unavailable = spec_replicas(new_rs) - st(new_rs, "availableReplicas")
        max_scaled_down = all_count - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        cleaned = 0
        # cleanupUnhealthyReplicas: first the old pods that are not available anyway
        for rs in sorted(old_rss, key=created):
            if cleaned >= max_scaled_down:
                break
            if spec_replicas(rs) == 0 or spec_replicas(rs) == st(rs, "availableReplicas"):
                continue
            down = min(max_scaled_down - cleaned, spec_replicas(rs) - st(rs, "availableReplicas"))
            self._scale_rs(d, rs, spec_replicas(rs) - down)
            cleaned += down
        # scaleDownOldReplicaSetsForRollingUpdate: then as many available ones as minAvailable allows
        available = sum(st(r, "availableReplicas") for r in all_rss)
        scaled = 0
        if available > min_available:
            total = available - min_available
            for rs in sorted(old_rss, key=created):
                if scaled >= total:
                    break
                if spec_replicas(rs) == 0:
                    continue
                down = min(spec_replicas(rs), total - scaled)
                self._scale_rs(d, rs, spec_replicas(rs) - down)
                scaled += down
        return cleaned + scaled > 0

    def _rollout_recreate(self, d: dict, rss: list[dict]) -> float | None:
        new_rs, old_rss = self._all(d, rss, create=False)
        all_rss = old_rss + ([new_rs] if new_rs is not None else [])
        scaled = False
        for rs in [r for r in old_rss if spec_replicas(r) > 0]:
            scaled = self._scale_rs(d, jcopy(rs), 0) or scaled
        if scaled:
            return self._sync_rollout_status(d, all_rss, new_rs)
        pods = self.informer("pods")
        if any(pod_active(p) or (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
               for rs in old_rss for p in pods.by_index("controller", rs["metadata"]["uid"])):
            return self._sync_rollout_status(d, all_rss, new_rs)  # old pods still running: wait
        if new_rs is None:
            new_rs, old_rss = self._all(d, rss, create=True)
            if new_rs is None:
                return None
            all_rss = old_rss + [new_rs]
        new_rs = jcopy(new_rs)
        all_rss = old_rss + [new_rs]
        if self._reconcile_new(d, all_rss, new_rs):
            return self._sync_rollout_status(d, all_rss, new_rs)
        if deployment_complete(d, d.get("status") or {}):
            self._cleanup(d, old_rss)
        return self._sync_rollout_status(d, all_rss, new_rs)

    def _sync(self, d: dict, rss: list[dict]) -> float | None:
        """A scaling event or a paused Deployment: scale, clean up when paused, report status."""
        new_rs, old_rss = self._all(d, rss, create=False)
        new_rs = jcopy(new_rs) if new_rs is not None else None
        old_rss = [jcopy(r) for r in old_rss]
        self._scale(d, new_rs, old_rss)
        if (d.get("spec") or {}).get("paused"):
            self._cleanup(d, old_rss)
        all_rss = old_rss + ([new_rs] if new_rs is not None else [])
        return self._sync_status(d, all_rss, new_rs)

    def _scale(self, d: dict, new_rs: dict | None, old_rss: list[dict]) -> None:
        n = replicas_of(d)
        active = [r for r in ([new_rs] if new_rs is not None else []) + old_rss if spec_replicas(r) > 0]
        # FindActiveOrLatest
        latest = None
        if len(active) == 1:
            latest = active[0]
        elif not active and (new_rs is not None or old_rss):
            latest = new_rs if new_rs is not None else max(old_rss, key=created)
        if latest is not None:
            if spec_replicas(latest) != n:
                self._scale_rs(d, latest, n)
            return
        saturated = (new_rs is not None and (new_rs["metadata"].get("annotations") or {}).get(DESIRED) == str(n)
                     and spec_replicas(new_rs) == n and st(new_rs, "availableReplicas") == n)
        if saturated:
            for rs in [r for r in old_rss if spec_replicas(r) > 0]:
                self._scale_rs(d, rs, 0)
            return
        if _rolling(d) is None:
            return
        total = sum(spec_replicas(r) for r in active)
        allowed = n + max_surge(d) if n > 0 else 0
        to_add = allowed - total
        if to_add > 0:  # larger first, newer first on ties
            active.sort(key=lambda r: (-spec_replicas(r), tuple(-x if isinstance(x, float) else x
                                                                 for x in created(r))))
        elif to_add < 0:  # larger first, older first on ties
            active.sort(key=lambda r: (-spec_replicas(r), created(r)))
        added = 0
        sizes = {}
        for rs in active:
            proportion = 0
            if to_add != 0 and spec_replicas(rs) != 0 and to_add != added:
                fraction = self._fraction(d, rs)
                left = to_add - added
                proportion = min(fraction, left) if to_add > 0 else max(fraction, left)
            sizes[rs["metadata"]["name"]] = spec_replicas(rs) + proportion
            added += proportion
        if to_add != 0 and active:
            first = active[0]["metadata"]["name"]
            sizes[first] = max(0, sizes[first] + to_add - added)
        for rs in active:
            self._scale_rs(d, rs, sizes[rs["metadata"]["name"]])

    def _fraction(self, d: dict, rs: dict) -> int:
        """getReplicaSetFraction: the replicas this ReplicaSet gains or loses in a proportional scale."""
        if replicas_of(d) == 0:
            return -spec_replicas(rs)
        total = replicas_of(d) + max_surge(d)
        try:
            annotated = int((rs["metadata"].get("annotations") or {}).get(MAX_REPLICAS))
        except (TypeError, ValueError):
            annotated = st(d, "replicas")
        if not annotated:
            return 0
        size = spec_replicas(rs) * total / annotated
        rounded = math.floor(size + 0.5) if size >= 0 else -math.floor(-size + 0.5)
        return rounded - spec_replicas(rs)

    def _cleanup(self, d: dict, old_rss: list[dict]) -> None:
        """Delete old ReplicaSets without pods beyond spec.revisionHistoryLimit, oldest revision first."""
        limit = (d.get("spec") or {}).get("revisionHistoryLimit")
        if limit is None:
            return
        alive = sorted([r for r in old_rss if not being_deleted(r)], key=lambda r: (revision(r), created(r)))
        for rs in alive[:max(0, len(alive) - limit)]:
            if st(rs, "replicas") != 0 or spec_replicas(rs) != 0 or \
                    rs["metadata"].get("generation", 1) > st(rs, "observedGeneration"):
                continue
            self.client.delete(RS, rs["metadata"].get("namespace", ""), rs["metadata"]["name"],
                               uid=rs["metadata"]["uid"])

    # ------------------------------------------------------------ status

    def _calculate_status(self, d: dict, all_rss: list[dict], new_rs: dict | None) -> dict:
        available = sum(st(r, "availableReplicas") for r in all_rss)
        total = sum(spec_replicas(r) for r in all_rss)
        status = {"observedGeneration": d["metadata"].get("generation", 1),
                  "replicas": sum(st(r, "replicas") for r in all_rss),
                  "updatedReplicas": st(new_rs, "replicas") if new_rs is not None else 0,
                  "readyReplicas": sum(st(r, "readyReplicas") for r in all_rss),
                  "availableReplicas": available,
                  "unavailableReplicas": max(0, total - available)}
        old = d.get("status") or {}
        if old.get("collisionCount") is not None:
            status["collisionCount"] = old["collisionCount"]
        status["conditions"] = jcopy(old.get("conditions") or [])
        if available >= replicas_of(d) - max_unavailable(d):
            set_condition(status, self._cond("Available", "True", "MinimumReplicasAvailable",
                                             "Deployment has minimum availability."))
        else:
            set_condition(status, self._cond("Available", "False", "MinimumReplicasUnavailable",
                                             "Deployment does not have minimum availability."))
        return status

    def _sync_status(self, d: dict, all_rss: list[dict], new_rs: dict | None) -> None:
        self._write_status(d, self._calculate_status(d, all_rss, new_rs))

    def _sync_rollout_status(self, d: dict, all_rss: list[dict], new_rs: dict | None) -> float | None:
        status = self._calculate_status(d, all_rss, new_rs)
        if not self._has_deadline(d):
            remove_condition(status, "Progressing")
        cur = get_condition(status, "Progressing")
        complete = (status.get("replicas", 0) == status.get("updatedReplicas", 0) and cur is not None
                    and cur.get("reason") == "NewReplicaSetAvailable")
        rs_name = new_rs["metadata"]["name"] if new_rs is not None else ""
        if self._has_deadline(d) and not complete:
            if deployment_complete(d, status):
                msg = (f'ReplicaSet "{rs_name}" has successfully progressed.' if new_rs is not None
                       else f'Deployment "{d["metadata"]["name"]}" has successfully progressed.')
                set_condition(status, self._cond("Progressing", "True", "NewReplicaSetAvailable", msg))
            elif deployment_progressing(d, status):
                msg = f'ReplicaSet "{rs_name}" is progressing.' if new_rs is not None else \
                    f'Deployment "{d["metadata"]["name"]}" is progressing.'
                cond = self._cond("Progressing", "True", "ReplicaSetUpdated", msg)
                if cur is not None and cur.get("status") == "True":
                    cond["lastTransitionTime"] = cur.get("lastTransitionTime")
                remove_condition(status, "Progressing")
                set_condition(status, cond)
            elif self._timed_out(d, cur):
                msg = f'ReplicaSet "{rs_name}" has timed out progressing.' if new_rs is not None else \
                    f'Deployment "{d["metadata"]["name"]}" has timed out progressing.'
                set_condition(status, self._cond("Progressing", "False", "ProgressDeadlineExceeded", msg))
        self._write_status(d, status)
        # requeueStuckDeployment: look again when the deadline would pass
        cur = get_condition(status, "Progressing")
        if self._has_deadline(d) and cur is not None and cur.get("reason") in ("ReplicaSetUpdated",
                                                                               "NewReplicaSetCreated",
                                                                               "FoundNewReplicaSet") \
                and not deployment_complete(d, status):
            since = parse_time(cur.get("lastUpdateTime")) or self.now()
            return max(0.0, since + d["spec"]["progressDeadlineSeconds"] - self.now()) + 1
        return None

    def _timed_out(self, d: dict, cond: dict | None) -> bool:
        if cond is None:
            return False
        if cond.get("reason") == "ProgressDeadlineExceeded":
            return True
        if cond.get("reason") == "NewReplicaSetAvailable":
            return False
        since = parse_time(cond.get("lastUpdateTime"))
        return since is not None and since + d["spec"]["progressDeadlineSeconds"] < self.now()

    def _write_status(self, d: dict, status: dict) -> None:
        for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"):
            if k in status and not status[k]:
                del status[k]  # omitempty, as the API serves DeploymentStatus
        if status == d.get("status"):
            return

        def change(obj: dict):
            if obj["metadata"].get("uid") != d["metadata"]["uid"]:
                return None
            obj["status"] = status
            return obj

        out = self.client.mutate(DEPLOY, d["metadata"].get("namespace", ""), d["metadata"]["name"], change,
                                 status=True)
        if out is not None:
            d["status"] = jcopy(out.get("status") or {})
            d["metadata"] = jcopy(out["metadata"])
