"""CustomResourceDefinitions (apiextensions.k8s.io/v1) and the custom resources they
define (emu.apiserver.crd), driven by the real kubectl and the Python client: a CRD
applied gets NamesAccepted and Established as kube-apiserver's controllers set them,
then its resources are discovered, created, listed, watched, patched (merge, JSON,
server-side apply; strategic merge is refused with 415), validated by their schema,
pruned of unknown fields, and deleted with the CRD."""

from __future__ import annotations

import json
import threading

import pytest

WIDGETS = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - name: Size
      type: integer
      jsonPath: .spec.size
    - name: Color
      type: string
      jsonPath: .spec.color
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              color: {type: string, enum: [red, blue]}
              label: {type: string, minLength: 2, pattern: '^[a-z]+$'}
              extra:
                type: object
                x-kubernetes-preserve-unknown-fields: true
          status:
            type: object
            properties:
              ready: {type: boolean}
"""

WIDGET = """\
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w1
  labels: {app: shop}
spec:
  size: 2
  color: red
"""

# A cluster-scoped kind with two versions (v1beta1 stored, v1 served too) and no columns.
GADGETS = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.tools.example.org
spec:
  group: tools.example.org
  scope: Cluster
  names: {plural: gadgets, kind: Gadget}
  versions:
  - name: v1beta1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
  - name: v1
    served: true
    storage: false
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def apply(kubectl, tmp_path, text: str, *flags: str, check: bool = True, name: str = "x.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return kubectl.run("apply", "-f", str(path), *flags, check=check)


@pytest.fixture()
def widgets(kubectl, tmp_path):
    """The Widget CRD applied; yields kubectl."""
    p = apply(kubectl, tmp_path, WIDGETS, name="crd.yaml")
    assert p.stdout == "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created\n"
    return kubectl


def test_a_crd_gets_its_names_accepted_and_is_established(widgets):
    kubectl = widgets
    assert kubectl("get", "crd").splitlines()[0].split() == ["NAME", "CREATED", "AT"]
    assert kubectl("get", "crds", "-o", "name") == "customresourcedefinition.apiextensions.k8s.io/widgets.example.com\n"
    out = kubectl("wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s")
    assert "condition met" in out
    crd = json.loads(kubectl("get", "crd", "widgets.example.com", "-o", "json"))
    status = crd["status"]
    assert status["acceptedNames"] == {"plural": "widgets", "singular": "widget", "shortNames": ["wd"],
                                       "kind": "Widget", "listKind": "WidgetList", "categories": ["all"]}
    assert status["storedVersions"] == ["v1"]
    conds = {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}
    assert conds == {"NamesAccepted": ("True", "NoConflicts", "no conflicts found"),
                     "Established": ("True", "InitialNamesAccepted", "the initial names have been accepted")}
    assert crd["spec"]["conversion"] == {"strategy": "None"} and crd["metadata"]["generation"] == 1


def test_custom_resources_are_discovered(widgets, apiserver):
    kubectl = widgets
    out = kubectl("api-resources", "--api-group=example.com").splitlines()
    assert [line.split() for line in out] == [["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"],
                                              ["widgets", "wd", "example.com/v1", "true", "Widget"]]
    assert "example.com/v1" in kubectl("api-versions").splitlines()
    raw = json.loads(kubectl("get", "--raw", "/apis/example.com/v1"))
    assert raw["groupVersion"] == "example.com/v1"
    assert [(r["name"], r["kind"], r["namespaced"]) for r in raw["resources"]] == [
        ("widgets", "Widget", True), ("widgets/status", "Widget", True)]
    assert raw["resources"][0]["shortNames"] == ["wd"] and raw["resources"][0]["categories"] == ["all"]
    group = json.loads(kubectl("get", "--raw", "/apis/example.com"))
    assert group["preferredVersion"] == {"groupVersion": "example.com/v1", "version": "v1"}


def test_kubectl_applies_gets_and_prints_custom_resources(widgets, tmp_path):
    kubectl = widgets
    assert apply(kubectl, tmp_path, WIDGET).stdout == "widget.example.com/w1 created\n"
    rows = [line.split() for line in kubectl("get", "widgets").splitlines()]
    assert rows[0] == ["NAME", "SIZE", "COLOR", "AGE"] and rows[1][:3] == ["w1", "2", "red"]
    assert [line.split()[:2] for line in kubectl("get", "wd").splitlines()] == [["NAME", "SIZE"], ["w1", "2"]]
    assert "widget.example.com/w1" in kubectl("get", "all", "-o", "name")  # its category
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json"))
    assert (obj["apiVersion"], obj["kind"], obj["spec"], obj["metadata"]["generation"]) == (
        "example.com/v1", "Widget", {"size": 2, "color": "red"}, 1)
    assert "kind: Widget" in kubectl("get", "widget.example.com", "w1", "-o", "yaml")
    # a change applied again: client-side apply falls back to a JSON merge patch for a custom resource
    assert apply(kubectl, tmp_path, WIDGET.replace("size: 2", "size: 3").replace("  color: red\n", "")
                 ).stdout == "widget.example.com/w1 configured\n"
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json"))
    assert obj["spec"] == {"size": 3} and obj["metadata"]["generation"] == 2
    assert kubectl("get", "widgets", "-l", "app=shop", "-o", "name") == "widget.example.com/w1\n"
    assert kubectl.run("get", "widgets", "-l", "app=other").stderr == "No resources found in default namespace.\n"
    assert kubectl("delete", "widget", "w1") == 'widget.example.com "w1" deleted\n'
    p = kubectl.run("get", "widget", "w1", check=False)
    assert p.stderr == 'Error from server (NotFound): widgets.example.com "w1" not found\n'


def test_patches_of_custom_resources_as_upstream_serves_them(widgets, tmp_path):
    kubectl = widgets
    apply(kubectl, tmp_path, WIDGET)
    p = kubectl.run("patch", "widget", "w1", "-p", '{"spec":{"size":4}}', check=False)
    assert p.returncode == 1
    assert p.stderr == ("error: application/strategic-merge-patch+json is not supported by example.com/v1, "
                        "Kind=Widget: the body of the request was in an unknown format - accepted media types "
                        "include: application/json-patch+json, application/merge-patch+json, "
                        "application/apply-patch+yaml\n")
    kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"spec":{"size":4}}')
    kubectl("patch", "widget", "w1", "--type=json", "-p", '[{"op":"replace","path":"/spec/color","value":"blue"}]')
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json"))
    assert obj["spec"] == {"size": 4, "color": "blue"} and obj["metadata"]["generation"] == 3
    out = apply(kubectl, tmp_path, WIDGET.replace("size: 2", "size: 5"), "--server-side", "--force-conflicts").stdout
    assert out == "widget.example.com/w1 serverside-applied\n"
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json", "--show-managed-fields"))
    assert obj["spec"] == {"size": 5, "color": "red"}
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply" for m in obj["metadata"]["managedFields"])


def test_status_subresource(widgets, tmp_path):
    kubectl = widgets
    apply(kubectl, tmp_path, WIDGET.replace("spec:", "status: {ready: true}\nspec:"))
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json"))
    assert "status" not in obj  # a create may not set status
    kubectl("patch", "widget", "w1", "--subresource=status", "--type=merge", "-p", '{"status":{"ready":true}}')
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json"))
    assert obj["status"] == {"ready": True} and obj["metadata"]["generation"] == 1
    # the main resource leaves status alone, and /status leaves the rest alone
    kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"status":{"ready":false},"spec":{"size":9}}')
    kubectl("patch", "widget", "w1", "--subresource=status", "--type=merge", "-p", '{"spec":{"size":1}}')
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json"))
    assert (obj["status"], obj["spec"]["size"], obj["metadata"]["generation"]) == ({"ready": True}, 9, 2)


def test_the_schema_validates_and_prunes(widgets, tmp_path):
    kubectl = widgets
    p = apply(kubectl, tmp_path, WIDGET.replace("size: 2", "size: big"), check=False)
    assert p.stderr == ('The Widget "w1" is invalid: spec.size: Invalid value: "string": spec.size in body must be '
                        'of type integer: "string"\n')
    p = apply(kubectl, tmp_path, WIDGET.replace("size: 2", "color: green").replace("  color: red\n", ""),
              check=False)
    assert p.stderr == ('The Widget "w1" is invalid: \n* spec.size: Required value\n* spec.color: Unsupported '
                        'value: "green": supported values: "red", "blue"\n')
    p = apply(kubectl, tmp_path, WIDGET.replace("size: 2", "size: 0\n  label: A"), check=False)
    assert p.stderr == ('The Widget "w1" is invalid: \n* spec.label: Invalid value: "A": spec.label in body should '
                        'be at least 2 chars long\n* spec.label: Invalid value: "A": spec.label in body should match '
                        "'^[a-z]+$'\n* spec.size: Invalid value: 0: spec.size in body should be greater than or equal "
                        "to 1\n")
    # kubectl asks for fieldValidation=Strict: an unknown field is refused
    p = apply(kubectl, tmp_path, WIDGET.replace("color: red", "shape: round"), check=False)
    assert p.stderr.endswith('Widget in version "v1" cannot be handled as a Widget: strict decoding error: unknown '
                             'field "spec.shape"\n'), p.stderr
    # without it the field is pruned; x-kubernetes-preserve-unknown-fields keeps what is under it
    text = WIDGET.replace("color: red", "shape: round\n  extra: {anything: [1, 2]}")
    apply(kubectl, tmp_path, text, "--validate=false")
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json"))
    assert obj["spec"] == {"size": 2, "extra": {"anything": [1, 2]}}


def test_python_client_crud_list_and_watch(widgets, apiserver):
    kubernetes = pytest.importorskip("kubernetes")
    api = kubernetes.client.CustomObjectsApi(apiserver.client())
    events = []
    w = kubernetes.watch.Watch()
    rv = api.list_namespaced_custom_object("example.com", "v1", "default", "widgets")["metadata"]["resourceVersion"]

    def watch():
        for ev in w.stream(api.list_namespaced_custom_object, "example.com", "v1", "default", "widgets",
                           label_selector="app=shop", resource_version=rv, timeout_seconds=10):
            events.append((ev["type"], ev["object"]["metadata"]["name"], ev["object"]["spec"]["size"]))
            if len(events) == 3:
                w.stop()

    t = threading.Thread(target=watch)
    t.start()
    body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "a", "labels": {"app": "shop"}},
            "spec": {"size": 1}}
    api.create_namespaced_custom_object("example.com", "v1", "default", "widgets", body)
    api.create_namespaced_custom_object("example.com", "v1", "default", "widgets",
                                        dict(body, metadata={"name": "other"}))
    api.patch_namespaced_custom_object("example.com", "v1", "default", "widgets", "a", {"spec": {"size": 2}})
    api.delete_namespaced_custom_object("example.com", "v1", "default", "widgets", "a")
    t.join(15)
    assert events == [("ADDED", "a", 1), ("MODIFIED", "a", 2), ("DELETED", "a", 2)]
    items = api.list_cluster_custom_object("example.com", "v1", "widgets")["items"]
    assert [i["metadata"]["name"] for i in items] == ["other"]
    with pytest.raises(kubernetes.client.ApiException) as e:
        api.create_namespaced_custom_object("example.com", "v1", "default", "widgets", dict(body, kind="Gizmo"))
    assert e.value.status == 400


def test_cluster_scoped_kind_with_two_versions(kubectl, tmp_path):
    apply(kubectl, tmp_path, GADGETS, name="crd.yaml")
    gadget = "apiVersion: tools.example.org/v1\nkind: Gadget\nmetadata: {name: g}\nspec: {x: 1}\n"
    assert apply(kubectl, tmp_path, gadget).stdout == "gadget.tools.example.org/g created\n"
    # preferred version: v1 (Kubernetes' version order), stored as v1beta1, served in either
    assert json.loads(kubectl("get", "gadget", "g", "-o", "json"))["apiVersion"] == "tools.example.org/v1"
    raw = json.loads(kubectl("get", "--raw", "/apis/tools.example.org/v1beta1/gadgets/g"))
    assert raw["apiVersion"] == "tools.example.org/v1beta1" and raw["spec"] == {"x": 1}
    assert kubectl("get", "gadgets").splitlines()[0].split() == ["NAME", "AGE"]
    p = kubectl.run("get", "--raw", "/apis/tools.example.org/v1/namespaces/default/gadgets", check=False)
    assert p.returncode == 1 and "NotFound" in p.stderr


def test_deleting_a_crd_deletes_its_resources_and_frees_its_names(widgets, tmp_path, apiserver):
    kubectl = widgets
    apply(kubectl, tmp_path, WIDGET)
    kubectl("create", "namespace", "other")
    apply(kubectl, tmp_path, WIDGET.replace("name: w1", "name: w2\n  namespace: other"))
    assert len(apiserver.store.list_objects("widgets.example.com")) == 2
    assert kubectl("delete", "crd", "widgets.example.com") == \
        'customresourcedefinition.apiextensions.k8s.io "widgets.example.com" deleted\n'
    assert apiserver.store.list_objects("widgets.example.com") == []
    assert apiserver.store.get("customresourcedefinitions.apiextensions.k8s.io", "", "widgets.example.com") is None
    p = kubectl.run("get", "--raw", "/apis/example.com/v1", check=False)
    assert p.returncode == 1
    # the same names again, from scratch
    apply(kubectl, tmp_path, WIDGETS, name="crd.yaml")
    assert kubectl("get", "widgets", "-A").strip() == "" or "No resources" in kubectl.run("get", "widgets").stderr


def test_a_terminating_crd_refuses_creates(widgets, tmp_path, apiserver):
    from emu.apiserver import crd

    store = apiserver.store
    apply(widgets, tmp_path, WIDGET.replace("metadata:", "metadata:\n  finalizers: [example.com/hold]"))
    key = "widgets.example.com"
    store.write(crd.CRD_KEY, "", key, crd.mark_deleted, crd.CRD_INFO.field_values)  # marked, not finalized yet
    p = apply(widgets, tmp_path, WIDGET.replace("name: w1", "name: w2"), check=False)
    assert 'widgets.example.com "w2" is forbidden: create not allowed while custom resource definition is ' \
           'terminating' in p.stderr
    # the finalizer waits for the resource's own finalizers
    done = threading.Thread(target=crd.finalize, args=(store, key), kwargs={"pause": 0.05})
    done.start()
    done.join(0.5)
    assert done.is_alive()
    c = store.get(crd.CRD_KEY, "", key)
    assert crd.condition(c, "Terminating")["reason"] == "InstanceDeletionInProgress"
    widgets("patch", "widget", "w1", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    done.join(10)
    assert not done.is_alive() and store.get(crd.CRD_KEY, "", key) is None


def test_invalid_crds_are_refused_as_upstream_words_it(kubectl, tmp_path):
    bad = WIDGETS.replace("name: widgets.example.com", "name: widgets.example.org")
    p = apply(kubectl, tmp_path, bad, check=False)
    assert p.stderr.strip() == ('The CustomResourceDefinition "widgets.example.org" is invalid: metadata.name: '
                                'Invalid value: "widgets.example.org": must be spec.names.plural+"."+spec.group')
    bad = WIDGETS.replace("widgets.example.com", "widgets.example").replace("group: example.com", "group: example")
    p = apply(kubectl, tmp_path, bad, check=False)
    assert 'spec.group: Invalid value: "example": should be a domain with at least one dot' in p.stderr
    bad = WIDGETS.replace("    storage: true\n", "    storage: false\n")
    p = apply(kubectl, tmp_path, bad, check=False)
    assert "spec.versions: Invalid value: " in p.stderr and "must have exactly one version marked as storage " \
                                                         "version" in p.stderr


def test_conflicting_names_are_not_accepted(widgets, tmp_path):
    kubectl = widgets
    other = (WIDGETS.replace("widgets.example.com", "gizmos.example.com").replace("plural: widgets", "plural: gizmos")
             .replace("singular: widget", "singular: gizmo"))
    apply(kubectl, tmp_path, other, name="other.yaml")
    crd = json.loads(kubectl("get", "crd", "gizmos.example.com", "-o", "json"))
    conds = {c["type"]: (c["status"], c["reason"], c["message"]) for c in crd["status"]["conditions"]}
    # the last conflict found names the reason, as the naming controller's
    assert conds["NamesAccepted"] == ("False", "ListKindConflict", '"WidgetList" is already in use')
    assert conds["Established"] == ("False", "NotAccepted", "not all names are accepted")
    assert "gizmos" not in kubectl("api-resources", "--api-group=example.com")


# ---------------------------------------------------------------- RBAC over TLS

ALICE_ROLE = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: widget-maker, namespace: default}
rules:
- apiGroups: [example.com]
  resources: [widgets]
  verbs: [get, list, watch, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-widgets, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: widget-maker}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
"""


