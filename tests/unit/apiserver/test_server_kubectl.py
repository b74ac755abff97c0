"""The real kubectl (v1.32, and the 1.27 and 1.33 builds) against emu's API server.

Until openapi.py lands, kubectl's client-side schema check has no OpenAPI to
read, so writes that validate pass --validate=false (kubectl's own advice)."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import select
import shutil
import subprocess
import time

import pytest

VALIDATE = [] if importlib.util.find_spec("emu.apiserver.openapi") else ["--validate=false"]
HAS_PATCH = importlib.util.find_spec("emu.apiserver.patch") is not None

APP = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
  labels: {app: web}
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: front}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
"""


def apply_app(kubectl, tmp_path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(APP)
    out = kubectl("apply", "-f", str(f), *VALIDATE)
    assert out.splitlines() == ["namespace/shop created", "configmap/web-config created",
                                "deployment.apps/web created", "service/web created"]


def test_version(kubectl):
    out = kubectl("version")
    # kubectl 1.27 prints version.Info{...}; later ones "Server Version: ..."
    assert "Server Version: v1.32.0-emu" in out or 'Server Version: version.Info{Major:"1", Minor:"32", ' \
        'EmulationMajor:"1"' in out or 'GitVersion:"v1.32.0-emu"' in out.split("Server Version")[-1]


def test_api_resources(kubectl):
    out = kubectl("api-resources")
    rows = {tuple(line.split()) for line in out.splitlines()[1:]}
    assert ("deployments", "deploy", "apps/v1", "true", "Deployment") in rows
    assert ("namespaces", "ns", "v1", "false", "Namespace") in rows
    assert ("networkpolicies", "netpol", "networking.k8s.io/v1", "true", "NetworkPolicy") in rows
    assert ("selfsubjectaccessreviews", "authorization.k8s.io/v1", "false", "SelfSubjectAccessReview") in rows
    namespaced_core = kubectl("api-resources", "--namespaced=true", "--api-group=", "-o", "name").split()
    assert "pods" in namespaced_core and "namespaces" not in namespaced_core


def test_get_and_create_namespace(kubectl):
    names = [line.split()[0] for line in kubectl("get", "ns").splitlines()[1:]]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    assert kubectl("create", "ns", "team-a").strip() == "namespace/team-a created"
    ns = json.loads(kubectl("get", "ns", "team-a", "-o", "json"))
    assert ns["status"]["phase"] == "Active"
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "team-a"
    assert ns["spec"]["finalizers"] == ["kubernetes"]


def test_apply_multi_document_and_get_outputs(kubectl, tmp_path):
    apply_app(kubectl, tmp_path)
    items = json.loads(kubectl("get", "deploy,svc,cm", "-n", "shop", "-o", "json"))["items"]
    kinds = {(i["kind"], i["metadata"]["name"]) for i in items}
    assert kinds == {("Deployment", "web"), ("Service", "web"), ("ConfigMap", "web-config")}
    deploy = next(i for i in items if i["kind"] == "Deployment")
    assert deploy["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
    assert deploy["metadata"]["generation"] == 1
    svc = next(i for i in items if i["kind"] == "Service")
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["targetPort"] == 80
    assert svc["spec"]["ports"][0]["protocol"] == "TCP" and svc["spec"]["sessionAffinity"] == "None"
    assert ipaddress.ip_address(svc["spec"]["clusterIP"]) in ipaddress.ip_network("10.96.0.0/12")
    assert "greeting: hello" in kubectl("get", "cm", "web-config", "-n", "shop", "-o", "yaml")
    assert kubectl("get", "deploy,svc", "-n", "shop", "-o", "name").split() == ["deployment.apps/web", "service/web"]
    wide = kubectl("get", "svc", "-n", "shop", "-o", "wide")
    assert wide.splitlines()[0].startswith("NAME") and "web" in wide.splitlines()[1]
    ip = kubectl("get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}")
    assert ip == svc["spec"]["clusterIP"]


def test_get_all_namespaces_and_selectors(kubectl, tmp_path):
    apply_app(kubectl, tmp_path)
    kubectl("create", "configmap", "other", "-n", "default", "--from-literal=k=v")
    out = kubectl("get", "cm", "-A")
    header = out.splitlines()[0].split()
    assert header[:2] == ["NAMESPACE", "NAME"]
    pairs = {tuple(line.split()[:2]) for line in out.splitlines()[1:]}
    assert {("shop", "web-config"), ("default", "other")} <= pairs
    assert kubectl("get", "cm", "-A", "-l", "app=web", "-o", "name").split() == ["configmap/web-config"]
    assert kubectl("get", "cm", "-A", "-l", "app notin (web)", "-o", "name").split() == ["configmap/other"]
    assert kubectl("get", "deploy", "-A", "-l", "app=web,tier in (front,back)", "-o", "name").split() == \
        ["deployment.apps/web"]
    assert kubectl("get", "cm", "-A", "--field-selector", "metadata.namespace=default", "-o", "name").split() == \
        ["configmap/other"]
    assert kubectl("get", "ns", "--field-selector", "metadata.name!=shop", "-o", "name").split() == \
        ["namespace/default", "namespace/kube-node-lease", "namespace/kube-public", "namespace/kube-system"]
    bad = kubectl.run("get", "pods", "-A", "--field-selector", "spec.foo=x", check=False)
    assert bad.returncode == 1
    # kubectl puts its own "Unable to find ..." before the server's message
    assert bad.stderr.strip().startswith("Error from server (BadRequest): ")
    assert bad.stderr.strip().endswith(": field label not supported: spec.foo")


def test_create_configmap_label_annotate(kubectl):
    assert kubectl("create", "configmap", "settings", "--from-literal=a=1").strip() == "configmap/settings created"
    assert kubectl("label", "configmap", "settings", "tier=db").strip() == "configmap/settings labeled"
    # kubectl 1.27 prints "annotate", later ones "annotated"
    assert kubectl("annotate", "configmap", "settings", "note=hi").strip().startswith("configmap/settings annotate")
    cm = json.loads(kubectl("get", "cm", "settings", "-o", "json"))
    assert cm["metadata"]["labels"] == {"tier": "db"}
    assert cm["metadata"]["annotations"] == {"note": "hi"}
    assert cm["data"] == {"a": "1"}
    assert kubectl("label", "configmap", "settings", "tier-").strip() == "configmap/settings unlabeled"
    assert "labels" not in json.loads(kubectl("get", "cm", "settings", "-o", "json"))["metadata"]


def test_replace_with_stale_resource_version_is_a_conflict(kubectl, tmp_path):
    kubectl("create", "configmap", "web-config", "--from-literal=greeting=hello")
    f = tmp_path / "cm.json"
    f.write_text(kubectl("get", "cm", "web-config", "-o", "json"))
    kubectl("label", "cm", "web-config", "changed=yes")  # the stored object moves on
    stale = json.loads(f.read_text())
    stale["data"]["greeting"] = "bye"
    f.write_text(json.dumps(stale))
    p = kubectl.run("replace", "-f", str(f), *VALIDATE, check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == (
        f'Error from server (Conflict): error when replacing "{f}": Operation cannot be fulfilled on configmaps '
        '"web-config": the object has been modified; please apply your changes to the latest version and try again')
    fresh = json.loads(kubectl("get", "cm", "web-config", "-o", "json"))
    fresh["data"]["greeting"] = "bye"
    f.write_text(json.dumps(fresh))
    assert kubectl("replace", "-f", str(f), *VALIDATE).strip() == "configmap/web-config replaced"
    assert json.loads(kubectl("get", "cm", "web-config", "-o", "json"))["data"] == {"greeting": "bye"}


def test_delete(kubectl, tmp_path):
    apply_app(kubectl, tmp_path)
    assert kubectl("delete", "cm", "web-config", "-n", "shop").strip() == 'configmap "web-config" deleted'
    p = kubectl.run("get", "cm", "web-config", "-n", "shop", check=False)
    assert p.stderr.strip() == 'Error from server (NotFound): configmaps "web-config" not found'
    assert kubectl("delete", "ns", "shop", timeout=30).strip() == 'namespace "shop" deleted'
    p = kubectl.run("get", "ns", "shop", check=False)
    assert p.stderr.strip() == 'Error from server (NotFound): namespaces "shop" not found'
    assert kubectl("get", "deploy,svc", "-A", "-o", "name").strip() == ""


def test_get_watch_sees_an_added_object(kubectl):
    kubectl("create", "configmap", "first", "--from-literal=a=1")
    proc = kubectl.popen("get", "configmaps", "-w", "--request-timeout=20s")
    try:
        lines: list[str] = []
        pending = b""

        def read_until(name: str, deadline: float) -> bool:
            # raw reads: a buffered reader could hold a line that select() no longer reports
            nonlocal pending
            fd = proc.stdout.fileno()
            while time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(fd, 65536)
                if not data:
                    return False
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    lines.append(line.decode())
                    if line.split() and line.split()[0].decode() == name:
                        return True
            return False

        assert read_until("first", time.monotonic() + 15), lines
        kubectl("create", "configmap", "second", "--from-literal=b=2")
        assert read_until("second", time.monotonic() + 15), lines
        assert lines[0].split()[0] == "NAME"
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_auth_can_i_and_whoami(kubectl):
    assert kubectl("auth", "can-i", "create", "pods").strip() == "yes"
    assert kubectl("auth", "can-i", "delete", "deployments", "-n", "kube-system").strip() == "yes"
    if "1.27" in kubectl.path:
        return  # `auth whoami` came in kubectl 1.28 (v1 SelfSubjectReview)
    out = kubectl("auth", "whoami")
    assert re.search(r"Username\s+kubernetes-admin", out)
    assert re.search(r"Groups\s+\[system:masters system:authenticated\]", out)


def test_not_found_errors(kubectl):
    p = kubectl.run("get", "pod", "nope", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'
    p = kubectl.run("get", "deploy", "nope", "-n", "kube-system", check=False)
    assert p.stderr.strip() == 'Error from server (NotFound): deployments.apps "nope" not found'
    p = kubectl.run("get", "widgets", check=False)
    assert p.stderr.strip().endswith('the server doesn\'t have a resource type "widgets"')


def test_top_fails_as_on_a_cluster_without_metrics_server(kubectl):
    # kubectl top first looks for the group metrics.k8s.io in discovery (/api, /apis), which
    # kube-apiserver lists only once metrics-server registers its APIService; emu serves no
    # metrics, so kubectl says what it says on such a cluster, and the group's paths are 404.
    for args in (["top", "pods"], ["top", "pods", "-A"], ["top", "pod", "x", "-n", "kube-system"],
                 ["top", "pods", "--containers"], ["top", "nodes"], ["top", "node", "cp"]):
        p = kubectl.run(*args, check=False)
        assert (p.returncode, p.stdout, p.stderr) == (1, "", "error: Metrics API not available\n"), args
    p = kubectl.run("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == "Error from server (NotFound): the server could not find the requested resource"
    p = kubectl.run("get", "podmetrics", check=False)
    assert p.stderr.strip().endswith('the server doesn\'t have a resource type "podmetrics"')


def test_malformed_bodies_get_kube_apiservers_words(kubectl, tmp_path):
    # kubectl create --raw sends the file as it is: the server's decoder speaks as Go's encoding/json.
    url = "/api/v1/namespaces/default/configmaps"
    for body, said in [("{not json", "invalid character 'n' looking for beginning of object key string"),
                       ('{"data": {"a": NaN}}', "invalid character 'N' looking for beginning of value"),
                       ('{"metadata": {"name": "x"}', "unexpected end of JSON input"),
                       ("[]", 'json: cannot unmarshal array into Go value of type struct { APIVersion string '
                              '"json:\\"apiVersion,omitempty\\""; Kind string "json:\\"kind,omitempty\\"" }')]:
        (tmp_path / "body.json").write_text(body)
        p = kubectl.run("create", "--raw", url, "-f", str(tmp_path / "body.json"), check=False)
        assert p.returncode == 1
        assert p.stderr.strip() == ("Error from server (BadRequest): couldn't get version/kind; "
                                    f"json parse error: {said}")
    assert kubectl("get", "configmaps", "-o", "name") == ""  # nothing was written


UNKNOWN_KINDS = """\
apiVersion: v1
kind: Widget
metadata: {name: w}
---
apiVersion: apps/v2
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ok}
"""


def test_apply_with_unknown_kinds_applies_the_rest(kubectl_default, tmp_path):
    path = tmp_path / "unknown.yaml"
    path.write_text(UNKNOWN_KINDS)
    p = kubectl_default.run("apply", "-f", str(path), check=False)
    assert (p.returncode, p.stdout) == (1, "configmap/ok created\n"), p.stderr
    assert p.stderr.splitlines() == [
        f'resource mapping not found for name: "w" namespace: "" from "{path}": no matches for kind "Widget" in '
        'version "v1"', "ensure CRDs are installed first",
        f'resource mapping not found for name: "d" namespace: "" from "{path}": no matches for kind "Deployment" '
        'in version "apps/v2"', "ensure CRDs are installed first"]


def test_create_in_missing_namespace(kubectl):
    p = kubectl.run("create", "configmap", "x", "-n", "ghost", "--from-literal=a=b", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == 'error: failed to create configmap: namespaces "ghost" not found'


def test_invalid_name_is_422(kubectl):
    p = kubectl.run("create", "configmap", "Bad_Name", "--from-literal=a=b", check=False)
    assert p.returncode == 1
    assert p.stderr.strip().startswith(
        'error: failed to create configmap: ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: '
        '"Bad_Name": a lowercase RFC 1123 subdomain must consist of')


@pytest.mark.skipif(not HAS_PATCH, reason="strategic merge patch (kubectl apply of a change) needs patch.py")
def test_apply_twice_changes_the_object(kubectl, tmp_path):
    apply_app(kubectl, tmp_path)
    f = tmp_path / "app.yaml"
    f.write_text(APP.replace("replicas: 2", "replicas: 3"))
    out = kubectl("apply", "-f", str(f), *VALIDATE)
    assert "deployment.apps/web configured" in out
    deploy = json.loads(kubectl("get", "deploy", "web", "-n", "shop", "-o", "json"))
    assert deploy["spec"]["replicas"] == 3 and deploy["metadata"]["generation"] == 2


def test_scale(kubectl, tmp_path):
    apply_app(kubectl, tmp_path)
    assert kubectl("scale", "deploy", "web", "-n", "shop", "--replicas=5").strip() == "deployment.apps/web scaled"
    deploy = json.loads(kubectl("get", "deploy", "web", "-n", "shop", "-o", "json"))
    assert deploy["spec"]["replicas"] == 5 and deploy["metadata"]["generation"] == 2


@pytest.fixture()
def tls_cluster(tmp_path):
    """A server with the whole security stack (TLS with the cluster CA, certificates, RBAC,
    admission) over a PKI from emu.control.pki; yields (base_url, pki, kubeconfig writer)."""
    pki_mod = pytest.importorskip("emu.control.pki")
    kubeconfig = pytest.importorskip("emu.control.kubeconfig")
    from emu.apiserver.server import ApiServer, cluster_security
    from emu.apiserver.storage import Store

    pki = pki_mod.make_pki(["127.0.0.1"], "10.96.0.1", ["cp", "w1"])
    pki_dir = tmp_path / "pki"
    for rel, data in pki.files().items():
        (pki_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (pki_dir / rel).write_bytes(data)
    store = Store(str(tmp_path / "state.db"))
    server = ApiServer(store, log=open(tmp_path / "server.log", "w"), **cluster_security(store, str(pki_dir)))
    host, port = server.start(("127.0.0.1", 0))
    base = f"https://{host}:{port}"

    def config(name: str, cert: bytes, key: bytes) -> str:
        path = tmp_path / f"{name}.kubeconfig"
        path.write_text(kubeconfig.render("t", base, pki.ca_cert, cert, key))
        return str(path)

    try:
        yield base, pki, config
    finally:
        server.shutdown()
        store.close()


def test_tls_certificates_rbac_and_admission(tls_cluster, tmp_path):
    path = shutil.which("kubectl")
    if not path:
        pytest.skip("kubectl is not installed on this machine")
    base, pki, config = tls_cluster
    env = {**os.environ, "HOME": str(tmp_path)}

    def kubectl(cfg: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([path, "--kubeconfig", cfg, *args], capture_output=True, text=True, timeout=30, env=env)

    admin = config("admin", pki.admin_cert, pki.admin_key)
    p = kubectl(admin, "get", "ns", "-o", "name")
    assert p.returncode == 0, p.stderr
    assert "namespace/default" in p.stdout.split()
    assert kubectl(admin, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == \
        "kubernetes-admin"
    node_cert, node_key = pki.nodes["w1"]
    node = config("w1", node_cert, node_key)
    p = kubectl(node, "get", "clusterroles")
    assert p.returncode == 1
    assert p.stderr.strip() == ('Error from server (Forbidden): clusterroles.rbac.authorization.k8s.io is forbidden: '
                                'User "system:node:w1" cannot list resource "clusterroles" in API group '
                                '"rbac.authorization.k8s.io" at the cluster scope')
    assert kubectl(node, "auth", "can-i", "delete", "namespaces").stdout.strip() == "no"
    # NodeRestriction: a node may not create another node's Node object
    manifest = tmp_path / "node.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w2"}}))
    p = kubectl(node, "create", "-f", str(manifest), "--validate=false")
    assert p.returncode == 1
    assert p.stderr.strip() == (f'Error from server (Forbidden): error when creating "{manifest}": nodes "w2" is '
                                'forbidden: node "w1" is not allowed to modify node "w2"')
    anonymous = tmp_path / "anon.kubeconfig"
    anonymous.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: t, cluster: {{server: "{base}", insecure-skip-tls-verify: true}}}}]
contexts: [{{name: t, context: {{cluster: t, user: anon}}}}]
current-context: t
users: [{{name: anon, user: {{token: not-a-real-token}}}}]
""")
    p = kubectl(str(anonymous), "get", "ns")
    assert p.returncode == 1
    assert p.stderr.strip() == "error: You must be logged in to the server (Unauthorized)"


@pytest.mark.skipif(bool(VALIDATE), reason="field validation needs openapi.py")
def test_field_validation_strict_and_warn(kubectl, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "foo": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}))
    p = kubectl.run("apply", "-f", str(f), check=False)
    assert p.returncode == 1
    assert p.stderr.strip().endswith('Deployment in version "v1" cannot be handled as a Deployment: strict decoding '
                                     'error: unknown field "spec.foo"')
    p = kubectl.run("apply", "-f", str(f), "--validate=warn")
    assert 'Warning: unknown field "spec.foo"' in p.stderr
    assert json.loads(kubectl("get", "deploy", "web", "-o", "json"))["spec"]["replicas"] == 2


def test_typed_client_creates(kubectl):
    """kubectl's `create` subcommands (protobuf bodies from kubectl >= 1.32) make the objects they name."""
    kubectl("create", "secret", "generic", "creds", "--from-literal=user=admin", "--from-literal=pass=s3cret")
    secret = json.loads(kubectl("get", "secret", "creds", "-o", "json"))
    assert secret["type"] == "Opaque"
    assert secret["data"] == {"user": "YWRtaW4=", "pass": "czNjcmV0"}
    kubectl("create", "deployment", "web", "--image=nginx:1.25", "--replicas=0", "--port=80")
    deploy = json.loads(kubectl("get", "deploy", "web", "-o", "json"))
    assert deploy["spec"]["replicas"] == 0
    assert deploy["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    kubectl("create", "service", "nodeport", "web", "--tcp=80:8080")
    svc = json.loads(kubectl("get", "svc", "web", "-o", "json"))
    port = svc["spec"]["ports"][0]
    assert (svc["spec"]["type"], port["port"], port["targetPort"], port["protocol"]) == ("NodePort", 80, 8080, "TCP")
    assert 30000 <= port["nodePort"] <= 32767
    kubectl("create", "serviceaccount", "robot")
    kubectl("create", "role", "reader", "--verb=get,list", "--resource=pods")
    kubectl("create", "rolebinding", "robot-reads", "--role=reader", "--serviceaccount=default:robot")
    binding = json.loads(kubectl("get", "rolebinding", "robot-reads", "-o", "json"))
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}]
    kubectl("run", "box", "--image=busybox:1.36", "--restart=Never", "--", "sleep", "3600")
    pod = json.loads(kubectl("get", "pod", "box", "-o", "json"))
    assert pod["spec"]["containers"][0]["args"] == ["sleep", "3600"]
    assert pod["spec"]["restartPolicy"] == "Never" and pod["status"]["phase"] == "Pending"
    kubectl("create", "ingress", "shop", "--rule=shop.example/*=web:80")
    ing = json.loads(kubectl("get", "ingress", "shop", "-o", "json"))
    assert ing["spec"]["rules"][0]["host"] == "shop.example"
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {"name": "web",
                                                                                 "port": {"number": 80}}
