"""emu's API server refuses kubectl's writes to emu's own objects (emu.apiserver.mirror.refuse)
by name for the kinds of an API group too (apps/v1 Deployments), not only core ones: the
server looks the stored object up under its group's resource key."""

from __future__ import annotations

import pytest
from kube_testserver import ClusterServer

from emu.api.load import load_text
from emu.apiserver import mirror
from emu.control.apiserver import mirror_objects
from emu.control.state import plan_cluster
from emu.node.kube.client import ApiError, resource_path

LAB = """\
name: lab
nodes: [{name: control-plane, role: control-plane}, {name: worker}]
deployments:
  - name: web
    replicas: 1
    template:
      labels: {app: web}
      containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
"""


def test_an_update_of_emus_deployment_is_refused(tmp_path):
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")
    served = ClusterServer(tmp_path / "api")
    try:
        mirror.sync(served.store, mirror_objects(state, [], 1_700_000_000.0))
        admin = served.client()
        path = resource_path("apps/v1", "deployments", "default", "web")
        with pytest.raises(ApiError) as refused:
            admin.update(path, admin.get(path))
        assert refused.value.code == 405 and "emu apply -f" in refused.value.message
        with pytest.raises(ApiError) as refused:
            admin.delete(path)
        assert refused.value.code == 405
    finally:
        served.stop()
