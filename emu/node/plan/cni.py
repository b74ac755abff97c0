"""Pod networking inside a node, as the article draws it.

A bridge cni0 holds the first address of the node's pod CIDR. Each pod is a
network namespace with a veth pair: the host end is a port of cni0, the pod
end is eth0 with the pod IP and a default route via the bridge. Every other
node's pod CIDR is routed via that node's IP (host-gw), and traffic from pods
to anything outside the pod subnet is masqueraded to the node's IP.
"""

from __future__ import annotations

import functools
import ipaddress
import shlex

from emu.node.agent import (
    AGENT_PORT,
    CONTAINER_DIR,
    CONTAINER_ENV,
    PID_FILE,
    RUN_DIR,
    SANDBOX_ENV,
    container_file,
    container_script,
)
from emu.node.plan import NodePlan
from emu.node.proxy import mode_of, proxier
from emu.node.proxy.iptables import comment
from emu.node.records import (
    DEFAULT_DNS_DOMAIN,
    KUBE_DNS_INDEX,
    ClusterState,
    NodeState,
    PodState,
    sha256,
    well_known_ip,
)
from emu.node.services import pod_service_env

PLAN_DIR = "/etc/emu/plan"
BOOT_DIR = f"{PLAN_DIR}/boot"
BOOT_SCRIPT = f"{BOOT_DIR}/run.sh"
# The node container's command: rebuild from the state it holds when it starts
# again (nothing to do on its first start), then stay up.
NODE_COMMAND = [
    "sh", "-c", f"[ -f {BOOT_SCRIPT} ] && sh {BOOT_SCRIPT} >/var/log/emu/boot.log 2>&1; exec sleep infinity",
]  # fmt: skip
LOG_DIR = "/var/log/emu/pods"
WORKLOAD_DIR = "/opt/emu/workloads"
AGENT_LIB = "/opt/emu/lib"
AGENT_LOG = "/var/log/emu/agent.log"
MASQ_CHAIN = "EMU-MASQ-AGENT"  # named after kindnet's KIND-MASQ-AGENT
GUARD_CHAIN = "EMU-AGENT-GUARD"
# After a new state is in place: the agent reads it at once instead of at its next look.
NOTIFY_AGENT = f"kill -HUP \"$(cat {PID_FILE} 2>/dev/null)\" 2>/dev/null || true"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The node image selects iptables' legacy backend (much faster restores of big
# rulesets). A container cannot load kernel modules, so where the host has no
# legacy tables (hosts whose Docker uses nf_tables and never loaded ip_tables),
# fall back to the nf_tables backend, as kind's nodes detect theirs.
IPTABLES_BACKEND_STEP = (
    "iptables-legacy -t nat -S >/dev/null 2>&1 || { "
    "update-alternatives --quiet --set iptables /usr/sbin/iptables-nft && "
    "update-alternatives --quiet --set ip6tables /usr/sbin/ip6tables-nft; }"
)