@pytest.fixture()
def secured(tmp_path):
    """A secured API server (TLS, RBAC's bootstrap policy): run(who, *args) runs kubectl as
    the admin (system:masters) or as alice (no rights but her bindings)."""
    import os
    import shutil
    import subprocess

    from emu.apiserver.server import ApiServer, cluster_security
    from emu.apiserver.storage import Store
    from emu.control import kubeconfig
    from emu.control.pki import client_cert, make_pki

    path = shutil.which("kubectl")
    if not path:
        pytest.skip("kubectl is not installed on this machine")
    pki = make_pki(["127.0.0.1"], "10.96.0.1", ["cp"])
    pki.write(tmp_path / "pki")
    store = Store(str(tmp_path / "state.db"))
    server = ApiServer(store, **cluster_security(store, str(tmp_path / "pki")), log=open(os.devnull, "w"))
    host, port = server.start(("127.0.0.1", 0))
    alice = client_cert(pki.ca_cert, pki.ca_key, "alice", [])
    configs = {}
    for who, (cert, key) in {"admin": (pki.admin_cert, pki.admin_key), "alice": alice}.items():
        configs[who] = tmp_path / f"{who}.kubeconfig"
        configs[who].write_text(kubeconfig.render("lab", f"https://{host}:{port}", pki.ca_cert, cert, key))

    def run(who: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        home = tmp_path / f"home-{who}"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "KUBECONFIG": str(configs[who]), "HOME": str(home)}
        return subprocess.run([path, *args], env=env, capture_output=True, text=True, timeout=60, input=input)

    try:
        yield run
    finally:
        server.shutdown()
        store.close()


