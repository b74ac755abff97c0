"""emu/apiserver/openapi.py and its generated documents: what they hold, the lookups the
server makes in them, and real kubectl (1.27 and 1.33) reading them from a small HTTP
server that serves them next to a minimal discovery."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from emu.apiserver import openapi

ROOT = Path(__file__).resolve().parents[3]

SERVED = [  # (apiVersion, kind) of every kind the server serves
    ("v1", "Namespace"), ("v1", "Node"), ("v1", "Pod"), ("v1", "Service"), ("v1", "Endpoints"),
    ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ServiceAccount"), ("v1", "Event"), ("v1", "Binding"),
    ("events.k8s.io/v1", "Event"), ("discovery.k8s.io/v1", "EndpointSlice"), ("coordination.k8s.io/v1", "Lease"),
    ("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"), ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"),
    ("autoscaling/v1", "Scale"), ("networking.k8s.io/v1", "NetworkPolicy"), ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "IngressClass"), ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"), ("authorization.k8s.io/v1", "SubjectAccessReview"),
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview"),
    ("authentication.k8s.io/v1", "SelfSubjectReview"), ("authentication.k8s.io/v1", "TokenRequest"),
    ("v1", "Status"), ("v1", "DeleteOptions"), ("v1", "WatchEvent"), ("v1", "APIResourceList"),
]  # fmt: skip

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                 "annotations": {"note": "x"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front"]}]},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
        "template": {
            "metadata": {"labels": {"app": "web", "tier": "front"}},
            "spec": {
                "containers": [{
                    "name": "web", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
                    "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
                    "env": [{"name": "A", "value": "1"},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                    "volumeMounts": [{"name": "conf", "mountPath": "/etc/nginx/conf.d"}],
                    "securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
                }],
                "volumes": [{"name": "conf", "configMap": {"name": "web-conf", "items": [
                    {"key": "default.conf", "path": "default.conf"}]}}],
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                      "labelSelector": {"matchLabels": {"app": "web"}}}}]}},
                "terminationGracePeriodSeconds": 30,
                "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
            },
        },
    },
}  # fmt: skip
SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "web"},
    "spec": {"type": "NodePort", "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
             "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
             "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}],
             "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
}  # fmt: skip
INGRESS = {
    "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
    "metadata": {"name": "web", "annotations": {"a": "b"}},
    "spec": {"ingressClassName": "emu", "tls": [{"hosts": ["web.example"], "secretName": "tls"}],
             "defaultBackend": {"service": {"name": "web", "port": {"name": "http"}}},
             "rules": [{"host": "web.example", "http": {"paths": [
                 {"path": "/", "pathType": "Prefix",
                  "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
}  # fmt: skip
NETWORK_POLICY = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "np"},
    "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
             "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {"matchLabels": {"x": "y"}}},
                                   {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                          "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}, {"port": "http"}]}],
             "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]},
}  # fmt: skip


# ---------------------------------------------------------------------------
# The documents


def test_v2_is_json_with_every_kind_served_and_a_path_for_each_verb():
    doc = json.loads(openapi.v2())
    assert doc["swagger"] == "2.0"
    for api_version, kind in SERVED:
        name = openapi.definition_for(api_version, kind)
        assert name, (api_version, kind)
        assert name in doc["definitions"]
    assert openapi.definition_for("v1", "Pod") == "io.k8s.api.core.v1.Pod"
    assert openapi.definition_for("apps/v1", "Deployment") == "io.k8s.api.apps.v1.Deployment"
    assert openapi.definition_for("v1", "Status") == "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
    pod_item = doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]
    assert set(pod_item) >= {"get", "put", "patch", "delete", "parameters"}
    assert {p["name"] for p in pod_item["patch"]["parameters"]} >= {
        "fieldValidation",
        "fieldManager",
        "dryRun",
        "force",
    }
    assert pod_item["patch"]["x-kubernetes-group-version-kind"] == {"group": "", "kind": "Pod", "version": "v1"}
    scale = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]
    assert scale["patch"]["x-kubernetes-group-version-kind"]["kind"] == "Scale"
    # every $ref points at a definition in the document
    refs = set(re.findall(r'"\$ref":"#/definitions/([^"]+)"', openapi.v2().decode()))
    assert refs and refs <= set(doc["definitions"])


def test_every_resource_the_server_serves_has_its_schema_and_paths():
    """The contract with resources.py (the core helper's table of kinds): every kind,
    list, subresource and verb it serves is in the documents."""
    resources = pytest.importorskip("emu.apiserver.resources", reason="resources.py is not merged in yet")
    doc = json.loads(openapi.v2())
    for r in resources.RESOURCES:
        if r.kind == "CustomResourceDefinition":
            # Not in the documents yet: JSONSchemaProps' free-form fields (default, enum, example,
            # additionalProperties, items...) have no entries in scripts/kubernetes_openapi.py. kubectl
            # then validates nothing client-side for a CRD and leaves it to the server (crd.py).
            continue
        assert openapi.definition_for(r.api_version, r.kind), r
        base = f"/api/{r.version}" if not r.group else f"/apis/{r.group}/{r.version}"
        ns = "/namespaces/{namespace}" if r.namespaced else ""
        collection = doc["paths"].get(f"{base}{ns}/{r.plural}", {})
        item = doc["paths"].get(f"{base}{ns}/{r.plural}/{{name}}", {})
        methods = {"create": (collection, "post"), "list": (collection, "get"), "deletecollection": (collection, "delete"),
                   "get": (item, "get"), "update": (item, "put"), "patch": (item, "patch"), "delete": (item, "delete")}  # fmt: skip
        for verb in r.verbs:
            if verb in methods:
                where, method = methods[verb]
                assert method in where, (r.plural, verb)
        if "list" in r.verbs:
            assert openapi.definition_for(r.api_version, r.kind + "List"), r
        for sub in r.subresources:
            entry = doc["paths"].get(f"{base}{ns}/{r.plural}/{{name}}/{sub.name}")
            assert entry, (r.plural, sub.name)
            for verb in sub.verbs:
                method = {"get": "get", "update": "put", "patch": "patch", "create": "post"}[verb]
                assert method in entry, (r.plural, sub.name, verb)
                gvk = entry[method]["x-kubernetes-group-version-kind"]
                assert gvk["kind"] == (sub.kind or r.kind), (r.plural, sub.name, gvk)


def test_v3_index_lists_every_group_version_and_each_document_is_self_contained():
    paths = openapi.v3_index()["paths"]
    groups = ["apps", "events.k8s.io", "discovery.k8s.io", "coordination.k8s.io", "networking.k8s.io",
              "rbac.authorization.k8s.io", "authorization.k8s.io", "authentication.k8s.io"]  # fmt: skip
    assert set(paths) == {"api", "api/v1", "apis", "version"} | {f"apis/{g}" for g in groups} | {
        f"apis/{g}/v1" for g in groups
    }
    assert list(json.loads(openapi.v3("apis/apps"))["paths"]) == ["/apis/apps/"]
    version = json.loads(openapi.v3("version"))
    assert set(version["components"]["schemas"]) == {"io.k8s.apimachinery.pkg.version.Info"}
    for gv, entry in paths.items():
        assert re.fullmatch(rf"/openapi/v3/{re.escape(gv)}\?hash=[0-9A-F]{{128}}", entry["serverRelativeURL"])
        doc = json.loads(openapi.v3(gv))
        assert doc["openapi"].startswith("3.0")
        schemas = doc["components"]["schemas"]
        refs = set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', openapi.v3(gv).decode()))
        assert refs <= set(schemas), refs - set(schemas)
        # kubectl's check that the server validates fields: each kind's PATCH has fieldValidation
        for item in doc["paths"].values():
            if "patch" in item:
                assert "application/strategic-merge-patch+json" in item["patch"]["requestBody"]["content"]
                assert any(p["name"] == "fieldValidation" and p["in"] == "query" for p in item["patch"]["parameters"])
    assert openapi.v3("apis/nope/v1") is None
    apps = json.loads(openapi.v3("apis/apps/v1"))["components"]["schemas"]
    assert apps["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"] == [
        {"group": "apps", "kind": "Deployment", "version": "v1"}
    ]
    assert "io.k8s.api.core.v1.PodSpec" in apps and "io.k8s.api.autoscaling.v1.Scale" in apps


def test_handle_negotiates_json_and_protobuf_and_refuses_the_rest():
    status, headers, body = openapi.handle("/openapi/v2", "", "application/json")
    assert (status, headers["Content-Type"]) == (200, "application/json") and body == openapi.v2()
    for asked in (openapi.PROTOBUF_V2_ASKED, openapi.PROTOBUF_V2):
        status, headers, body = openapi.handle("/openapi/v2", "", asked)
        assert (status, headers["Content-Type"]) == (200, openapi.PROTOBUF_V2) and body == openapi.v2_protobuf()
    assert openapi.handle("/openapi/v2", "", "text/html")[0] == 406
    status, _, body = openapi.handle("/openapi/v3", "", "application/json")
    assert status == 200 and json.loads(body) == openapi.v3_index()
    url = openapi.v3_index()["paths"]["api/v1"]["serverRelativeURL"]
    status, headers, body = openapi.handle("/openapi/v3/api/v1", url.split("?")[1], "application/json")
    assert status == 200 and headers["Cache-Control"] == "public, immutable" and body == openapi.v3("api/v1")
    status, headers, _ = openapi.handle("/openapi/v3/api/v1", "hash=0000", "")
    assert status == 301 and headers["Location"] == url
    assert openapi.handle("/openapi/v3/apis/nope/v1", "", "") is None
    assert openapi.handle("/openapi/v3//api/v1/", "", "")[2] == openapi.v3("api/v1")
    for path, asked, plain in [("/openapi/v2", "application/json", openapi.v2()),
                               ("/openapi/v2", openapi.PROTOBUF_V2_ASKED, openapi.v2_protobuf()),
                               ("/openapi/v3/apis/apps/v1", "", openapi.v3("apis/apps/v1"))]:  # fmt: skip
        status, headers, body = openapi.handle(path, "", asked, "gzip, deflate")
        assert status == 200 and headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == plain
        assert "Content-Encoding" not in openapi.handle(path, "", asked, "gzip;q=0")[1]
    assert openapi.handle("/api/v1", "", "") is None


def test_the_protobuf_v2_document_decodes_to_the_json_document():
    """A small protobuf reader (wire format only) walks the message: every definition and
    path of the JSON document is there, with the vendor extensions as YAML/JSON text."""
    doc = _fields(openapi.v2_protobuf())
    assert doc[1] == [b"2.0"]
    definitions = {_fields(d)[1][0].decode(): _fields(_fields(d)[2][0]) for d in _fields(doc[9][0])[1]}
    as_json = json.loads(openapi.v2())
    assert set(definitions) == set(as_json["definitions"])
    pod = definitions["io.k8s.api.core.v1.Pod"]
    extensions = {_fields(e)[1][0].decode(): json.loads(_fields(_fields(e)[2][0])[2][0]) for e in pod[31]}
    assert extensions["x-kubernetes-group-version-kind"] == [{"group": "", "kind": "Pod", "version": "v1"}]
    spec = definitions["io.k8s.api.core.v1.PodSpec"]
    props = {_fields(p)[1][0].decode(): _fields(_fields(p)[2][0]) for p in _fields(spec[25][0])[1]}
    containers = props["containers"]
    assert _fields(containers[22][0])[1] == [b"array"]
    ext = {_fields(e)[1][0].decode(): json.loads(_fields(_fields(e)[2][0])[2][0]) for e in containers[31]}
    assert ext["x-kubernetes-patch-strategy"] == "merge" and ext["x-kubernetes-patch-merge-key"] == "name"
    paths = {_fields(p)[1][0].decode() for p in _fields(doc[8][0])[2]}
    assert paths == set(as_json["paths"])


def _fields(message: bytes) -> dict[int, list]:
    """Decode one protobuf message level: {field number: [bytes or int, ...]}."""
    out: dict[int, list] = {}
    i = 0
    while i < len(message):
        key, i = _read_varint(message, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(message, i)
        elif wire == 2:
            size, i = _read_varint(message, i)
            value, i = message[i : i + size], i + size
        elif wire == 1:
            value, i = message[i : i + 8], i + 8
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.setdefault(field, []).append(value)
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


# ---------------------------------------------------------------------------
# Lookups


def test_patch_schema_follows_containers_to_their_merge_key():
    pod = openapi.patch_schema("v1", "Pod")
    spec, strategy, key = pod.field("spec")
    assert (strategy, key) == ("", "") and spec.name == "io.k8s.api.core.v1.PodSpec"
    containers, strategy, key = spec.field("containers")
    assert (strategy, key) == ("merge", "name") and containers.name == "io.k8s.api.core.v1.Container"
    assert containers.field("ports")[1:] == ("merge", "containerPort")
    assert containers.field("env")[1:] == ("merge", "name")
    assert containers.field("image") == (None, "", "")
    assert containers.field("args") == (None, "", "")  # a list of strings: atomic
    assert spec.field("volumes")[1:] == ("merge,retainKeys", "name")
    assert spec.field("nodeSelector") == (None, "", "")  # a map of strings
    assert spec.field("tolerations")[1:] == ("", "")
    assert containers.list_type("ports") == ("map", ("containerPort", "protocol"))
    assert spec.list_type("tolerations") == ("atomic", ())
    assert spec.list_type("containers") == ("map", ("name",))
    assert spec.list_type("nodeName") == ("", ())
    assert spec.field("nonsense") == (None, "", "")
    meta, _, _ = pod.field("metadata")
    assert meta.field("finalizers") == (None, "merge", "")
    assert meta.field("ownerReferences")[1:] == ("merge", "uid")
    deployment = openapi.patch_schema("apps/v1", "Deployment")
    dspec = deployment.field("spec")[0]
    assert dspec.field("selector")[0].atomic and not dspec.atomic
    assert dspec.field("strategy")[1:] == ("retainKeys", "")
    template_spec = dspec.field("template")[0].field("spec")[0]
    assert template_spec.field("containers")[1:] == ("merge", "name")
    assert openapi.patch_schema("v1", "Service").field("spec")[0].field("ports")[1:] == ("merge", "port")
    assert dspec.field("strategy")[0].field("rollingUpdate")[0].field("maxSurge") == (None, "", "")  # IntOrString
    assert openapi.patch_schema("example.com/v1", "Widget") is None
    assert openapi.patch_schema("v1", "Pod") is pod  # cached


def test_unknown_fields_names_misspelled_nested_fields_as_strict_decoding_does():
    bad = json.loads(json.dumps(DEPLOYMENT))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy")
    container["ports"][0]["containerport"] = 81
    bad["spec"]["replica"] = 3
    bad["metadata"]["label"] = {}
    assert openapi.unknown_fields("apps/v1", "Deployment", bad) == [  # in document order
        "metadata.label",
        "spec.template.spec.containers[0].ports[0].containerport",
        "spec.template.spec.containers[0].imagePullPolicyy",
        "spec.replica",
    ]
    assert openapi.unknown_fields("v1", "Service", {"apiVersion": "v1", "kind": "Service",
                                                    "spec": {"ports": [{"port": 1, "targetport": 2}]}}) == [
        "spec.ports[0].targetport"
    ]  # fmt: skip


@pytest.mark.parametrize("manifest", [DEPLOYMENT, SERVICE, INGRESS, NETWORK_POLICY], ids=lambda m: m["kind"])
def test_unknown_fields_finds_nothing_in_realistic_manifests(manifest):
    assert openapi.unknown_fields(manifest["apiVersion"], manifest["kind"], manifest) == []


def test_free_form_fields_are_not_walked():
    event = {"type": "ADDED", "object": {"anything": {"goes": 1}}}
    assert openapi.unknown_fields("v1", "WatchEvent", event) == []
    pod = {"metadata": {"managedFields": [{"fieldsV1": {"f:spec": {}}, "manager": "m"}],
                        "labels": {"a": "b"}}}  # fmt: skip
    assert openapi.unknown_fields("v1", "Pod", pod) == []


# ---------------------------------------------------------------------------
# The generator


def test_the_generator_reproduces_the_committed_data_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts/kubernetes_openapi.py"), "--out", str(tmp_path)],
                   check=True, timeout=120)  # fmt: skip
    data = ROOT / "emu/apiserver/data"
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    assert generated == committed
    for rel in generated:
        assert (tmp_path / rel).read_bytes() == (data / rel).read_bytes(), rel


def test_the_committed_data_is_small():
    data = ROOT / "emu/apiserver/data"
    assert sum(p.stat().st_size for p in data.rglob("*.gz")) < 600_000
    assert gzip.decompress((data / "openapi-v2.json.gz").read_bytes()) == openapi.v2()


# ---------------------------------------------------------------------------
# Real kubectl against the documents


KUBECTLS = {
    "1.27": "/usr/lib/google-cloud-sdk/bin/kubectl.1.27",
    "1.33": "/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
}


def _discovery() -> tuple[dict, dict[str, dict]]:
    """/apis and each group-version's APIResourceList, read from the v3 documents' paths
    (the core helper's discovery.py serves the real ones)."""
    groups: dict[str, list[str]] = {}
    lists: dict[str, dict] = {}
    for gv in openapi.v3_index()["paths"]:
        if not re.fullmatch(r"api/v1|apis/[^/]+/[^/]+", gv):
            continue  # the documents of /api/, /apis/, /apis/<group>/, /version/
        doc = json.loads(openapi.v3(gv))
        resources: dict[str, dict] = {}
        for path, item in doc["paths"].items():
            m = re.fullmatch(
                rf"/{re.escape(gv)}(/namespaces/\{{namespace\}})?/([a-z]+)(/\{{name\}})?(/([a-z]+))?", path
            )
            if not m or path.startswith(f"/{gv}/watch"):
                continue
            namespaced, plural, sub = bool(m.group(1)), m.group(2), m.group(5)
            name = f"{plural}/{sub}" if sub else plural
            op = next((item[v] for v in ("get", "post", "put", "patch") if v in item), None)
            if op is None or name in resources and not sub and resources[name]["namespaced"]:
                continue
            gvk = op["x-kubernetes-group-version-kind"]
            verbs = set(resources.get(name, {}).get("verbs", []))
            verbs |= {{"get": "get", "list": "list", "post": "create", "put": "update", "patch": "patch",
                       "delete": "delete", "deletecollection": "deletecollection"}.get(o["x-kubernetes-action"], "get")
                      for o in item.values() if isinstance(o, dict) and "x-kubernetes-action" in o}  # fmt: skip
            if "list" in verbs:
                verbs.add("watch")
            resources[name] = {"name": name, "singularName": "" if sub else gvk["kind"].lower(),
                               "namespaced": namespaced or resources.get(name, {}).get("namespaced", False),
                               "kind": gvk["kind"], "verbs": sorted(verbs)}  # fmt: skip
            if gvk["group"] != ("" if gv == "api/v1" else gv.split("/")[1]):
                resources[name] |= {"group": gvk["group"], "version": gvk["version"]}
        group_version = gv.removeprefix("api/").removeprefix("apis/")
        lists["/" + gv] = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                           "resources": sorted(resources.values(), key=lambda r: r["name"])}  # fmt: skip
        if gv != "api/v1":
            groups.setdefault(group_version.split("/")[0], []).append(group_version)
    group_list = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": g, "versions": [{"groupVersion": v, "version": v.split("/")[1]} for v in vs],
         "preferredVersion": {"groupVersion": vs[0], "version": vs[0].split("/")[1]}}
        for g, vs in sorted(groups.items())]}  # fmt: skip
    return group_list, lists


