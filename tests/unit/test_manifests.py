"""Kubernetes manifests in: every warning and error case, and merging into a topology."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from emu.errors import EmuError
from emu.api.manifests import ManifestError, include, read_manifests
from emu.api.manifests.fields import FIELDS
from emu.api.manifests.merge import merge, remove
from emu.api.load import load_file, load_text

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "tests" / "integration" / "manifests" / "shop.yaml"
NODES = "name: lab\nnodes:\n  - {name: cp, role: control-plane}\n  - {name: w1, labels: {disk: ssd}}\n  - name: w2\n"

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
    - name: shell
      image: busybox
      command: [sleep, infinity]
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: server
          image: registry.k8s.io/e2e-test-images/agnhost:2.53
          args: [netexec, --http-port=8080]
          ports: [{name: http, containerPort: 8080}]
"""


def read(text: str, tmp_path: Path, name: str = "app.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return read_manifests([str(path)])


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        read(text, tmp_path)
    return [problem.render("app.yaml") for problem in caught.value.problems]


def merged_problems(text: str, tmp_path: Path, base: str = NODES) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        merge(load_text(base), read(text, tmp_path), "the topology")
    return [problem.message for problem in caught.value.problems]


# ---- the realistic app -----------------------------------------------------------------
def test_shop_manifest_reads_without_warnings_and_uses_only_kubernetes_fields():
    manifests = read_manifests([str(SHOP)])
    assert manifests.warnings == []
    assert [o.resource for o in manifests.objects] == [
        "namespace/shop", "configmap/shop-config", "service/backend", "statefulset.apps/backend",
        "deployment.apps/frontend", "service/frontend",
    ]  # fmt: skip
    frontend = manifests.objects[4].model
    container = frontend.template.containers[0]
    assert container.workload == "netexec" and container.args == ["--http-port=8080"]
    assert container.image == "registry.k8s.io/e2e-test-images/agnhost:2.53"


def test_field_lists_come_from_the_kubernetes_api():
    # A few fields that must be there, as the API has them.
    assert FIELDS["PodSpec"]["containers"] == "list:Container"
    assert FIELDS["Container"]["readinessProbe"] == "Probe"
    assert "serviceName" in FIELDS["StatefulSetSpec"] and "publishNotReadyAddresses" in FIELDS["ServiceSpec"]


# ---- warnings ----------------------------------------------------------------------------
def test_unmodelled_fields_are_named_once_per_object_with_their_path(tmp_path):
    text = DEPLOYMENT.replace("  replicas: 2\n", "  replicas: 2\n  strategy: {type: Recreate}\n").replace(
        "          ports:", "          resources: {limits: {cpu: 100m}}\n          livenessProbe: {tcpSocket: {port: 8080}}\n          ports:"
    )
    text = text.replace("      containers:\n", "      containers:\n        - name: side\n          image: busybox\n"
                                                 "          command: [sleep, infinity]\n          resources: {}\n")  # fmt: skip
    manifests = read(text, tmp_path)
    [fields] = manifests.warnings
    assert fields.startswith(f"Deployment default/web ({tmp_path / 'app.yaml'}:1): fields emu does not model, ignored: ")
    # resources of both containers: listed once, at the first
    assert fields.endswith("spec.strategy, spec.template.spec.containers[0].resources, "
                           "spec.template.spec.containers[1].livenessProbe")  # fmt: skip
    side = manifests.objects[0].model.template.containers[0]
    assert (side.image, side.command, side.runs_image) == ("busybox", ["sleep", "infinity"], True)


def test_restart_policy_is_read(tmp_path):
    manifests = read(POD.replace("spec:\n", "spec:\n  restartPolicy: Never\n"), tmp_path)
    assert manifests.objects[0].model.restart_policy == "Never" and manifests.warnings == []
    agnhost = "      image: registry.k8s.io/e2e-test-images/agnhost:2.53\n      args: [pause]\n"
    manifests = read(POD.replace("spec:\n", "spec:\n  restartPolicy: OnFailure\n").replace(
        "      image: busybox\n      command: [sleep, infinity]\n", agnhost), tmp_path)
    assert manifests.objects[0].model.containers[0].workload == "pause"
    assert manifests.objects[0].model.restart_policy == "OnFailure" and manifests.warnings == []


def test_warnings_are_printed_once_each_by_the_cli(tmp_path, capsys):
    from emu.cli import main

    topology = tmp_path / "lab.yaml"
    topology.write_text(NODES + "manifests: [app.yaml]\n")
    (tmp_path / "app.yaml").write_text(POD.replace("    - name: shell\n", "    - name: shell\n      resources: {}\n"))
    assert main(["validate", str(topology)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: Pod default/client") == 1 and "spec.containers[0].resources" in err


# ---- errors: what, where, what to do -----------------------------------------------------------
def test_unknown_field_is_an_error_with_a_suggestion(tmp_path):
    [message] = problems(POD.replace("  containers:", "  contaners: []\n  containers:"), tmp_path)
    assert message == ("app.yaml:6:3: spec.contaners: Pod default/client: unknown field 'contaners' in PodSpec "
                       "(did you mean 'containers'?); Kubernetes would refuse it too")  # fmt: skip


def test_unknown_kind_names_the_document(tmp_path):
    text = POD + "---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: web}\n"
    [message] = problems(text, tmp_path)
    assert message.startswith("app.yaml:12:1: kind: document 2: kind Job (batch/v1) is not one emu reads")


def test_old_api_version_of_a_known_kind(tmp_path):
    [message] = problems(DEPLOYMENT.replace("apps/v1", "extensions/v1beta1"), tmp_path)
    assert "Deployment is not served as extensions/v1beta1; use apiVersion: apps/v1" in message


def test_missing_kind_and_not_a_mapping(tmp_path):
    found = problems("metadata: {name: x}\n---\n- a\n- b\n---\n", tmp_path)
    assert "document 1 has no apiVersion and kind" in found[0]
    assert found[1] == "app.yaml:3:1: document 2 is not a mapping (a Kubernetes object)"


@pytest.mark.parametrize(
    "change, expected",
    [
        (("name: client", "generateName: client-"), "generateName is not supported by emu; give metadata.name"),
        (("      image: busybox\n", ""), "container 'shell' has no image; Kubernetes requires one"),
        (("  containers:\n", "  containers: {name: shell}\n  x:\n"), "spec.containers: Pod default/client: must be a list, not a mapping"),
    ],
)
def test_pod_errors(tmp_path, change, expected):
    found = problems(POD.replace(*change), tmp_path)
    assert any(expected in message for message in found), found


@pytest.mark.parametrize(
    "change, expected",
    [
        (("    matchLabels: {app: web}\n", "    matchLabels: {app: api}\n"), "selector does not match template labels"),
        (("  selector:\n    matchLabels: {app: web}\n", ""), "spec.selector is required"),
        (("--http-port=8080]", "--http-port=8080, --delay-shutdown=5]"), "emu's agnhost netexec has only --http-port, --udp-port, not --delay-shutdown"),
        (("      containers:", "      restartPolicy: OnFailure\n      containers:"), "restartPolicy must be Always in a pod template"),
        (("ports: [{name: http, containerPort: 8080}]", "ports: [{name: http, containerPort: 70000}]"),
         "app.yaml:17:32: spec.template.spec.containers[0].ports[0].containerPort: Deployment default/web: port 70000 is out of range"),
        (("name: server", "name: Server"), "spec.template.spec.containers[0].name: Deployment default/web: 'Server' is not a DNS-1123 label"),
        (("  replicas: 2", "  replicas: two"), "spec.replicas: Deployment default/web: Input should be a valid integer"),
        (("ports: [{name: http, containerPort: 8080}]",
          "ports: [{name: http, containerPort: 8080}]\n          readinessProbe: {httpGet: {port: 8080, scheme: HTTPS}}"),
         "emu's probes speak HTTP only, not HTTPS"),
    ],
)  # fmt: skip
def test_deployment_errors(tmp_path, change, expected):
    found = problems(DEPLOYMENT.replace(*change), tmp_path)
    assert any(expected in message for message in found), found


def test_services_are_ipv4_single_stack(tmp_path):
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n"
    [message] = problems(service + "  ipFamilies: [IPv6]\n", tmp_path)
    assert "IPv4 single-stack" in message
    [message] = problems(service + "  clusterIP: 10.96.0.50\n  clusterIPs: [10.96.0.51]\n", tmp_path)
    assert "clusterIPs[0] must equal clusterIP" in message
    manifests = read(service + "  clusterIPs: [10.96.0.50]\n  ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n", tmp_path)
    assert manifests.objects[0].model.cluster_ip == "10.96.0.50" and manifests.warnings == []


def test_external_ips_and_source_ranges_are_read_and_checked(tmp_path):
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n"
    manifests = read(service + "  type: LoadBalancer\n  externalIPs: [192.0.2.10]\n"
                     "  loadBalancerSourceRanges: [203.0.113.0/24]\n", tmp_path)  # fmt: skip
    model = manifests.objects[0].model
    assert (model.external_ips, model.load_balancer_source_ranges, manifests.warnings) == (
        ["192.0.2.10"], ["203.0.113.0/24"], [])
    [message] = merged_problems(service + "  externalIPs: [192.0.2.999]\n", tmp_path)
    assert message == "Service default/s: '192.0.2.999' in externalIPs of service 'default/s' is not an IPv4 address " \
        "(e.g. 192.0.2.10)"


def test_health_check_node_port_is_read(tmp_path):
    service = ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n"
               "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 31234\n")  # fmt: skip
    manifests = read(service, tmp_path)
    assert (manifests.objects[0].model.health_check_node_port, manifests.warnings) == (31234, [])


def test_yaml_errors_and_limits_are_located(tmp_path):
    [message] = problems("apiVersion: v1\nkind: Pod\nmetadata: {name: [\n", tmp_path)
    assert message.startswith("app.yaml:4:1:") and "not valid YAML" in message
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
    )
    [message] = problems(bomb, tmp_path)
    assert "YAML nodes once its aliases are expanded" in message


# ---- reading: lists, directories, stdin -----------------------------------------------------
def test_a_v1_list_directories_and_stdin(tmp_path):
    listed = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        "  - " + POD.replace("client", name).replace("\n", "\n    ").rstrip() + "\n" for name in ("a", "b")
    )
    (tmp_path / "one.yaml").write_text(listed)
    (tmp_path / "two.yml").write_text(DEPLOYMENT)
    (tmp_path / "notes.txt").write_text("not a manifest")
    manifests = read_manifests([str(tmp_path)])
    assert [o.resource for o in manifests.objects] == ["pod/a", "pod/b", "deployment.apps/web"]
    from_stdin = read_manifests(["-"], namespace="team", stdin=io.StringIO(POD))
    assert from_stdin.objects[0].reference == "Pod team/client"
    with pytest.raises(EmuError, match="does not exist"):
        read_manifests([str(tmp_path / "missing.yaml")])


