"""Ingress through real nginx (ingress-nginx/ingress-nginx-controller), reached
from this machine through node port mappings (kind's extraPortMappings) and from
a host outside the cluster, proven with real requests."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from emu.cli import main as emu_main
from emu.api.topology.load import load_text
from tests.integration.conftest import in_proxy_mode

# A backend that answers with the request's headers as JSON. /slow is held open: it
# says it started (SLOW_STARTED) and answers once the test releases it (SLOW_RELEASE),
# or after 120 s. Files on the pod's node (a pod's /tmp is its node's).
SLOW_STARTED, SLOW_RELEASE = "/tmp/emu-test-slow-started", "/tmp/emu-test-slow-release"
HEADERS_SERVER = r"""
import http.server, json, os, socketserver, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.endswith("/slow"):
            open("%s", "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists("%s") and time.monotonic() < deadline:
                time.sleep(0.1)
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S(("0.0.0.0", 9000), H).serve_forever()
""" % (SLOW_STARTED, SLOW_RELEASE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def topology(http: int, https: int, node_port: int, ingresses: str, extra: str = "") -> str:
    headers = json.dumps(["python3", "-c", HEADERS_SERVER])
    return f"""\
name: ingress
nodes:
  - name: cp
    role: control-plane
    extraPortMappings: [{{containerPort: 80, hostPort: {http}}}, {{containerPort: 443, hostPort: {https}}}]
  - name: w1
    extraPortMappings: [{{containerPort: 30081, hostPort: {node_port}, listenAddress: 127.0.0.1}}]
  - name: w2
deployments:
  - name: echo
    replicas: 3
    template:
      labels: {{app: echo}}
      containers: [{{name: c, workload: netexec, ports: [{{name: http, containerPort: 8080}}]}}]
pods:
  - name: headers
    labels: {{app: headers}}
    containers: [{{name: c, command: {headers}, ports: [{{name: web, containerPort: 9000}}]}}]
services:
  - {{name: echo, type: NodePort, selector: {{app: echo}}, ports: [{{name: http, port: 80, targetPort: http, nodePort: 30081}}]}}
  - {{name: headers, selector: {{app: headers}}, ports: [{{name: web, port: 8000, targetPort: web}}]}}
  - {{name: empty, selector: {{app: nobody}}, ports: [{{port: 80}}]}}
{extra}ingresses:
{ingresses}"""


INGRESSES = """\
  - name: web
    ingressClassName: nginx
    rules:
      - host: web.example.com
        http:
          paths:
            - {path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}
            - {path: /exact, pathType: Exact, backend: {service: {name: headers, port: {name: web}}}}
    tls: [{hosts: [secure.example.com]}]
  - name: api
    rules:
      - host: web.example.com
        http: {paths: [{path: /api/, pathType: Prefix, backend: {service: {name: headers, port: {number: 8000}}}}]}
      - host: secure.example.com
        http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: headers, port: {number: 8000}}}}]}
  - name: down
    rules:
      - host: down.example.com
        http: {paths: [{path: /, pathType: ImplementationSpecific, backend: {service: {name: empty, port: {number: 80}}}}]}