class _Stub(BaseHTTPRequestHandler):
    """Discovery, OpenAPI and a toy object store: enough for kubectl explain/apply/create."""

    protocol_version = "HTTP/1.1"
    store: ClassVar[dict[str, dict]] = {}
    requests: ClassVar[list[tuple[str, str, str, bytes]]] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, status: int, body: bytes | dict, content_type: str = "application/json", headers=None):
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _status(self, code: int, reason: str, message: str):
        self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code})  # fmt: skip

    def _handle(self):
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append((self.command, self.path, self.headers.get("Content-Type", ""), body))
        served = openapi.handle(url.path, url.query, self.headers.get("Accept", ""))
        if served is not None:
            status, headers, content = served
            return self._send(status, content, headers.pop("Content-Type"), headers)
        groups, lists = self.server.discovery
        if url.path == "/version":
            return self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"})
        if url.path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})  # fmt: skip
        if url.path == "/apis":
            return self._send(200, groups)
        if url.path in lists:
            return self._send(200, lists[url.path])
        query = parse_qs(url.query)
        if self.command == "GET":
            if url.path in self.store:
                return self._send(200, self.store[url.path])
            return self._status(404, "NotFound", f'"{url.path.rsplit("/", 1)[1]}" not found')
        if self.command == "POST":
            obj = json.loads(body)
            unknown = openapi.unknown_fields(obj["apiVersion"], obj["kind"], obj)
            if unknown and query.get("fieldValidation") == ["Strict"]:
                kind = obj["kind"]
                fields = ", ".join(f'unknown field "{f}"' for f in unknown)
                return self._status(
                    400,
                    "BadRequest",
                    f'{kind} in version "{obj["apiVersion"].split("/")[-1]}" '
                    f"cannot be handled as a {kind}: strict decoding error: {fields}",
                )
            obj.setdefault("metadata", {})["resourceVersion"] = "1"
            self.store[f"{url.path}/{obj['metadata']['name']}"] = obj
            return self._send(201, obj)
        if self.command == "PATCH" and url.path in self.store:
            return self._send(200, self.store[url.path])
        return self._status(405, "MethodNotAllowed", "not supported by this stub")

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle


