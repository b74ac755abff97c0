"""Ingress (networking.k8s.io/v1) as an nginx configuration, and the controller that serves it.

Pure and standard library only: the node agent on the controller's node
renders with it (emu.node.agent.ingress) whenever the state or the endpoints change.

What it follows is ingress-nginx's behaviour: Ingress objects of class nginx
are merged, one server block per host (rules without a host on the default
server); Exact paths are `location = /p`, Prefix paths match whole path
elements (`= /p` and `^~ /p/`), ImplementationSpecific is a plain prefix; nginx
picks exact, then the longest prefix, as Kubernetes orders them. Requests go
straight to the service's ready endpoints (upstream blocks with keep-alive),
with X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Port
and X-Real-IP set; no matching rule gives 404, a backend with no ready
endpoint 503. TLS hosts get their secret's certificate or a self-signed one,
and plain HTTP to them is redirected (308), as ingress-nginx's ssl-redirect.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.node.records import ClusterState, sha256
from emu.node.services import usable_endpoints

NAMESPACE = "ingress-nginx"
NAME = "ingress-nginx-controller"
CLASS = "nginx"
CONTROLLER_CLASS = "k8s.io/ingress-nginx"  # the spec.controller of the IngressClasses it serves
SERVICE_ACCOUNT = "ingress-nginx"  # what the controller runs as (RBAC: emu.apiserver.rbac)
CLASS_ANNOTATION = "kubernetes.io/ingress.class"  # the class before IngressClass, still honoured
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LABELS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
CONFIG_DIR = "/etc/emu/ingress"
CONFIG = f"{CONFIG_DIR}/nginx.conf"
CERT_DIR = f"{CONFIG_DIR}/certs"
PID_FILE = "/run/emu/ingress/nginx.pid"
HOSTPORT_CHAIN = "EMU-HOSTPORTS"
HOSTPORT_HOOK = f'PREROUTING -m addrtype --dst-type LOCAL -m comment --comment "emu hostPorts" -j {HOSTPORT_CHAIN}'
HEALTH_PORT = 10254  # ingress-nginx's /healthz
DEFAULT_CERT = "default"  # the fallback certificate, as ingress-nginx's "Fake Certificate"
# The controller's container: nginx once the agent has written its first configuration.
COMMAND = (
    f"mkdir -p {PID_FILE.rsplit('/', 1)[0]}; while [ ! -s {CONFIG} ]; do sleep 0.1; done; "
    f"exec nginx -e stderr -c {CONFIG} -g 'daemon off;'"
)


def controller_deployment(node: str) -> dict:
    """The controller's Deployment, as the topology would declare it."""
    return {
        "name": NAME,
        "namespace": NAMESPACE,
        "replicas": 1,
        "template": {
            "labels": dict(LABELS),
            "node": node,
            "enableServiceLinks": False,
            "containers": [
                {
                    "name": "controller",
                    "command": ["sh", "-c", COMMAND],
                    "ports": [
                        {"name": "http", "containerPort": 80},
                        {"name": "https", "containerPort": 443},
                        {"name": "healthz", "containerPort": HEALTH_PORT},
                    ],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": HEALTH_PORT}, "periodSeconds": 0.5},
                }
            ],
        },
    }


def controller_service(service_type: str) -> dict:
    return {
        "name": NAME,
        "namespace": NAMESPACE,
        "type": service_type,
        "selector": dict(LABELS),
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "https", "port": 443, "targetPort": "https"},
        ],
    }


def controller_pod(state: ClusterState, node: str | None = None):
    """The controller's pod (on `node`, if given), or None."""
    for pod in state.pods.values():
        if pod.namespace == NAMESPACE and pod.owner == f"Deployment/{NAME}" and (node is None or pod.node == node):
            return pod
    return None


@dataclass(frozen=True)
class Route:
    """One path of one host, and where it goes."""

    host: str  # "" for every host
    path: str
    path_type: str
    namespace: str
    service: str
    port: int | str
    ingress: str  # namespace/name that declared it


@dataclass(frozen=True)
class Backend:
    """A route's service port resolved: its upstream's name and ready endpoints ("ip:port")."""

    upstream: str
    endpoints: tuple[str, ...]
    reason: str = ""  # why there is none (for describe)


def served(state: ClusterState) -> list[dict]:
    """The Ingress objects of class nginx (or no class: the default class), by namespace and name."""
    return sorted(
        (i for i in state.ingresses if (i.get("ingressClassName") or CLASS) == CLASS),
        key=lambda i: (i["namespace"], i["name"]),
    )