# Removes a pod: its processes, its veth pair (at once: a namespace whose
# processes are still dying would keep it alive), its namespace and files.
VOLUME_DIR = "/var/lib/emu/volumes"  # <netns>/<volume>/: the files of a pod's volumes
TOKEN_DIR = "/var/lib/emu/tokens"  # <netns>/: token, ca.crt, namespace (emu.node.agent.tokens)
SERVICE_ENV_DIR = "/var/lib/emu/service-env"  # <namespace>-<hash>: Service variables; pods/<netns>: a pod's
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where containers see them
# What a pod must not see of its node: the cluster's keys (the CA's and the service
# accounts' on the API server's node, the node's own elsewhere) and the API server's data.
HIDDEN_FROM_PODS = ("/etc/emu/pki", "/var/lib/emu/apiserver")
DELETE_POD_FUNCTION = """\
emu_delete_pod() {
  # emu_delete_pod NETNS VETH IP [replaced|-] [GRACE] (VETH "-": not known; IP "?": read from the pod's eth0)
  ip=$3
  if [ "$ip" = "?" ]; then ip=$(ip -n "$1" -4 -o addr show dev eth0 2>/dev/null | sed -n 's/.* inet \\([0-9.]*\\)\\/.*/\\1/p'); fi
  # The containers' parents first (emu-container, see CONTAINER_PARENT): one that has not
  # written its pid file yet would otherwise start its process after the look below.
  if pkill -KILL -f "emu-container %s/$1/" 2>/dev/null; then sleep 0.1; fi
  # Pid files next: the agent restarts a dead container only while its pid file says it was started;
  # and their processes die by them too (a namespace deleted by hand no longer lists them).
  # SIGTERM, then up to terminationGracePeriodSeconds ($5, in 20 ms steps) to exit, then SIGKILL.
  pids=""
  # (An image container's pid file says "none" while Docker has not started it again: skipped,
  # since dash's kill stops at the first word that is not a number and would signal none after it.)
  for f in "%s/$1/"*.pid; do
    [ -e "$f" ] || continue
    for p in $(cat "$f"); do case $p in *[!0-9]*) ;; *) pids="$pids $p" ;; esac; done
    rm -f "$f"
  done
  pids="$pids $(ip netns pids "$1" 2>/dev/null || true)"
  kill -TERM $pids 2>/dev/null || true
  steps=$(( ${5:-0} * 50 ))
  while [ "$steps" -gt 0 ]; do
    alive=""; for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done; pids=$alive
    [ -n "$pids" ] || break
    sleep 0.02; steps=$((steps - 1))
  done
  kill -KILL $pids 2>/dev/null || true
  ip link del "$2" 2>/dev/null || true
  ip netns del "$1" 2>/dev/null || true
  # A pod replaced under the same name keeps the files its successor was given, and its IP.
  [ "${4:-}" = replaced ] && return 0
  rm -rf "/etc/netns/$1" "%s/$1" "%s/$1" "%s/pod-$1.batch" "%s/$1" "%s/$1"
  # The node's connection tracking forgets the address's flows (to it, from it, and DNATed to it).
  if [ -n "$ip" ]; then
    for how in -s -d --reply-src; do conntrack -D $how "$ip" >/dev/null 2>&1 || true; done
  fi
}""" % (RUN_DIR, RUN_DIR, LOG_DIR, RUN_DIR, PLAN_DIR, CONTAINER_DIR, VOLUME_DIR)


def prefix_length(cidr: str) -> int:
    return ipaddress.IPv4Network(cidr).prefixlen


def service_ip(state: ClusterState, index: int) -> str:
    """The index-th address of the cluster's service subnet (records.KUBERNETES_INDEX, KUBE_DNS_INDEX)."""
    return well_known_ip(state.net.service_subnet, index)


def node_setup_batch(state: ClusterState, node: NodeState) -> str:
    """Root-namespace `ip -batch` lines for a new node: the bridge and host-gw routes."""
    lines = [
        f"link add cni0{mtu_option(state.mtu)} type bridge",
        f"addr add {node.gateway}/{prefix_length(node.pod_cidr)} dev cni0",
        "link set cni0 up",
    ]
    for other in state.nodes:
        if other.name != node.name:
            lines.append(f"route add {other.pod_cidr} via {other.node_ip}")
    return "\n".join(lines) + "\n"


def agent_guard_rules(state: ClusterState) -> str:
    """iptables-restore text: pods may not reach any node's agent port (the
    kubelet's). Pods on this node come in through INPUT; pods sending to
    another node pass FORWARD here before they are masqueraded to this node's
    IP, after which the agent there could not tell them from this node."""
    pod_subnet = state.net.pod_subnet
    why = comment("emu: pods may not reach node agents")
    return "\n".join(
        [
            "*filter",
            f":{GUARD_CHAIN} - [0:0]",
            f"-I INPUT 1 -p tcp --dport {AGENT_PORT} -j {GUARD_CHAIN}",
            f"-I FORWARD 1 -p tcp --dport {AGENT_PORT} -j {GUARD_CHAIN}",
            f"-A {GUARD_CHAIN} -s {pod_subnet} -p tcp {why} -j REJECT --reject-with tcp-reset",
            "COMMIT",
            "",
        ]
    )


def masquerade_rules(state: ClusterState, node: NodeState) -> str:
    """iptables-restore text: pods' egress leaves with the node's IP, pod-to-pod never does."""
    pod_subnet = state.net.pod_subnet
    return "\n".join(
        [
            "*nat",
            f":{MASQ_CHAIN} - [0:0]",
            f'-A POSTROUTING -s {node.pod_cidr} -m addrtype ! --dst-type LOCAL -m comment --comment "emu-masq-agent: '
            f'traffic from pods leaving the pod network" -j {MASQ_CHAIN}',
            f'-A {MASQ_CHAIN} -d {pod_subnet} -m comment --comment "emu-masq-agent: pod-to-pod is not NATed" -j RETURN',
            f'-A {MASQ_CHAIN} -m comment --comment "emu-masq-agent: egress leaves with the node IP" -j MASQUERADE',
            "COMMIT",
            "",
        ]
    )


