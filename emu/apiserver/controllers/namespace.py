"""kube-controller-manager's namespace controller: a Namespace being deleted
(deletionTimestamp set, "kubernetes" in spec.finalizers) has every namespaced
object in it deleted; once nothing is left, the finalizer is removed (the
finalize subresource's write) and the Namespace goes.

Meanwhile status.phase is Terminating and status.conditions say why it is
still there, in upstream's words (NamespaceContentRemaining,
NamespaceFinalizersRemaining, and the three failure kinds as False)."""

from __future__ import annotations

import copy

import time

from emu.apiserver import resources
from emu.apiserver.controllers.framework import Controller, Watch, info_for

FINALIZER = "kubernetes"
RECHECK_SECONDS = 1.0  # how soon a Namespace whose content is still going is looked at again

# (type, reason when fine, message when fine), in the order kube-controller-manager writes them
_OK = [
    ("NamespaceDeletionDiscoveryFailure", "ResourcesDiscovered", "All resources successfully discovered"),
    ("NamespaceDeletionGroupVersionParsingFailure", "ParsedGroupVersions", "All legacy kube types successfully parsed"),
    ("NamespaceDeletionContentFailure", "ContentDeleted", "All content successfully deleted, may be waiting on finalization"),
    ("NamespaceContentRemaining", "ContentRemoved", "All content successfully removed"),
    ("NamespaceFinalizersRemaining", "ContentHasNoFinalizers", "All content-preserving finalizers finished"),
]


def namespaced_resources() -> list[resources.ResourceInfo]:
    """Every stored namespaced resource, once (events.k8s.io Events are the core rows)."""
    return [r for r in resources.RESOURCES if r.namespaced and r.stored and not r.storage_plural]


def conditions(remaining: dict[str, int], finalizers: dict[str, int], failures: list[str], now: str,
               old: list[dict] | None = None) -> list[dict]:
    """The Namespace's deletion conditions. `remaining`: "plural.group" -> objects left; `finalizers`:
    finalizer -> objects it holds; `failures`: messages of deletes that failed. lastTransitionTime is kept
    from `old` while a condition's status does not change."""
    bad: dict[str, tuple[str, str]] = {}
    if failures:
        bad["NamespaceDeletionContentFailure"] = (
            "ContentDeletionFailed", f"Failed to delete all resource types, {len(failures)} remaining: "
                                     + ", ".join(sorted(failures)))
    if remaining:
        bad["NamespaceContentRemaining"] = ("SomeResourcesRemain", "Some resources are remaining: " + ", ".join(
            f"{k} has {n} resource instances" for k, n in sorted(remaining.items())))
    if finalizers:
        bad["NamespaceFinalizersRemaining"] = ("SomeFinalizersRemain",
                                               "Some content in the namespace has finalizers remaining: " + ", ".join(
                                                   f"{f} in {n} resource instances" for f, n in sorted(finalizers.items())))
    before = {c.get("type"): c for c in old or []}
    out = []
    for ctype, reason, message in _OK:
        status = "True" if ctype in bad else "False"
        if ctype in bad:
            reason, message = bad[ctype]
        prev = before.get(ctype)
        ltt = prev.get("lastTransitionTime") if prev and prev.get("status") == status else now
        out.append({"type": ctype, "status": status, "lastTransitionTime": ltt, "reason": reason,
                    "message": message})
    return out


class NamespaceController(Controller):
    """Empties a terminating Namespace, then lets it go (removes the "kubernetes" finalizer)."""

    name = "namespace-controller"

    def watches(self) -> list[Watch]:
        return [Watch("namespaces")]

    def reconcile(self, key: str) -> float | None:
        ns = self.informer("namespaces").get(key)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return None
        name = ns["metadata"]["name"]
        if (ns.get("status") or {}).get("phase") != "Terminating":
            self.client.mutate("namespaces", "", name, self._terminating, status=True)
        if FINALIZER not in ((ns.get("spec") or {}).get("finalizers") or []):
            return None
        failures = self._delete_content(name)
        remaining, finalizers = self._remaining(name)
        now = _rfc3339(self.now())

        def set_conditions(obj: dict) -> dict | None:
            st = obj.setdefault("status", {})
            new = conditions(remaining, finalizers, failures, now, st.get("conditions"))
            if st.get("conditions") == new and st.get("phase") == "Terminating":
                return None
            st["phase"] = "Terminating"
            st["conditions"] = new
            return obj

        self.client.mutate("namespaces", "", name, set_conditions, status=True)
        if remaining or failures:
            return RECHECK_SECONDS
        self._finalize(name)
        return None

    @staticmethod
    def _terminating(obj: dict) -> dict | None:
        if (obj.get("status") or {}).get("phase") == "Terminating":
            return None
        obj.setdefault("status", {})["phase"] = "Terminating"
        return obj

    def _delete_content(self, namespace: str) -> list[str]:
        """Delete every object in the namespace (deletecollection per resource); messages of failures."""
        failures = []
        by_key = {r.key: r for r in namespaced_resources()}
        for key, obj_name in self.client.store.namespaces_in_use(namespace):
            if key not in by_key:
                continue
            try:
                self.client.delete(key, namespace, obj_name)
            except Exception as e:  # noqa: BLE001 - reported in the Namespace's conditions, tried again
                failures.append(f"{by_key[key].plural}.{by_key[key].group}: {e}")
        return failures

    def _remaining(self, namespace: str) -> tuple[dict[str, int], dict[str, int]]:
        by_key = {r.key: r for r in namespaced_resources()}
        remaining: dict[str, int] = {}
        finalizers: dict[str, int] = {}
        for key, obj_name in self.client.store.namespaces_in_use(namespace):
            r = by_key.get(key)
            if r is None:
                continue
            label = f"{r.plural}.{r.group}"
            remaining[label] = remaining.get(label, 0) + 1
            obj = self.client.store.get(key, namespace, obj_name) or {}
            for f in (obj.get("metadata") or {}).get("finalizers") or []:
                finalizers[f] = finalizers.get(f, 0) + 1
        return remaining, finalizers

    def _finalize(self, name: str) -> None:
        """The finalize subresource's write: spec.finalizers without "kubernetes" (the Namespace is removed
        by the store once nothing holds it)."""
        info = info_for("namespaces")

        def fn(current):
            if current is None or not current["metadata"].get("deletionTimestamp"):
                return None
            fins = (current.get("spec") or {}).get("finalizers") or []
            if FINALIZER not in fins:
                return None
            new = copy.deepcopy(current)
            new.setdefault("spec", {})["finalizers"] = [f for f in fins if f != FINALIZER]
            return new

        self.client.store.write(info.key, "", name, fn, info.field_values)


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
