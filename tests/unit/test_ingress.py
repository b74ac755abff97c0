"""The ingress controller's nginx.conf: golden text, and what each Ingress feature becomes."""

from __future__ import annotations

import re

from emu.node import ingress
from emu.node.services import all_endpoints
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

LAB = """\
name: lab
nodes: [{name: cp, role: control-plane, labels: {ingress-ready: "true"}}, {name: w1}]
deployments:
  - name: web
    replicas: 2
    template:
      labels: {app: web}
      containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
services:
  - {name: web, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
  - {name: none, selector: {app: none}, ports: [{port: 80}]}
ingresses:
  - name: main
    rules:
      - host: foo.example.com
        http:
          paths:
            - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
            - {path: /exact, pathType: Exact, backend: {service: {name: web, port: {name: http}}}}
            - {path: /down/, pathType: Prefix, backend: {service: {name: none, port: {number: 80}}}}
            - {path: /impl, pathType: ImplementationSpecific, backend: {service: {name: web, port: {number: 80}}}}
    tls: [{hosts: [secure.example.com]}]
  - name: other
    rules:
      - host: secure.example.com
        http: {paths: [{path: /app, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
      - host: foo.example.com
        http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: none, port: {number: 80}}}}]}
  - name: elsewhere
    ingressClassName: traefik
    defaultBackend: {service: {name: web, port: {number: 80}}}
"""


def state_and_endpoints(text: str = LAB, ready: bool = True):
    state = plan_cluster(load_text(text), "emu-lab", "172.28.5.0/24")
    return state, all_endpoints(state, {pod.uid: ready for pod in state.pods.values()})


def location_block(config: str, server: str, location: str) -> str:
    block = config.split(f"server_name {server};")[1].split("\n    }\n")[0]
    match = re.search(r"location " + re.escape(location) + r" \{[^\n]*\n(.*?)\n        \}", block, re.S)
    assert match, f"no location {location} for {server}"
    return match.group(1)


def test_config_matches_golden(golden):
    state, endpoints = state_and_endpoints()
    golden("ingress_nginx.conf", ingress.render(state, endpoints))


def test_controller_runs_in_its_namespace_on_the_ingress_ready_node_behind_a_load_balancer():
    state, _ = state_and_endpoints()
    pod = ingress.controller_pod(state)
    assert pod.namespace == "ingress-nginx" and pod.node == "cp"
    service = state.services["ingress-nginx/ingress-nginx-controller"]
    assert service.type == "LoadBalancer" and service.load_balancer_ip and [p.port for p in service.ports] == [80, 443]
    assert state.namespaces["ingress-nginx"]["kubernetes.io/metadata.name"] == "ingress-nginx"


def test_no_ingress_no_controller():
    state, _ = state_and_endpoints(LAB.split("ingresses:")[0])
    assert ingress.controller_pod(state) is None and "ingress-nginx/ingress-nginx-controller" not in state.services


def test_paths_become_nginx_locations_as_kubernetes_orders_them():
    state, endpoints = state_and_endpoints()
    config = ingress.render(state, endpoints)
    assert "proxy_pass http://upstream_default-web-http;" in location_block(config, "foo.example.com", "= /exact")
    # Prefix matches whole elements: /down and /down/..., never /downstream.
    assert location_block(config, "foo.example.com", "= /down") == location_block(config, "foo.example.com", "^~ /down/")
    assert "location ^~ /down " not in config
    assert "proxy_pass" in location_block(config, "foo.example.com", "^~ /impl")
    # The same host and path in a second Ingress: the first (by namespace/name) keeps it.
    assert "upstream_default-web-80" in location_block(config, "foo.example.com", "/")


def test_no_ready_endpoint_is_503_and_no_rule_is_404():
    state, endpoints = state_and_endpoints(ready=False)
    config = ingress.render(state, endpoints)
    assert location_block(config, "foo.example.com", "/").strip() == "return 503;"
    assert location_block(config, "_", "/").strip() == "return 404;"  # traefik's defaultBackend is not ours
    assert "\n    upstream " not in config


def test_tls_hosts_get_a_certificate_and_a_redirect():
    state, endpoints = state_and_endpoints()
    config = ingress.render(state, endpoints)
    secure = config.split("server_name secure.example.com;")[1].split("\n    }\n")[0]
    assert "return 308 https://$host$request_uri;" in secure
    name = ingress.tls_hosts(state)["secure.example.com"]
    assert name.startswith("self-signed-") and f"{ingress.CERT_DIR}/{name}.crt" in secure
    assert ingress.certificates(state)[name] == (["secure.example.com"], None)
    assert "return 308" not in config.split("server_name foo.example.com;")[1].split("\n    }\n")[0]


def test_forwarded_headers_are_set():
    state, endpoints = state_and_endpoints()
    config = ingress.render(state, endpoints)
    for header in ("X-Forwarded-For $remote_addr", "X-Real-IP $remote_addr", "X-Forwarded-Proto $scheme"):
        assert f"proxy_set_header {header};" in config


def test_describe_names_backends_and_why_none():
    state, endpoints = state_and_endpoints()
    rows = ingress.describe(state, "default/main", endpoints)
    assert ("foo.example.com", "/down/", "none:80", "<none> (no ready endpoint)") in rows
    assert any(row[2] == "web:80" and "10.244.1." in row[3] for row in rows)


def test_the_external_host_learns_the_ingress_hosts():
    state, _ = state_and_endpoints()
    address = state.services["ingress-nginx/ingress-nginx-controller"].load_balancer_ip
    assert ingress.hosts_entries(state) == f"{address}\tfoo.example.com\n{address}\tsecure.example.com\n"


def test_bad_edge_input_is_reported_before_anything_changes():
    import pytest

    from emu.errors import TopologyError

    bad = """\
nodes: [{name: a, extraPortMappings: [{containerPort: 80, hostPort: 8080}, {containerPort: 81, hostPort: 8080}]}]
ingresses:
  - {name: i, rules: [{host: a.example.com, http: {paths: [{path: /, backend: {service: {name: web, port: {number: 80}}}}]}}],
     tls: [{secretName: nope}]}
"""
    with pytest.raises(TopologyError) as error:
        load_text(bad)
    text = str(error.value)
    assert "host port 8080/TCP is mapped twice" in text
    assert "service 'default/web' is not in services" in text
    assert "secret 'default/nope' is not in secrets" in text