def mtu_option(mtu: int) -> str:
    """' mtu N' for `ip link add`, where the cluster network's MTU is not the
    default 1500 (a VXLAN overlay's 1450): pods' interfaces and the bridge take
    the node's, so a full-size pod packet still fits the wire between hosts."""
    return "" if mtu == 1500 else f" mtu {mtu}"


def pod_mac(ip: str) -> str:
    """The pod's eth0 address: 0a:58 and the four bytes of its IP, as OVN-Kubernetes
    makes them. A pod recreated in place (same IP) keeps its MAC, so the ARP caches
    of its node and neighbours stay right; a random one left them pointing at the
    old interface until they expired (about 30 s without answers)."""
    return "0a:58:" + ":".join(f"{int(part):02x}" for part in ip.split("."))


def runs_image(container: dict) -> bool:
    """Whether a container is its image run by Docker (emu.control.runtime.sandbox), not a process the node starts."""
    return bool(container.get("image")) and not container.get("workload")


def image_pod(pod: PodState) -> bool:
    """Whether the pod has image containers, and so a sandbox container owns its namespace."""
    return any(runs_image(container) for container in pod.containers)


# The sandbox of an image pod runs in the node's PID namespace with EMU_SANDBOX=<pod uid>
# in its environment: the node finds its process that way and names its namespace.
SANDBOX_FUNCTION = """\
emu_find_pid() {
  f=$(grep -lzxF "$1" /proc/[0-9]*/environ 2>/dev/null | head -n 1)
  [ -n "$f" ] || return 1
  f=${f#/proc/}; echo "${f%/environ}"
}"""


def pod_root_batch(pod: PodState, mtu: int = 1500) -> str:
    """Root-namespace lines for one pod: its namespace (an image pod's is its
    sandbox's, attached before) and the veth pair on cni0."""
    size = mtu_option(mtu)
    return (
        ("" if image_pod(pod) else f"netns add {pod.netns}\n")
        + f"link add {pod.host_veth}{size} type veth peer name eth0{size} address {pod_mac(pod.ip)} netns {pod.netns}\n"
        f"link set {pod.host_veth} master cni0 up\n"
        # A pod reaching itself through its service's IP: the reply must go back
        # out the port it came in on (the kubelet's hairpin-veth mode).
        f"link set {pod.host_veth} type bridge_slave hairpin on\n"
    )


def pod_namespace_batch(pod: PodState, node: NodeState) -> str:
    """Lines for `ip -n POD -batch`: loopback, the pod IP on eth0, the default route."""
    return (
        "link set lo up\n"
        f"addr add {pod.ip}/{prefix_length(node.pod_cidr)} dev eth0\n"
        "link set eth0 up\n"
        f"route add default via {node.gateway}\n"
    )


def hosts_file(pod: PodState, domain: str = DEFAULT_DNS_DOMAIN) -> str:
    """The pod's /etc/hosts, as the kubelet writes it."""
    return (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        f"{pod.ip}\t{pod_host_entry(pod, domain)}\n"
    )


def pod_host_entry(pod: PodState, domain: str) -> str:
    """The kubelet's line for the pod itself: with a subdomain, its FQDN first."""
    if pod.subdomain:
        return f"{pod.host_name}.{pod.subdomain}.{pod.namespace}.svc.{domain}\t{pod.host_name}"
    return pod.host_name


def resolv_conf(state: ClusterState, pod: PodState) -> str | None:
    """The pod's /etc/resolv.conf by its dnsPolicy, with dnsConfig merged in as
    the kubelet merges it. None for dnsPolicy Default: the node's file is
    copied when the pod is made (see resolv_conf_step)."""
    domain = state.net.dns_domain
    config = pod.dns_config or {}
    if pod.dns_policy == "ClusterFirst":
        nameservers = [service_ip(state, KUBE_DNS_INDEX)]
        searches = [f"{pod.namespace}.svc.{domain}", f"svc.{domain}", domain]
        options = {"ndots": "5"}
    elif pod.dns_policy == "None":
        nameservers, searches, options = [], [], {}
    else:
        return None
    nameservers = _unique(nameservers + config.get("nameservers", []))[:3]
    searches = _unique(searches + config.get("searches", []))[:32]
    for option in config.get("options", []):
        options[option["name"]] = option.get("value")
    lines = []
    if searches:
        lines.append("search " + " ".join(searches))
    lines += [f"nameserver {server}" for server in nameservers]
    if options:
        lines.append("options " + " ".join(k if v is None else f"{k}:{v}" for k, v in options.items()))
    return "\n".join(lines) + "\n"