def ingress_class(name: str = CLASS) -> dict:
    """The IngressClass of ingress-nginx's manifests (kind's among them): Ingresses that name it are served."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": name, "labels": dict(LABELS)}, "spec": {"controller": CONTROLLER_CLASS}}  # fmt: skip


def default_class(classes: list[dict]) -> str | None:
    """The IngressClass marked default (the newest, where several are, as the API server's
    DefaultIngressClass admission picks), or None."""
    def annotations(c: dict) -> dict:
        return (c.get("metadata") or {}).get("annotations") or {}

    marked = [c for c in classes if annotations(c).get(DEFAULT_CLASS_ANNOTATION) == "true"]
    marked.sort(key=lambda c: ((c.get("metadata") or {}).get("creationTimestamp") or "", c["metadata"]["name"]))
    return marked[-1]["metadata"]["name"] if marked else None


def is_served(obj: dict, classes: list[dict], annotation_value: str = CLASS, without_class: bool = True) -> bool:
    """Whether ingress-nginx serves this Ingress (an API object), as its store decides:
    spec.ingressClassName must name an IngressClass whose spec.controller is
    k8s.io/ingress-nginx; without one, the kubernetes.io/ingress.class annotation must
    be `annotation_value`; without either, an Ingress takes the default IngressClass
    (the DefaultIngressClass admission gives it that class on a real cluster) and is
    served when that one is ours, or, where no class is default, as kind's ingress-nginx
    serves it (--watch-ingress-without-class, `without_class`)."""
    ours = {(c.get("metadata") or {}).get("name") for c in classes
            if (c.get("spec") or {}).get("controller") == CONTROLLER_CLASS}  # fmt: skip
    name = (obj.get("spec") or {}).get("ingressClassName")
    if name:
        return name in ours
    annotation = ((obj.get("metadata") or {}).get("annotations") or {}).get(CLASS_ANNOTATION)
    if annotation is not None:
        return annotation == annotation_value
    default = default_class(classes)
    return default in ours if default else without_class


def flat(obj: dict) -> dict:
    """An Ingress API object in the state file's form ({name, namespace, rules, ...}), as
    render() takes it, once is_served() chose it (so without its class). Backends that are
    not services (spec...backend.resource) are left out: ingress-nginx serves services only."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    out: dict = {"name": meta.get("name", ""), "namespace": meta.get("namespace") or "default"}
    if meta.get("annotations"):
        out["annotations"] = dict(meta["annotations"])
    if _service_backend(spec.get("defaultBackend")):
        out["defaultBackend"] = spec["defaultBackend"]
    rules = []
    for rule in spec.get("rules") or []:
        paths = [p for p in ((rule.get("http") or {}).get("paths") or []) if _service_backend(p.get("backend"))]
        rules.append({**({"host": rule["host"]} if rule.get("host") else {}), "http": {"paths": paths}})
    if rules:
        out["rules"] = rules
    if spec.get("tls"):
        out["tls"] = spec["tls"]
    return out


def _service_backend(backend) -> bool:
    service = (backend or {}).get("service") if isinstance(backend, dict) else None
    return bool(isinstance(service, dict) and service.get("name") and isinstance(service.get("port"), dict)
                and (service["port"].get("number") or service["port"].get("name")))  # fmt: skip


def status_addresses(service, node_ip: str | None) -> list[dict]:
    """status.loadBalancer.ingress of the Ingresses the controller serves: the address users
    reach, as ingress-nginx publishes it (--publish-service, its chart's default): the
    controller Service's LoadBalancer address; where it has none (a NodePort service), the
    address of the node the controller runs on, as ingress-nginx does without one."""
    if service is not None and service.load_balancer_vips:
        return [{"ip": ip} for ip in service.load_balancer_vips]
    return [{"ip": node_ip}] if node_ip else []


def routes(state: ClusterState) -> tuple[list[Route], dict[str, Route]]:
    """(every host/path route, the default backend by host ("" for the default server)).
    A host and path declared twice is served by the first Ingress, as ingress-nginx does."""
    found: dict[tuple[str, str, str], Route] = {}
    defaults: dict[str, Route] = {}
    for ingress in served(state):
        key = f"{ingress['namespace']}/{ingress['name']}"
        default = ingress.get("defaultBackend")
        hosts = set()
        for rule in ingress.get("rules") or []:
            host = rule.get("host") or ""
            hosts.add(host)
            for path in (rule.get("http") or {}).get("paths") or []:
                service = path["backend"]["service"]
                port = service["port"].get("number") or service["port"].get("name")
                route = Route(host, path.get("path") or "/", path.get("pathType") or "Prefix",
                              ingress["namespace"], service["name"], port, key)  # fmt: skip
                found.setdefault((host, _location(route.path, route.path_type)[0], route.path_type), route)
        if default:
            service = default["service"]
            port = service["port"].get("number") or service["port"].get("name")
            for host in hosts | {""}:
                defaults.setdefault(host, Route(host, "/", "Prefix", ingress["namespace"], service["name"], port, key))
    return list(found.values()), defaults