# ---- merging: namespaces, references, conflicts --------------------------------------------
def test_a_namespace_must_exist_or_come_with_the_manifests(tmp_path):
    text = POD.replace("name: client", "name: client\n  namespace: team")
    [message] = merged_problems(text, tmp_path)
    assert message.startswith('Pod team/client: namespace "team" not found; add a Namespace object named team')
    with_namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\n" + text
    topology, lines = merge(load_text(NODES), read(with_namespace, tmp_path), "the topology")
    assert lines == ["namespace/team created", "pod/client created"]
    assert [n.name for n in topology.namespaces] == ["team"]


def test_references_and_scheduling_are_checked_against_the_whole_topology(tmp_path):
    text = POD.replace("    - name: shell\n", "    - name: shell\n      envFrom: [{configMapRef: {name: settings}}]\n")
    text = text.replace("spec:\n", "spec:\n  nodeSelector: {disk: hdd}\n")
    found = merged_problems(text, tmp_path)
    assert any("ConfigMap 'default/settings' does not exist (ConfigMaps in default: none)" in m for m in found)
    assert any("no node fits these pods (nodeSelector {'disk': 'hdd'}" in m and "w1: " in m for m in found)


def test_configmap_keys_must_exist_unless_optional(tmp_path):
    config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {color: blue}\n---\n"
    ref = "      env: [{name: C, valueFrom: {configMapKeyRef: {name: settings, key: colour%s}}}]\n"
    text = config + POD.replace("    - name: shell\n", "    - name: shell\n" + ref % "")
    [message] = merged_problems(text, tmp_path)
    assert "ConfigMap 'default/settings' has no key 'colour' (its keys: color)" in message
    merge(load_text(NODES), read(config + POD.replace("    - name: shell\n", "    - name: shell\n" + ref % ", optional: true"), tmp_path), "t")