def resolv_conf_step(pod: PodState) -> str:
    """dnsPolicy Default: the pod resolves as its node does (the node's resolv.conf),
    plus any dnsConfig lines."""
    target = f"/etc/netns/{pod.netns}/resolv.conf"
    config = pod.dns_config or {}
    extra = [f"nameserver {server}" for server in config.get("nameservers", [])]
    if config.get("searches"):
        extra.append("search " + " ".join(config["searches"]))
    appended = "".join(f"; echo {shlex.quote(line)}" for line in extra)
    return f"{{ grep -v '^#' /etc/resolv.conf{appended}; }} >{target}"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


DNS_SNAPSHOT = "/etc/emu/dns/snapshot.json"


def container_command(container: dict) -> list[str]:
    if container.get("workload") == "netexec":
        return ["python3", f"{WORKLOAD_DIR}/netexec.py", *container.get("args", [])]
    if container.get("workload") == "pause":
        return ["sleep", "infinity"]
    if container.get("workload") == "coredns":
        return ["env", f"PYTHONPATH={AGENT_LIB}", "python3", "-m", "emu.node.dns", "--snapshot", DNS_SNAPSHOT,
                *container.get("args", [])]  # fmt: skip
    return [*container["command"], *container.get("args", [])]


def container_environment(pod: PodState, container: dict) -> list[str]:
    """The container's own variables (its env, resolved when the pod was made), after
    what every container gets (PATH, HOME, HOSTNAME) and its Service variables
    (service_env_file, read when it starts)."""
    return [f"{variable['name']}={variable.get('value', '')}" for variable in container.get("env", [])]


def service_env_file(pod: PodState) -> str:
    """The pod's file of Service variables, which its containers (and commands run in
    it) read as they start: it sources the variables as they were when the pod was
    made (service_env_files)."""
    return f"{SERVICE_ENV_DIR}/pods/{pod.netns}"


def service_env_files(state: ClusterState, pods: list[PodState]) -> dict[str, str]:
    """The Service variables of `pods`, from the Services as they are now, as the
    kubelet gives them to a container: its namespace's (or with enableServiceLinks
    false the kubernetes Service's alone) in one file each set of them, named by its
    content and kept, and for each pod a line that sources its set. Not 7,000
    variables in each container's start script of a namespace of 1,000 Services; and
    a pod made before a Service keeps what it started with, as on a cluster."""
    files: dict[str, str] = {}
    made: dict[tuple[str, bool], str] = {}
    for pod in pods:
        key = (pod.namespace, pod.enable_service_links)
        if key not in made:
            env = pod_service_env(state.services, pod, pod.enable_service_links)
            text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
            digest = sha256(text.encode()).hexdigest()[:12]
            made[key] = f"{SERVICE_ENV_DIR}/{pod.namespace if pod.enable_service_links else '-'}-{digest}"
            files[made[key]] = text
        files[service_env_file(pod)] = f". {made[key]}\n"
    return files


def volume_files(pod: PodState) -> dict[str, str]:
    """The files of a pod's volumes (a ConfigMap's keys), under VOLUME_DIR/<netns>/<volume>/."""
    return {
        f"{VOLUME_DIR}/{pod.netns}/{volume}/{path}": content
        for volume, files in sorted(pod.volumes.items())
        for path, content in sorted(files.items())
    }


def mount_commands(pod: PodState, container: dict) -> str:
    """Shell that bind-mounts the container's volumeMounts, in the mount namespace
    `ip netns exec` gives each command (so nothing shows outside it): a volume
    at its mountPath, or with subPath one file of it; read-only when asked."""
    # The node's secrets are covered by an empty read-only tmpfs, and the pod's
    # service account token is where Kubernetes puts it (a kube-api-access volume).
    lines = [f"{{ [ ! -d {hidden} ] || mount -t tmpfs -o ro,size=4k,mode=0500 emu-hidden {hidden}; }}"
             for hidden in HIDDEN_FROM_PODS]
    # (Where the start script made both: a command run in a pod some other way goes without.)
    lines.append(f"{{ [ ! -d {TOKEN_DIR}/{pod.netns} ] || [ ! -d {SERVICE_ACCOUNT_DIR} ] || "
                 f"mount --bind -o ro {TOKEN_DIR}/{pod.netns} {SERVICE_ACCOUNT_DIR}; }}")
    for mount in container.get("volumeMounts", []):
        source = f"{VOLUME_DIR}/{pod.netns}/{mount['name']}"
        target = shlex.quote(mount["mountPath"])
        if mount.get("subPath"):
            source = shlex.quote(f"{source}/{mount['subPath']}")
            lines.append(f"mkdir -p \"$(dirname {target})\" && touch {target} && mount --bind {source} {target}")
        else:
            lines.append(f"mkdir -p {target} && mount --bind {shlex.quote(source)} {target}")
        if mount.get("readOnly"):
            lines.append(f"mount -o remount,bind,ro {target}")
    return "".join(f"{line} && " for line in lines)