def backend(state: ClusterState, route: Route, endpoints: dict) -> Backend:
    """The route's service port and its ready endpoints."""
    key = f"{route.namespace}/{route.service}"
    upstream = f"{route.namespace}-{route.service}-{route.port}"
    service = state.services.get(key)
    if service is None:
        return Backend(upstream, (), f"service {key} does not exist")
    for port in service.ports:
        if route.port in (port.port, port.name) and port.protocol == "TCP":
            # (not a node's own terminating endpoints that only its Local traffic policy uses)
            ready = tuple(e.address for e in usable_endpoints(endpoints.get(key, {}).get(port.name, [])))
            return Backend(upstream, ready, "" if ready else "no ready endpoint")
    return Backend(upstream, (), f"service {key} has no TCP port {route.port}")


def _location(path: str, path_type: str) -> list[str]:
    """nginx location lines for a Kubernetes path."""
    if path_type == "Exact":
        return [f"= {path}"]
    if path_type == "ImplementationSpecific":
        return ["/" if path == "/" else f"^~ {path}"]
    trimmed = path.rstrip("/")
    if not trimmed:
        return ["/"]
    return [f"= {trimmed}", f"^~ {trimmed}/"]


def _block(location: str, body: list[str], origin: str = "") -> str:
    note = f" # {origin}" if origin else ""
    return f"        location {location} {{{note}\n" + "".join(f"            {line}\n" for line in body) + "        }\n"


def tls_hosts(state: ClusterState) -> dict[str, str]:
    """{host: certificate name} for every host a tls entry names."""
    return {host: name for name, (hosts, _) in certificates(state).items() for host in hosts}


def certificates(state: ClusterState) -> dict[str, tuple[list[str], str | None]]:
    """{certificate name: (its hosts, the secret "ns/name" holding it, or None: emu makes it, self-signed)}.
    The first Ingress to name a host decides its certificate."""
    wanted: dict[str, tuple[list[str], str | None]] = {}
    taken: set[str] = set()
    for ingress in served(state):
        for entry in ingress.get("tls") or []:
            hosts = [h for h in entry.get("hosts") or [] if h not in taken]
            taken.update(hosts)
            if entry.get("secretName"):
                secret = f"{ingress['namespace']}/{entry['secretName']}"
                name = "secret-" + secret.replace("/", "-")
            else:
                secret = None
                name = "self-signed-" + sha256(",".join(sorted(hosts)).encode()).hexdigest()[:12]
            if hosts:
                wanted[name] = (wanted.get(name, ([], None))[0] + hosts, secret)
    return {DEFAULT_CERT: (["ingress.local"], None), **wanted}


def hosts_entries(state: ClusterState) -> str:
    """/etc/hosts lines naming every Ingress host at the controller's LoadBalancer
    address, for a host outside the cluster ("the internet" knows the names)."""
    service = state.services.get(f"{NAMESPACE}/{NAME}")
    address = service.load_balancer_ip if service else None
    hosts = sorted({r.host for r in routes(state)[0] if r.host and "*" not in r.host})
    return "".join(f"{address}\t{host}\n" for host in hosts) if address else ""


def hostport_rules(pod) -> str:
    """iptables-restore --noflush text: the controller's hostPorts 80 and 443 on its node
    (the CNI portmap plugin's DNAT, as ingress-nginx's manifest for kind asks), so a
    node port mapping of 80 or 443 (extraPortMappings) reaches nginx."""
    rules = [
        f"-A {HOSTPORT_CHAIN} -p tcp -m tcp --dport {port} "
        f'-m comment --comment "{NAMESPACE}/{pod.name} hostPort {port}" '
        f"-j DNAT --to-destination {pod.ip}:{port}"
        for port in (80, 443)
    ]
    return "\n".join(["*nat", f":{HOSTPORT_CHAIN} - [0:0]", *rules, "COMMIT", ""])