def test_conflicts_with_what_runs_are_reported_at_the_manifest(tmp_path):
    base = NODES + "services:\n  - {name: web, type: NodePort, ports: [{port: 80, nodePort: 30080}]}\n"
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 30080}]\n"
    with pytest.raises(ManifestError) as caught:
        merge(load_text(base), read(service, tmp_path), "cluster 'lab'")
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == ("spec.ports[0].nodePort", 6)
    assert problem.message == "Service default/other: nodePort 30080 is taken by service 'default/web'"


def test_apply_replaces_in_place_and_reports_like_kubectl(tmp_path):
    base = load_text(NODES + "deployments:\n  - name: web\n    template:\n      labels: {app: web}\n"
                     "      containers: [{name: c, command: [sleep, infinity]}]\n  - name: other\n"
                     "    template:\n      containers: [{name: c, command: [sleep, infinity]}]\n")  # fmt: skip
    topology, lines = merge(base, read(DEPLOYMENT + "---\n" + POD, tmp_path), "t")
    assert lines == ["deployment.apps/web configured", "pod/client created"]
    assert [d.name for d in topology.deployments] == ["web", "other"]  # its place kept
    again, lines = merge(topology, read(DEPLOYMENT, tmp_path), "t")
    assert lines == ["deployment.apps/web unchanged"] and again == topology