def in_pod_argv(pod: PodState, container: dict, argv: list[str]) -> list[str]:
    """argv that runs `argv` as the pod's container: in the pod's network
    namespace, in a UTS namespace whose hostname is the pod's name, with its
    volumes mounted and only the container's environment: the Service variables
    of its service_env_file (where the node has it), then its own."""
    services = service_env_file(pod)
    return [
        "ip", "netns", "exec", pod.netns,
        "unshare", "--uts", "/bin/sh", "-c", mount_commands(pod, container) + 'hostname "$0" && exec "$@"', pod.host_name,
        "env", "-i", f"PATH={PATH}", "HOME=/root", f"HOSTNAME={pod.host_name}",
        "/bin/sh", "-c", f'[ ! -r {services} ] || . {services}; exec env -u PWD "$@"', "sh",
        *container_environment(pod, container), *argv,
    ]  # fmt: skip


# The parent of a container's process (in the node's root namespace, its own
# session): writes the process's pid, waits for it and writes its exit code, as
# the kubelet keeps a container's status, for restartPolicy and `emu status`.
# Once it ended, its pid file says "-": the file still tells that it was started,
# and no one signals a pid the kernel may have given to another process since.
CONTAINER_PARENT = 'p=$1 e=$2; shift 2; rm -f "$e"; "$@" & echo $! >"$p"; wait $!; c=$?; echo - >"$p"; echo $c >"$e"'


def start_container_script(pod: PodState, container: dict) -> str:
    """Start one container detached, its output appended to its log; until its
    parent writes the new pid file, the agent counts it as not started (so it
    does not start it twice). A file of its own (emu.node.agent.container_script),
    so that the agent can run it again when the process ends, as the kubelet
    restarts containers."""
    name = container["name"]
    log = f"{LOG_DIR}/{pod.netns}/{name}.log"
    pid_file = shlex.quote(container_file(pod.netns, name, "pid"))
    exit_file = container_file(pod.netns, name, "exit")
    argv = [
        "setsid", "sh", "-c", CONTAINER_PARENT, "emu-container", container_file(pod.netns, name, "pid"), exit_file,
        *in_pod_argv(pod, container, container_command(container)),
    ]  # fmt: skip
    return "\n".join(
        [
            f"# emu: container {name} of pod {pod.key}; the node agent runs this again if it ends (restartPolicy)",
            # Tests first: [ is the shell's own, mkdir and rm are processes (2,000 pods, 4,000 of them).
            f"[ -d {LOG_DIR}/{pod.netns} ] && [ -d {RUN_DIR}/{pod.netns} ] && [ -d {TOKEN_DIR}/{pod.netns} ] && "
            f"[ -d {SERVICE_ACCOUNT_DIR} ] || mkdir -p {LOG_DIR}/{pod.netns} {RUN_DIR}/{pod.netns} "
            f"{TOKEN_DIR}/{pod.netns} {SERVICE_ACCOUNT_DIR}",
            f"[ ! -e {pid_file} ] || rm -f {pid_file}",
            f"{shlex.join(argv)} >>{shlex.quote(log)} 2>&1 </dev/null &",
            "",
        ]
    )


# What ships into every node: the emu.node package (standard library and dnslib
# only; tests/unit/test_layout.py holds it to that) and the two modules it
# shares with the controller. A folder, not a list: a new node module ships
# by being put there.
NODE_PACKAGE = "node"
SHARED_MODULES = ["__init__.py", "errors.py"]


def node_module_names(packages: tuple[str, ...] = (NODE_PACKAGE,), shared: bool = True) -> list[str]:
    """Paths under emu/ of every module copied into a node (those of `packages`), sorted."""
    from importlib import resources

    package = resources.files("emu")
    names = list(SHARED_MODULES) if shared else []

    def walk(folder, prefix: str) -> None:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.is_dir() and entry.name != "__pycache__":
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(".py"):
                names.append(f"{prefix}{entry.name}")

    for name in packages:
        walk(package.joinpath(name), f"{name}/")
    return names


def workload_files() -> dict[str, str]:
    """emu's built-in workload programs, copied into every node."""
    from importlib import resources  # here: the agent, which imports this module, never needs it

    source = resources.files("emu.node.workloads").joinpath("netexec.py").read_text()
    return {f"{WORKLOAD_DIR}/netexec.py": source}