def test_rbac_applies_to_custom_resources(secured):
    assert secured("admin", "apply", "-f", "-", input=WIDGETS).returncode == 0
    assert secured("admin", "apply", "-f", "-", input=ALICE_ROLE).returncode == 0
    p = secured("alice", "get", "widgets")
    assert (p.returncode, p.stderr) == (0, "No resources found in default namespace.\n")
    p = secured("alice", "apply", "-f", "-", input=WIDGET)
    assert (p.returncode, p.stdout) == (0, "widget.example.com/w1 created\n"), p.stderr
    p = secured("alice", "get", "widgets", "-n", "kube-system")
    assert p.stderr == ('Error from server (Forbidden): widgets.example.com is forbidden: User "alice" cannot list '
                        'resource "widgets" in API group "example.com" in the namespace "kube-system"\n')
    p = secured("alice", "delete", "widget", "w1")
    assert p.stderr == ('Error from server (Forbidden): widgets.example.com "w1" is forbidden: User "alice" cannot '
                        'delete resource "widgets" in API group "example.com" in the namespace "default"\n')
    assert secured("alice", "auth", "can-i", "create", "widgets.example.com").stdout == "yes\n"
    assert secured("alice", "auth", "can-i", "patch", "widgets.example.com").stdout == "no\n"
    p = secured("alice", "get", "crds")
    assert "cannot list resource \"customresourcedefinitions\" in API group \"apiextensions.k8s.io\" at the " \
           "cluster scope" in p.stderr


