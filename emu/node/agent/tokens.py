"""Service account tokens for this node's pods, as the kubelet's token manager
and its kube-api-access projected volume provide them.

For each pod on the node, the agent asks the API server for a token of the
pod's service account bound to the pod (POST serviceaccounts/NAME/token with
boundObjectRef; NodeRestriction lets a node ask only for its own pods), and
writes it with the cluster's CA certificate and the pod's namespace into
TOKEN_DIR/<netns>/, which every container of the pod sees at
/var/run/secrets/kubernetes.io/serviceaccount (emu.node.plan.cni mounts it,
read-only). A token lives EXPIRATION seconds (the kubelet's 3607) and is
renewed once 80% of that has passed, as the kubelet renews it; a pod whose
API object is gone or recreated gets a new one. In-cluster clients (client-go's
rest.InClusterConfig, the Python client's load_incluster_config) then reach
https://kubernetes.default.svc as the pod's service account, and RBAC decides.
Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from emu.node.agent import write_atomically
from emu.node.kube.client import ApiError, Client, resource_path
from emu.node.plan import cni
from emu.node.records import ClusterState, PodState

EXPIRATION = 3607  # seconds (the kubelet's kube-api-access token)
RENEW_AFTER = 0.8  # of its life


class Tokens:
    def __init__(self, node: str, clock: Callable[[], float] = time.time, directory: str = cni.TOKEN_DIR,
                 ca_file: str = f"{cni.PKI_DIR}/ca.crt"):  # fmt: skip
        self.node = node
        self.clock = clock
        self.directory = directory
        self.ca_file = ca_file
        self.renew_at: dict[str, tuple[str, float]] = {}  # netns -> (the API pod's uid, when to renew)

    def sync(self, client: Client, state: ClusterState) -> float:
        """Get the tokens that are due; seconds until the next is (or a retry)."""
        pods = [pod for pod in state.pods_on(self.node) if not any(cni.runs_image(c) for c in pod.containers)]
        live = {pod.netns for pod in pods}
        for netns in [n for n in self.renew_at if n not in live]:
            del self.renew_at[netns]
        now = self.clock()
        pending = False
        for pod in pods:
            uid, due = self.renew_at.get(pod.netns, ("", 0.0))
            if now < due:
                continue
            if not self.request(client, pod):
                pending = True
        dues = [due for _, due in self.renew_at.values()]
        wait = min(dues) - self.clock() if dues else 60.0
        return 1.0 if pending else max(1.0, wait)

    def request(self, client: Client, pod: PodState) -> bool:
        """A new token for the pod, written; False when its API object is not there yet."""
        try:
            found = client.get(resource_path("v1", "pods", pod.namespace, pod.name))
        except ApiError as error:
            if error.code == 404:
                return False
            raise
        uid = found["metadata"]["uid"]
        account = (found.get("spec") or {}).get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": EXPIRATION,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": uid}}}  # fmt: skip
        path = resource_path("v1", "serviceaccounts", pod.namespace, account, "token")
        try:
            answer = client.request("POST", path, body)
        except ApiError as error:
            if error.code == 404:  # the namespace's service account is not made yet
                return False
            raise
        self.write(pod, answer["status"]["token"])
        self.renew_at[pod.netns] = (uid, self.clock() + EXPIRATION * RENEW_AFTER)
        return True

    def write(self, pod: PodState, token: str) -> None:
        folder = f"{self.directory}/{pod.netns}"
        os.makedirs(folder, exist_ok=True)
        try:
            with open(self.ca_file) as handle:
                ca = handle.read()
        except OSError:
            ca = ""
        for name, text in (("ca.crt", ca), ("namespace", pod.namespace), ("token", token)):
            write_atomically(f"{folder}/{name}", text)