"""


@pytest.fixture(scope="module")
def edge(make_module_cluster, proxy_mode):
    ports = {"http": free_port(), "https": free_port(), "node_port": free_port()}
    cluster = make_module_cluster(in_proxy_mode(topology(**ports, ingresses=INGRESSES), proxy_mode), f"ingress-{proxy_mode[:3]}")
    cluster.mode = proxy_mode
    cluster.ports = ports
    cluster.outside_ip = cluster.run_external("outside")
    return cluster


def get(port: int, path: str, host: str, scheme: str = "http", timeout: float = 5) -> tuple[int, str, dict]:
    """A request from this machine to 127.0.0.1:port with the Host header (and SNI) of `host`."""
    url = f"{scheme}://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url, headers={"Host": host})
    context = ssl._create_unverified_context()
    if scheme == "https":
        # SNI must carry the host: connect to 127.0.0.1 with server_hostname set.
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                certificate = tls.getpeercert(binary_form=True)
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        return status, body.decode(errors="replace"), {"certificate": certificate}
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), dict(error.headers)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def echo_pods(cluster) -> set[str]:
    return {p.name for p in cluster.state().pods.values() if p.labels.get("app") == "echo"}


def test_host_and_path_reach_every_endpoint_from_the_docker_host(edge):
    answers = {get(edge.ports["http"], "/hostname", "web.example.com")[1] for _ in range(30)}
    assert answers == echo_pods(edge)


def test_exact_prefix_and_merged_ingresses(edge):
    port = edge.ports["http"]
    status, body, _ = get(port, "/exact", "web.example.com")
    assert status == 200 and json.loads(body)["path"] == "/exact"  # the headers backend
    status, body, _ = get(port, "/exact/more", "web.example.com")
    assert status == 404 and "404 page not found" in body  # not Exact: the / prefix, echo's netexec
    for path in ("/api", "/api/", "/api/v1/things"):  # the api Ingress, merged into the same host
        status, body, _ = get(port, path, "web.example.com")
        assert status == 200 and json.loads(body)["path"] == path, path
    status, body, _ = get(port, "/apix", "web.example.com")
    assert "404 page not found" in body  # a Prefix matches whole path elements only


def test_forwarded_headers_name_the_client(edge):
    """From a host outside the cluster to the controller's node (its hostPort 80):
    nginx sees the client and says so to the backend."""
    node_ip = edge.state().node("cp").node_ip
    result = edge.runtime.exec(f"{edge.name}-outside", ["curl", "-sS", "--max-time", "5", "-H", "Host: web.example.com",
                                                        f"http://{node_ip}/api/who"])  # fmt: skip
    headers = json.loads(result.output)["headers"]
    assert headers["X-Forwarded-For"] == edge.outside_ip and headers["X-Real-IP"] == edge.outside_ip
    assert headers["X-Forwarded-Proto"] == "http" and headers["X-Forwarded-Host"] == "web.example.com"
    status, body, _ = get(edge.ports["https"], "/", "secure.example.com", scheme="https")
    assert status == 200 and json.loads(body)["headers"]["X-Forwarded-Proto"] == "https"


def test_no_rule_is_404_and_no_ready_endpoint_is_503(edge):
    assert get(edge.ports["http"], "/", "nobody.example.com")[0] == 404
    assert get(edge.ports["http"], "/anything", "down.example.com")[0] == 503


def test_tls_with_a_self_signed_certificate_and_redirect(edge):
    status, _, response = get(edge.ports["https"], "/", "secure.example.com", scheme="https")
    assert status == 200
    subject = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-ext", "subjectAltName"],
                             input=response["certificate"], capture_output=True, timeout=30).stdout.decode()  # fmt: skip
    assert "secure.example.com" in subject, subject
    status, _, headers = get(edge.ports["http"], "/x", "secure.example.com")
    assert status == 308 and headers["Location"] == "https://secure.example.com/x"


def test_load_balancer_address_reaches_the_ingress_from_outside(edge):
    address = edge.state().services["ingress-nginx/ingress-nginx-controller"].load_balancer_ip
    result = edge.runtime.exec(f"{edge.name}-outside", ["curl", "-sS", "--max-time", "5", "-H", "Host: web.example.com",
                                                        f"http://{address}/hostname"])  # fmt: skip
    assert result.ok and result.output in echo_pods(edge)
    # "The internet" knows the Ingress hosts' names: they resolve to that address there.
    result = edge.runtime.exec(f"{edge.name}-outside", ["curl", "-sS", "--max-time", "5", "http://web.example.com/hostname"])
    assert result.ok and result.output in echo_pods(edge), result.output


def test_node_port_from_the_docker_host(edge):
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.ports['node_port']}/hostname", timeout=5) as response:
        assert response.read().decode() in echo_pods(edge)


def test_status_and_describe(edge, capsys):
    assert emu_main(["status", "--name", edge.name]) == 0
    out = capsys.readouterr().out
    assert f"0.0.0.0:{edge.ports['http']}->80/tcp" in out and f"127.0.0.1:{edge.ports['node_port']}->30081/tcp" in out
    assert emu_main(["describe", "ingress", "api", "--name", edge.name]) == 0
    out = capsys.readouterr().out
    assert "web.example.com" in out and "/api/" in out and "headers:8000" in out
    assert emu_main(["describe", "ingress", "down", "--name", edge.name]) == 0
    assert "no ready endpoint" in capsys.readouterr().out


def reloads(edge) -> list[float]:
    """When nginx was reloaded, from the agent's log on cp."""
    log = edge.node_exec("cp", ["grep", "reloaded", "/var/log/emu/agent.log"]).output.splitlines()
    return [float(line.split()[0]) for line in log]