def test_a_deleted_namespace_takes_its_custom_resources(widgets, tmp_path, apiserver):
    kubectl = widgets
    kubectl("create", "namespace", "shop")
    apply(kubectl, tmp_path, WIDGET.replace("name: w1", "name: w1\n  namespace: shop"))
    assert kubectl("delete", "namespace", "shop", "--timeout=20s") == 'namespace "shop" deleted\n'
    assert apiserver.store.list_objects("widgets.example.com") == []


def test_custom_resources_are_served_after_a_restart(kubectl_default, tmp_path, apiserver):
    kubectl = kubectl_default
    apply(kubectl, tmp_path, WIDGETS, name="crd.yaml")
    apply(kubectl, tmp_path, WIDGET)
    apiserver.restart()
    assert kubectl("get", "widgets", "-o", "name") == "widget.example.com/w1\n"
    assert json.loads(kubectl("get", "--raw", "/apis/example.com/v1"))["resources"][0]["name"] == "widgets"


def test_kubectl_explains_custom_resources_from_openapi_v3(widgets, apiserver):
    kubectl = widgets
    out = kubectl("explain", "widget.spec")
    assert "KIND:       Widget" in out and "VERSION:    v1" in out
    assert "size\t<integer> -required-" in out and "color\t<string>" in out
    index = json.loads(kubectl("get", "--raw", "/openapi/v3"))["paths"]
    assert "apis/example.com/v1" in index and "api/v1" in index
    doc = json.loads(kubectl("get", "--raw", index["apis/example.com/v1"]["serverRelativeURL"]))
    patch = doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    assert doc["components"]["schemas"]["com.example.v1.Widget"]["x-kubernetes-group-version-kind"] == [
        {"group": "example.com", "kind": "Widget", "version": "v1"}]