def agent_files() -> dict[str, str | bytes]:
    """The agent's modules, each with its compiled bytecode (agent_bytecode)."""
    return dict(_agent_files())


def apiserver_files() -> dict[str, str | bytes]:
    """The API server's modules and data (emu.apiserver), for the first control-plane node."""
    return dict(_apiserver_files())


@functools.lru_cache(maxsize=1)
def _apiserver_files() -> dict[str, str | bytes]:
    from importlib import resources

    package = resources.files("emu")
    sources = {f"{AGENT_LIB}/emu/{name}": package.joinpath(name).read_text()
               for name in node_module_names(("apiserver",), shared=False)}  # fmt: skip
    data: dict[str, str | bytes] = {}
    folder = package.joinpath("apiserver")

    def walk(entry, prefix: str) -> None:  # its data files (OpenAPI documents), as they are
        for item in sorted(entry.iterdir(), key=lambda e: e.name):
            if item.is_dir() and item.name != "__pycache__":
                walk(item, f"{prefix}{item.name}/")
            elif item.is_file() and not item.name.endswith((".py", ".pyc")):
                data[f"{AGENT_LIB}/emu/{prefix}{item.name}"] = item.read_bytes()

    walk(folder, "apiserver/")
    return {**sources, **agent_bytecode(sources), **data}


# The API server (emu.apiserver) on the first control-plane node, its certificates
# (emu.control.pki) in PKI_DIR, its database in API_DATA_DIR.
API_PORT = 6443
PKI_DIR = "/etc/emu/pki"
API_DATA_DIR = "/var/lib/emu/apiserver"
API_LOG = "/var/log/emu/apiserver.log"


# The control loops the API server runs (emu.apiserver.controllers) while emu's commands
# still place pods and write workloads (docs/apiserver.md, stages 2-4): those that follow
# what the nodes report (EndpointSlices and Endpoints from the pods' readiness, node
# lifecycle from their Leases) and those every namespace has (its default
# ServiceAccount, kube-root-ca.crt).
# The scheduler too: it binds only pods without spec.nodeName (emu's own pods have one),
# and the node's kubelet (emu.node.agent.kubelet) runs what it binds. And the workload
# controllers and the garbage collector, for the workloads made through the API (they
# leave emu's own, marked emu.io/managed-by, to emu's commands). And the service
# load-balancer controller: LoadBalancer Services made through the API get an address
# of the lab's pool (--load-balancer-pool), around emu's own.
API_CONTROLLERS = ("endpointslice", "endpoints", "serviceaccount", "rootca", "nodelifecycle", "scheduler", "deployment",
                   "replicaset", "statefulset", "daemonset", "garbagecollector", "servicelb")


def api_server_node(state: ClusterState) -> NodeState:
    """The node the API server runs on: the first control-plane node, else the first node."""
    return next((node for node in state.nodes if node.role == "control-plane"), state.nodes[0])


def start_apiserver_line(state: ClusterState) -> str:
    """The API server, kept running: if it dies it is started again a second
    later, as the kubelet restarts a static pod."""
    server = shlex.join([
        "env", f"PYTHONPATH={AGENT_LIB}", "python3", "-m", "emu.apiserver",
        "--data", API_DATA_DIR, "--listen", f"0.0.0.0:{API_PORT}", "--pki", PKI_DIR,
        "--service-cidr", state.net.service_subnet, "--emu-driven", "--controllers", ",".join(API_CONTROLLERS),
        "--node-monitor-grace-period", f"{state.node_timing.grace:g}s",
        *(["--load-balancer-pool", "-".join(state.load_balancer_pool)] if state.load_balancer_pool else []),
    ])  # fmt: skip
    loop = f'while true; do {server}; echo "emu apiserver exited ($?); starting it again"; sleep 1; done'
    return f"mkdir -p {API_DATA_DIR} && setsid sh -c {shlex.quote(loop)} >>{API_LOG} 2>&1 </dev/null &"


@functools.lru_cache(maxsize=1)
def _agent_files() -> dict[str, str | bytes]:
    # Read and compiled once a process: every new node's plan carries them.
    from importlib import resources

    package = resources.files("emu")
    sources = {f"{AGENT_LIB}/emu/{name}": package.joinpath(name).read_text() for name in node_module_names()}
    return {**sources, **agent_bytecode(sources)}