@pytest.fixture(scope="module")
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.daemon_threads = True
    server.discovery = _discovery()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _kubectl(version: str, server, tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    binary = KUBECTLS[version]
    if not os.access(binary, os.X_OK):
        pytest.skip(f"kubectl {version} is not installed at {binary}")
    home = tmp_path / f"home-{version}"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": str(home / "none")}
    cmd = [binary, "--server", f"http://127.0.0.1:{server.server_address[1]}", "--cache-dir", str(home / "cache"),
           *args]  # fmt: skip
    return subprocess.run(cmd, check=False, input=stdin, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_explain_reads_the_documents(stub, tmp_path, version):
    result = _kubectl(version, stub, tmp_path, "explain", "pods.spec.containers.ports")
    assert result.returncode == 0, result.stderr
    assert "KIND:" in result.stdout and "Pod" in result.stdout
    assert re.search(r"FIELD:\s+ports\s+<\[\]ContainerPort>", result.stdout), result.stdout
    assert re.search(r"containerPort\s+<integer>\s+-required-", result.stdout), result.stdout
    assert "Number of port to expose on the pod's IP address" in result.stdout
    result = _kubectl(version, stub, tmp_path, "explain", "deployment", "--recursive")
    assert result.returncode == 0, result.stderr
    head = result.stdout.splitlines()[:12]
    assert any(re.match(r"(GROUP|KIND):\s+(apps|Deployment)", line) for line in head), head
    assert re.search(r"^\s+maxSurge\s+<IntOrString>", result.stdout, re.MULTILINE), result.stdout[:2000]
    assert re.search(r"^\s+imagePullPolicy\s+<string>", result.stdout, re.MULTILINE)
    assert re.search(r"^\s+limits\s+<map\[string\]Quantity>", result.stdout, re.MULTILINE)
    assert re.search(r"^\s+creationTimestamp\s+<string>", result.stdout, re.MULTILINE)
    result = _kubectl(version, stub, tmp_path, "explain", "ingresses.spec.rules.http.paths.backend.service.port")
    assert result.returncode == 0, result.stderr
    assert "ServiceBackendPort" in result.stdout
    if version == "1.33":  # enum values (kubectl 1.27's template does not print them)
        result = _kubectl(version, stub, tmp_path, "explain", "pods.spec.containers.imagePullPolicy")
        assert result.returncode == 0, result.stderr
        assert re.search(r"ENUM:\s+Always\s+IfNotPresent\s+Never\s", result.stdout), result.stdout
    if version == "1.27":  # kubectl 1.27 still offers the v2 renderer: it reads the protobuf document
        result = _kubectl(version, stub, tmp_path, "explain", "pods.spec", "--output", "plaintext-openapiv2")
        assert result.returncode == 0, result.stderr
        assert re.search(r"containers\s+<\[\]Object> -required-", result.stdout), result.stdout


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_create_leaves_field_validation_to_the_server(stub, tmp_path, version):
    """kubectl finds fieldValidation on the kind's PATCH operation in /openapi/v3, so it
    skips its own validation and sends fieldValidation=Strict; the server's
    unknown_fields answer is what the user sees."""
    bad = json.loads(json.dumps(DEPLOYMENT))
    bad["metadata"]["name"] = f"bad-{version.replace('.', '')}"
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy")
    _Stub.requests.clear()
    result = _kubectl(version, stub, tmp_path, "create", "-f", "-", stdin=json.dumps(bad))
    assert result.returncode == 1
    assert 'strict decoding error: unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in result.stderr
    assert "ValidationError" not in result.stderr  # not kubectl's client-side validation
    posts = [r for r in _Stub.requests if r[0] == "POST"]
    assert posts and "fieldValidation=Strict" in posts[-1][1]


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_apply_computes_a_strategic_merge_patch_from_the_documents(stub, tmp_path, version):
    name = f"web-{version.replace('.', '')}"
    first = json.loads(json.dumps(DEPLOYMENT))
    first["metadata"]["name"] = name
    result = _kubectl(version, stub, tmp_path, "apply", "-f", "-", stdin=json.dumps(first))
    assert result.returncode == 0, result.stderr
    assert f"deployment.apps/{name} created" in result.stdout
    second = json.loads(json.dumps(first))
    second["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.28"
    second["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
    _Stub.requests.clear()
    result = _kubectl(version, stub, tmp_path, "apply", "-f", "-", stdin=json.dumps(second))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr  # 1.29+ warns when the v3 patch fails
    patches = [r for r in _Stub.requests if r[0] == "PATCH"]
    assert patches and patches[-1][2] == "application/strategic-merge-patch+json"
    patch = json.loads(patches[-1][3])
    spec = patch["spec"]["template"]["spec"]
    assert spec["$setElementOrder/containers"] == [{"name": "web"}, {"name": "sidecar"}]
    assert {"image": "nginx:1.28", "name": "web"} in spec["containers"]


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_validates_a_list_on_its_own_with_the_v2_protobuf_document(stub, tmp_path, version):
    """A `kind: List` is the one case kubectl still validates itself (the server's
    fieldValidation covers single objects): it reads the v2 document, as protobuf."""
    good = {"apiVersion": "v1", "kind": "List", "items": [DEPLOYMENT, SERVICE, INGRESS, NETWORK_POLICY]}
    result = _kubectl(version, stub, tmp_path, "create", "--dry-run=client", "-f", "-", stdin=json.dumps(good))
    assert result.returncode == 0, result.stderr
    assert "networkpolicy.networking.k8s.io/np created (dry run)" in result.stdout
    bad = json.loads(json.dumps(good))
    container = bad["items"][0]["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy")
    bad["items"][1]["spec"]["ports"][0]["port"] = "eighty"
    del bad["items"][2]["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    result = _kubectl(version, stub, tmp_path, "create", "--dry-run=client", "-f", "-", stdin=json.dumps(bad))
    assert result.returncode == 1
    for expected in (
        (
            'ValidationError(Deployment.spec.template.spec.containers[0]): unknown field "imagePullPolicyy" in '
            "io.k8s.api.core.v1.Container"
        ),
        (
            'ValidationError(Service.spec.ports[0].port): invalid type for io.k8s.api.core.v1.ServicePort.port: got "string", '
            'expected "integer"'
        ),
        (
            'ValidationError(Ingress.spec.rules[0].http.paths[0]): missing required field "pathType" in '
            "io.k8s.api.networking.v1.HTTPIngressPath"
        ),
    ):
        assert expected in result.stderr, result.stderr