POOLS = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: pools.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: pools, kind: Pool}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas,
              labelSelectorPath: .status.selector}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            default: {}
            properties:
              replicas: {type: integer, default: 1}
              mode: {type: string, default: fast}
              ports:
                type: array
                items:
                  type: object
                  properties:
                    port: {type: integer}
                    protocol: {type: string, default: TCP}
          status: {type: object, properties: {replicas: {type: integer}, selector: {type: string}}}
"""


def test_scale_subresource_and_schema_defaults(kubectl, tmp_path):
    apply(kubectl, tmp_path, POOLS, name="crd.yaml")
    pool = "apiVersion: example.com/v1\nkind: Pool\nmetadata: {name: p}\n"
    apply(kubectl, tmp_path, pool)
    obj = json.loads(kubectl("get", "pool", "p", "-o", "json"))
    assert obj["spec"] == {"replicas": 1, "mode": "fast"}  # defaults, inside a defaulted object too
    kubectl("patch", "pool", "p", "--type=merge", "-p", '{"spec":{"ports":[{"port":80}]}}')
    obj = json.loads(kubectl("get", "pool", "p", "-o", "json"))
    assert obj["spec"]["ports"] == [{"port": 80, "protocol": "TCP"}]
    assert kubectl("scale", "pool", "p", "--replicas=4") == "pool.example.com/p scaled\n"
    kubectl("patch", "pool", "p", "--subresource=status", "--type=merge",
            "-p", '{"status":{"replicas":3,"selector":"app=p"}}')
    scale = json.loads(kubectl("get", "--raw", "/apis/example.com/v1/namespaces/default/pools/p/scale"))
    assert (scale["kind"], scale["spec"], scale["status"]) == (
        "Scale", {"replicas": 4}, {"replicas": 3, "selector": "app=p"})
    obj = json.loads(kubectl("get", "pool", "p", "-o", "json"))
    assert obj["spec"]["replicas"] == 4 and obj["metadata"]["generation"] == 3


def test_protected_groups_need_the_api_approval_annotation(kubectl, tmp_path):
    crd = WIDGETS.replace("widgets.example.com", "widgets.gw.networking.k8s.io").replace(
        "group: example.com", "group: gw.networking.k8s.io")
    p = apply(kubectl, tmp_path, crd, check=False)
    assert p.stderr.strip() == (
        'The CustomResourceDefinition "widgets.gw.networking.k8s.io" is invalid: '
        'metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval '
        'annotation "api-approved.kubernetes.io", see https://github.com/kubernetes/enhancements/pull/1111')
    approved = crd.replace("  name: widgets.gw.networking.k8s.io\n", "  name: widgets.gw.networking.k8s.io\n"
                           "  annotations: {api-approved.kubernetes.io: 'https://github.com/kubernetes/pull/1'}\n")
    assert apply(kubectl, tmp_path, approved).returncode == 0
    assert "widgets" in kubectl("api-resources", "--api-group=gw.networking.k8s.io")


def test_status_is_validated_and_watches_end_with_their_crd(widgets, tmp_path, apiserver):
    kubectl = widgets
    apply(kubectl, tmp_path, WIDGET)
    p = kubectl.run("patch", "widget", "w1", "--subresource=status", "--type=merge", "-p",
                    '{"status":{"ready":"yes"}}', check=False)
    assert p.stderr == ('The Widget "w1" is invalid: status.ready: Invalid value: "string": status.ready in body must '
                        'be of type boolean: "string"\n')
    watch = kubectl.popen("get", "widgets", "--watch", "--request-timeout=60s")
    try:
        assert watch.stdout.readline().split()[:2] == ["NAME", "SIZE"]
        kubectl("delete", "crd", "widgets.example.com")
        watch.wait(timeout=30)  # the watch ends once the CRD is gone, not after its minutes
    finally:
        watch.kill()
        watch.wait()


def test_a_conflicting_rename_keeps_the_accepted_names(widgets, tmp_path):
    kubectl = widgets
    other = (WIDGETS.replace("widgets.example.com", "gizmos.example.com").replace("plural: widgets", "plural: gizmos")
             .replace("singular: widget", "singular: gizmo").replace("kind: Widget", "kind: Gizmo")
             .replace("shortNames: [wd]", "shortNames: [gz]"))
    apply(kubectl, tmp_path, other, name="other.yaml")
    # Widget's CRD now asks for the kind Gizmo: refused, and it is still served as Widget
    apply(kubectl, tmp_path, WIDGETS.replace("kind: Widget", "kind: Gizmo"), name="crd.yaml")
    crd = json.loads(kubectl("get", "crd", "widgets.example.com", "-o", "json"))
    conds = {c["type"]: (c["status"], c["reason"], c["message"]) for c in crd["status"]["conditions"]}
    assert conds["NamesAccepted"] == ("False", "KindConflict", '"Gizmo" is already in use')
    assert conds["Established"][0] == "True" and crd["status"]["acceptedNames"]["kind"] == "Widget"
    assert apply(kubectl, tmp_path, WIDGET).stdout == "widget.example.com/w1 created\n"


def test_managed_fields_of_a_crd_name_its_writers(widgets):
    crd = json.loads(widgets("get", "crd", "widgets.example.com", "-o", "json", "--show-managed-fields"))
    entries = {(m["manager"], m.get("subresource", "")): m["fieldsV1"] for m in crd["metadata"]["managedFields"]}
    assert set(entries) == {("kubectl-client-side-apply", ""), ("kube-apiserver", "status")}
    assert "f:status" not in entries[("kubectl-client-side-apply", "")]  # status is reset on create: not the creator's
    assert set(entries[("kube-apiserver", "status")]["f:status"]) == {"f:acceptedNames", "f:conditions"}


def test_a_default_added_later_shows_on_older_objects(kubectl, tmp_path):
    apply(kubectl, tmp_path, POOLS.replace(", default: fast", ""), name="crd.yaml")
    apply(kubectl, tmp_path, "apiVersion: example.com/v1\nkind: Pool\nmetadata: {name: p}\n")
    assert json.loads(kubectl("get", "pool", "p", "-o", "json"))["spec"] == {"replicas": 1}
    apply(kubectl, tmp_path, POOLS, name="crd.yaml")  # mode gets a default: read, the stored object has it
    assert json.loads(kubectl("get", "pool", "p", "-o", "json"))["spec"] == {"replicas": 1, "mode": "fast"}
    assert kubectl("get", "pools", "-o", "jsonpath={.items[0].spec.mode}") == "fast"


def test_a_schema_that_names_metadata_prunes_none_of_it(kubectl, tmp_path):
    """Generated CRDs (Gateway API's, controller-gen's) say `metadata: {type: object}` at the root:
    ObjectMeta is the API's, neither pruned nor refused as unknown fields."""
    crd = WIDGETS.replace("        properties:\n          spec:",
                          "        properties:\n          metadata: {type: object}\n          spec:", 1)
    assert "metadata: {type: object}" in crd
    apply(kubectl, tmp_path, crd, name="crd.yaml")
    assert apply(kubectl, tmp_path, WIDGET).stdout == "widget.example.com/w1 created\n"
    obj = json.loads(kubectl("get", "widget", "w1", "-o", "json"))
    assert obj["metadata"]["labels"] == {"app": "shop"} and obj["metadata"]["name"] == "w1"