def test_reload_keeps_requests_in_flight_and_follows_changes(edge):
    """A request held open by its backend across an endpoint change and a new
    Ingress (released only once nginx has reloaded) finishes with 200; afterwards
    nginx routes by the new configuration."""
    home = edge.state().pods["default/headers"].node
    edge.node_exec(home, ["rm", "-f", SLOW_STARTED, SLOW_RELEASE])
    results = []

    def slow_request() -> None:
        results.append(get(edge.ports["http"], "/api/slow", "web.example.com", timeout=150))

    reloaded_before = len(reloads(edge))
    slow = threading.Thread(target=slow_request, daemon=True)
    slow.start()
    deadline = time.monotonic() + 30
    while not edge.node_exec(home, ["test", "-e", SLOW_STARTED]).ok:  # in flight at the backend
        assert time.monotonic() < deadline, "the held request did not reach its backend within 30 s"
        time.sleep(0.2)
    edge.scale("echo", 2)  # endpoints change: the agent rewrites nginx.conf and reloads nginx
    certificate = edge.node_exec("cp", [
        "sh", "-c", "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
        "-subj '/O=emu-test/CN=tls.example.com' -keyout /dev/stdout -out /dev/stdout 2>/dev/null"])  # fmt: skip
    pem = certificate.output
    key = pem[pem.index("-----BEGIN PRIVATE KEY"):pem.index("-----END PRIVATE KEY-----") + 25]
    crt = pem[pem.index("-----BEGIN CERTIFICATE"):pem.index("-----END CERTIFICATE-----") + 25]
    secret = f"secrets:\n  - name: tls-secret\n    stringData: {{tls.crt: {json.dumps(crt)}, tls.key: {json.dumps(key)}}}\n"
    more = (
        "  - name: secret-tls\n"
        "    defaultBackend: {service: {name: headers, port: {number: 8000}}}\n"
        "    tls: [{hosts: [tls.example.com], secretName: tls-secret}]\n"
        "    rules: [{host: tls.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}}]\n"
    )
    text = topology(**edge.ports, ingresses=INGRESSES + more, extra=secret).replace("replicas: 3", "replicas: 2")
    text = in_proxy_mode(text, edge.mode)
    edge.apply(load_text(text.replace("name: ingress\n", f"name: {edge.name}\n", 1)))
    deadline = time.monotonic() + 30
    while len(reloads(edge)) <= reloaded_before:  # the reload happened while the request is held
        assert time.monotonic() < deadline, "nginx was not reloaded within 30 s of the changes"
        time.sleep(0.2)
    assert slow.is_alive() and not results, f"the held request ended before its release: {results}"
    assert edge.node_exec(home, ["touch", SLOW_RELEASE]).ok
    slow.join(150)
    assert results and results[0][0] == 200 and json.loads(results[0][1])["path"] == "/api/slow", results
    assert {get(edge.ports["http"], "/hostname", "web.example.com")[1] for _ in range(20)} == echo_pods(edge)
    assert len(echo_pods(edge)) == 2
    status, body, response = get(edge.ports["https"], "/hostname", "tls.example.com", scheme="https")
    assert status == 200 and body in echo_pods(edge)
    subject = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=response["certificate"],
                             capture_output=True, timeout=30).stdout.decode()  # fmt: skip
    assert "emu-test" in subject, subject
    # The new Ingress's defaultBackend now answers hosts no rule names, instead of 404.
    status, body, _ = get(edge.ports["http"], "/", "nobody.example.com")
    assert status == 200 and json.loads(body)["path"] == "/"