def render(state: ClusterState, endpoints: dict, worker_processes: int | str = "auto") -> str:
    """The controller's whole nginx.conf."""
    all_routes, defaults = routes(state)
    tls = tls_hosts(state)
    upstreams: dict[str, Backend] = {}

    def proxy(route: Route | None) -> list[str]:
        if route is None:
            return ["return 404;"]
        resolved = backend(state, route, endpoints)
        if not resolved.endpoints:
            return ["return 503;"]
        upstreams[resolved.upstream] = resolved
        return [f"proxy_pass http://upstream_{resolved.upstream};"]

    hosts = sorted({r.host for r in all_routes} | set(defaults))
    servers = []
    for host in hosts:
        locations: dict[str, str] = {}  # nginx location -> its block; the first route to claim one keeps it
        host_routes = sorted((r for r in all_routes if r.host == host), key=lambda r: (r.path, r.path_type))
        for route in host_routes:
            for location in _location(route.path, route.path_type):
                if location not in locations:
                    locations[location] = _block(location, proxy(route), route.ingress)
        if "/" not in locations:
            default = defaults.get(host) or (defaults.get("") if host else None)
            locations["/"] = _block("/", proxy(default))
        name = host or "_"
        certificate = tls.get(host, DEFAULT_CERT)
        default_server = " default_server" if not host else ""
        redirect = (
            "        if ($scheme = http) { return 308 https://$host$request_uri; }\n" if host in tls else ""
        )
        servers.append(
            f"    server {{\n"
            f"        server_name {name};\n"
            f"        listen 80{default_server};\n"
            f"        listen 443 ssl{default_server};\n"
            f"        ssl_certificate {CERT_DIR}/{certificate}.crt;\n"
            f"        ssl_certificate_key {CERT_DIR}/{certificate}.key;\n"
            + redirect + "".join(locations.values()) + "    }\n"
        )
    if "" not in hosts:
        servers.insert(
            0,
            "    server {\n        server_name _;\n        listen 80 default_server;\n"
            "        listen 443 ssl default_server;\n"
            f"        ssl_certificate {CERT_DIR}/{DEFAULT_CERT}.crt;\n"
            f"        ssl_certificate_key {CERT_DIR}/{DEFAULT_CERT}.key;\n"
            "        location / {\n            return 404;\n        }\n    }\n",
        )
    upstream_blocks = "".join(
        f"    upstream upstream_{name} {{\n"
        + "".join(f"        server {address} max_fails=0;\n" for address in resolved.endpoints)
        + "        keepalive 32;\n    }\n"
        for name, resolved in sorted(upstreams.items())
    )
    return (
        "# emu's ingress-nginx: written by the node agent from the cluster's Ingresses and endpoints.\n"
        "user www-data;\n"
        f"worker_processes {worker_processes};\n"
        f"pid {PID_FILE};\n"
        "error_log stderr notice;\n"
        "worker_shutdown_timeout 240s;\n"
        "events {\n    worker_connections 16384;\n}\n"
        "http {\n"
        "    access_log off;\n"
        "    server_tokens off;\n"
        "    server_names_hash_bucket_size 128;\n"
        "    keepalive_timeout 75s;\n"
        "    proxy_http_version 1.1;\n"
        "    proxy_connect_timeout 5s;\n"
        "    proxy_next_upstream error timeout;\n"
        "    proxy_set_header Connection \"\";\n"
        "    proxy_set_header Host $host;\n"
        "    proxy_set_header X-Real-IP $remote_addr;\n"
        "    proxy_set_header X-Forwarded-For $remote_addr;\n"
        "    proxy_set_header X-Forwarded-Proto $scheme;\n"
        "    proxy_set_header X-Forwarded-Host $host;\n"
        "    proxy_set_header X-Forwarded-Port $server_port;\n"
        "    proxy_set_header X-Request-ID $request_id;\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        + upstream_blocks
        + "".join(servers)
        + f"    server {{\n        listen {HEALTH_PORT};\n"
        "        location = /healthz {\n            return 200 \"ok\";\n        }\n"
        "        location / {\n            return 404;\n        }\n    }\n"
        "}\n"
    )


def describe(state: ClusterState, key: str, endpoints: dict) -> list[tuple[str, str, str, str]]:
    """(host, path, backend "svc:port", endpoints or why none) of every rule of Ingress `key`, for `emu describe`."""
    rows = []
    all_routes, defaults = routes(state)
    default = [r for host, r in sorted(defaults.items()) if r.ingress == key and not host]
    for route in [r for r in all_routes if r.ingress == key] + default:
        resolved = backend(state, route, endpoints)
        path = route.path if route in all_routes else "(default backend)"
        rows.append(
            (route.host or "*", path, f"{route.service}:{route.port}",
             ",".join(resolved.endpoints) or f"<none> ({resolved.reason})")  # fmt: skip
        )
    return rows