def agent_bytecode(sources: dict[str, str]) -> dict[str, bytes]:
    """Each module compiled, as __pycache__/<module>.<this python's tag>.pyc:
    otherwise every node compiles them all again (150 ms of CPU each, 50 nodes
    to a big lab) as its agent and its DNS server start.
    Checked-hash pycs (PEP 552): the node's python compares the source's hash,
    not its time, so a pyc is used only with the very source it was made from;
    a node whose python is another version ignores them (its tag differs)."""
    import importlib.util
    import marshal
    import sys

    tag = sys.implementation.cache_tag
    if tag is None:
        return {}
    compiled = {}
    for path, text in sources.items():
        directory, name = path.rsplit("/", 1)
        source = text.encode()
        code = compile(source, path, "exec", dont_inherit=True)
        header = importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little") + importlib.util.source_hash(source)
        compiled[f"{directory}/__pycache__/{name[:-3]}.{tag}.pyc"] = header + marshal.dumps(code)
    return compiled


# Where the agents' service rules come from: the API server's Services and EndpointSlices
# (kube-proxy's watch, emu.node.agent.proxysync.ApiSource) when True; the state file and
# the hub's readiness when False. `emu up` waits for what this says (emu.control.cluster).
PROXY_FROM_API = True
# Where NetworkPolicy comes from where the service rules come from the API server: its
# NetworkPolicies, Pods and Namespaces (a CNI's policy agent's watch, emu.node.agent.policy.
# PolicySource) when True; the state file when False (kubectl's policies are then not enforced).
POLICY_FROM_API = True


def start_agent_line(node: NodeState) -> str:
    """The node agent (probes, readiness, service rules: emu.node.agent), kept running:
    if it dies it is started again a second later, as systemd restarts the kubelet."""
    # One malloc arena: the agent's threads would each get their own, and an
    # idle agent's memory would be mostly the arenas' free space. A fixed mmap
    # threshold: buffers over 128 KB (a state's text, iptables-save's output)
    # are mapped and unmapped, where glibc's sliding threshold soon put them in
    # the heap, which kept 1-4 MB of a 1,000-service agent after each.
    agent = shlex.join(
        ["env", f"PYTHONPATH={AGENT_LIB}", "MALLOC_ARENA_MAX=1", "MALLOC_MMAP_THRESHOLD_=131072", "python3", "-m",
         "emu.node.agent", "--node", node.name, *(["--proxy-from", "api"] if PROXY_FROM_API else []),
         *(["--policy-from", "state"] if PROXY_FROM_API and not POLICY_FROM_API else [])]
    )  # fmt: skip
    loop = f'while true; do {agent}; echo "emu agent exited ($?); starting it again"; sleep 1; done'
    return f"setsid sh -c {shlex.quote(loop)} >{AGENT_LOG} 2>&1 </dev/null &"