def test_delete_removes_what_the_file_made_and_a_namespace_with_its_objects(tmp_path):
    topology, _ = merge(load_text(NODES), read_manifests([str(SHOP)]), "t")
    extra = POD.replace("name: client", "name: client\n  namespace: shop")
    topology, _ = merge(topology, read(extra, tmp_path), "t")
    namespace_only = read("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n", tmp_path)
    after, deleted, missing = remove(topology, namespace_only, "t")
    assert deleted == ['namespace "shop" deleted'] and missing == []
    assert not after.pods and not after.deployments and not after.stateful_sets and not after.config_maps
    after, deleted, missing = remove(after, read(DEPLOYMENT, tmp_path), "t")
    assert deleted == [] and missing == ['deployments.apps "web" not found in namespace default']
    with pytest.raises(EmuError, match="namespace kube-system cannot be deleted"):
        remove(after, read("apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n", tmp_path), "t")


def test_deleting_a_configmap_that_pods_use_is_refused(tmp_path):
    topology, _ = merge(load_text(NODES), read_manifests([str(SHOP)]), "t")
    config = read("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shop-config, namespace: shop}\n", tmp_path)
    with pytest.raises(ManifestError, match="ConfigMap 'shop/shop-config' does not exist"):
        remove(topology, config, "t")


def test_a_topology_names_manifests_beside_it(tmp_path):
    (tmp_path / "app.yaml").write_text(DEPLOYMENT)
    (tmp_path / "lab.yaml").write_text(NODES + "manifests: [app.yaml]\n")
    topology = load_file(tmp_path / "lab.yaml")
    assert [d.name for d in topology.deployments] == ["web"] and topology.manifests == []
    assert include(load_text(NODES), []) == load_text(NODES)


def test_network_policies_ingresses_and_tls_secrets(tmp_path):
    import base64

    edge = ROOT / "tests" / "integration" / "manifests" / "shop-edge.yaml"
    topology, lines = merge(load_text(NODES), read_manifests([str(SHOP), str(edge)]), "t")
    assert lines[-3:] == ["networkpolicy.networking.k8s.io/backend-from-frontend created",
                          "ingress.networking.k8s.io/shop created", "pod/visitor created"]  # fmt: skip
    [policy] = topology.network_policies
    assert policy.pod_selector.match_labels == {"app": "backend"} and policy.ingress[0].ports[0].port == "http"
    [ingress] = topology.ingresses
    assert ingress.rules[0].http.paths[0].backend.service.port.number == 80
    pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    secret = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\n"
        f"data: {{tls.crt: {base64.b64encode(pem.encode()).decode()}}}\nstringData: {{tls.key: 'k'}}\n"
    )
    [model] = [o.model for o in read(secret, tmp_path).objects]
    assert model.string_data == {"tls.crt": pem, "tls.key": "k"}
    opaque = read("apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: x}\n", tmp_path)
    assert opaque.objects == [] and "a Secret of type Opaque is not modelled" in opaque.warnings[0]
    [message] = problems(secret.replace("data: {tls.crt: ", "data: {tls.crt: '%%%'}\n#"), tmp_path)
    assert "data.tls.crt is not base64" in message
