"""What emu writes into its API server decodes as Kubernetes' types: kubectl
(the real client, offline: --dry-run=client) reads every pod the mirror makes
of the edge lab (the cluster DNS, an ingress controller, probes). The coredns pod's
0.2 s readiness period (an int32 in the API) once made `kubectl logs` and
`kubectl describe` fail on it."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from emu.api.load import load_file
from emu.control.apiserver import mirror_objects
from emu.control.state import plan_cluster

KUBECTL = shutil.which("kubectl")
EDGE = Path(__file__).resolve().parents[2] / "topologies" / "edge.yaml"  # the cluster DNS, an ingress controller, probes


@pytest.mark.skipif(not KUBECTL, reason="kubectl is not installed (Debian's kubectl package)")
def test_every_mirrored_pod_decodes_as_kubectl_types_it(tmp_path):
    state = plan_cluster(load_file(EDGE), "emu-edge", "172.28.0.0/24")
    pods = [obj for obj in mirror_objects(state, [], 1_700_000_000.0) if obj["kind"] == "Pod"]
    assert any(p["metadata"]["namespace"] == "kube-system" for p in pods), "the cluster DNS pods are mirrored"
    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
    # No server: `set env --local` decodes every item into Go's types (a fraction in an int32 field is refused).
    result = subprocess.run([KUBECTL, "set", "env", "--local", "-f", str(path), "EMU_TYPED=1", "-o", "name",
                             "--kubeconfig", "/dev/null"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == len(pods)