def node_plan(
    state: ClusterState,
    node: NodeState,
    added: list[PodState],
    removed: list[PodState],
    new_node: bool,
    plan_dir: str = PLAN_DIR,
    script_of=container_script,
) -> NodePlan:
    """The plan that takes one node from its current pods to the desired ones
    (its files under `plan_dir`; each container's start script at
    `script_of(netns, container)`: the kubelet keeps its API pods' elsewhere)."""
    plan = NodePlan(node=node.name, container=node.container)
    if new_node:
        plan.files.update(workload_files())
        plan.files.update(agent_files())
        plan.files[f"{plan_dir}/node.batch"] = node_setup_batch(state, node)
        plan.files[f"{plan_dir}/masquerade.rules"] = masquerade_rules(state, node)
        proxy = proxier(mode_of(state)).bootstrap(state, node, plan_dir)  # kube-proxy's hooks or tables
        plan.files.update(proxy.files)
        plan.files[f"{plan_dir}/agent-guard.rules"] = agent_guard_rules(state)
        plan.steps += [
            IPTABLES_BACKEND_STEP,
            f"ip -batch {plan_dir}/node.batch",
            f"iptables-restore --noflush {plan_dir}/masquerade.rules",
            *proxy.steps,
            f"iptables-restore --noflush {plan_dir}/agent-guard.rules",
            start_agent_line(node),
        ]
        if state.api_endpoint and node.name == api_server_node(state).name:
            plan.files.update(apiserver_files())
            plan.steps.append(start_apiserver_line(state))
    if removed:
        plan.steps.append(DELETE_POD_FUNCTION)
        replaced = {pod.netns for pod in added}
        for pod in sorted(removed, key=_order):
            plan.steps.append(
                f"emu_delete_pod {shlex.quote(pod.netns)} {pod.host_veth} {pod.ip}"
                + (" replaced" if pod.netns in replaced else " -")
                + (f" {pod.termination_grace_seconds}" if pod.termination_grace_seconds else "")
            )
    added = sorted(added, key=_order)
    if new_node and any(c.get("workload") == "coredns" for pod in added for c in pod.containers):
        # The cluster DNS starts with the state's records, no endpoint ready yet (ClusterIPs,
        # ExternalNames, pods' own names), so that its pods are ready when the hub's agent
        # first looks, and the other agents' first sync has them. Before, the first snapshot
        # came with the agent's first state, the pods turned ready a second or so later,
        # and 40 agents of a 50-node lab synced a second time for kube-dns alone.
        from emu.node.dns.snapshot import snapshot_text

        plan.files[DNS_SNAPSHOT] = snapshot_text(state, {})
    sandboxed = [pod for pod in added if image_pod(pod)]
    if sandboxed:
        plan.steps.append(SANDBOX_FUNCTION)
        for pod in sandboxed:
            plan.steps.append(f'ip netns attach {pod.netns} "$(emu_find_pid {SANDBOX_ENV}={pod.uid})"')
    if added:
        plan.files[f"{plan_dir}/pods.batch"] = "".join(pod_root_batch(pod, state.mtu) for pod in added)
        plan.steps.append(f"ip -batch {plan_dir}/pods.batch")
    plan.files.update(service_env_files(state, [p for p in added if not all(runs_image(c) for c in p.containers)]))
    for pod in added:
        batch = f"{plan_dir}/pod-{pod.netns}.batch"
        plan.files[batch] = pod_namespace_batch(pod, node)
        plan.files[f"/etc/netns/{pod.netns}/hosts"] = hosts_file(pod, state.net.dns_domain)
        resolv = resolv_conf(state, pod)
        if resolv is None:
            plan.steps.append(resolv_conf_step(pod))
        else:
            plan.files[f"/etc/netns/{pod.netns}/resolv.conf"] = resolv
        plan.steps.append(f"ip -n {pod.netns} -batch {batch}")
        plan.files.update(volume_files(pod))
        if pod.volumes:
            plan.steps.append("mkdir -p " + " ".join(shlex.quote(f"{VOLUME_DIR}/{pod.netns}/{v}") for v in pod.volumes))
    started = [pod for pod in added if not all(runs_image(c) for c in pod.containers)]
    if started:  # one mkdir for all, which each start script then finds made
        plan.steps.append("mkdir -p " + " ".join(shlex.quote(f"{d}/{pod.netns}") for pod in started for d in (LOG_DIR, RUN_DIR)))
    for pod in added:
        for container in pod.containers:
            script = script_of(pod.netns, container["name"])
            if runs_image(container):  # Docker starts it once the pod is wired; this records its process
                plan.files[script] = find_container_script(pod, container)
                continue
            plan.files[script] = start_container_script(pod, container)
            plan.steps.append(f". {script}")  # read by the plan's shell, not a shell of its own
    return plan


def find_container_script(pod: PodState, container: dict) -> str:
    """For an image container: record its process (in the node's PID namespace)
    in its pid file. Run once Docker has started it, and by the agent when the
    process is gone, after Docker started it again by its restart policy."""
    pid_file = f"{RUN_DIR}/{pod.netns}/{container['name']}.pid"
    return "\n".join(
        [
            f"# emu: image container {container['name']} of pod {pod.key}: Docker runs and restarts it; "
            "this records its process",
            SANDBOX_FUNCTION,
            f"mkdir -p {RUN_DIR}/{pod.netns}",
            # Not found (it exited, and Docker has not started it again yet): a pid file with no
            # process, so that the agent looks again, after its back-off.
            f"pid=$(emu_find_pid {shlex.quote(CONTAINER_ENV + '=' + pod.uid + '/' + container['name'])}) || pid=none",
            f"echo $pid >{shlex.quote(pid_file)}",
            "",
        ]
    )


def boot_files(state: ClusterState, node: NodeState) -> dict[str, str]:
    """What a node runs when its container starts again (`docker restart`, a
    host reboot): the plan of a new node with every pod it has, from the state
    it holds, after clearing what the old container left in /run (namespace
    mount points, pid files, the agent's). The node's command runs it."""
    # Image pods are not rebuilt here: their sandboxes ended with the node's PID namespace.
    pods = [pod for pod in state.pods_on(node.name) if not image_pod(pod)]
    plan = node_plan(state, node, pods, [], new_node=True, plan_dir=BOOT_DIR)
    plan.steps.insert(0, "rm -rf /run/netns /run/emu")
    return {name: text for name, text in plan.files.items() if name.startswith(BOOT_DIR)} | {BOOT_SCRIPT: plan.script}


def _order(pod: PodState) -> tuple[str, str]:
    return (pod.namespace, pod.name)
