"""The node agent: emu's kubelet-and-kube-proxy inside every node.

It reads the cluster snapshot the controller writes (/etc/emu/state.json),
probes the readiness of its own pods from the node's root namespace, reports
it to the hub (the agent on the first control-plane node, which holds every
node's readiness as the API server holds pod status) and watches the hub for
the others', and programs the node's service rules from the ready endpoints.
Standard library only: it runs with the node image's python3.

Its jobs live in one module each (probes, gossip, proxysync, edge), driven by
__main__; the paths and port below are the one place they are named.
"""

import os
import subprocess

AGENT_PORT = 10250  # the kubelet's
AGENT_URL = f"http://127.0.0.1:{AGENT_PORT}"
STATE_FILE = "/etc/emu/state.json"
STATUS_FILE = "/run/emu/agent/status.json"  # the generation programmed, for a look into the node (`emu up` asks GET /wait)
RESTARTS_FILE = "/run/emu/agent/restarts.json"  # restart counts, kept across agent restarts
PID_FILE = "/run/emu/agent/agent.pid"  # SIGHUP: a new state was written, read it now
DNS_SNAPSHOT = "/etc/emu/dns/snapshot.json"  # read by the coredns pods on this node
RUN_DIR = "/run/emu/pods"  # <netns>/<container>.pid
CONTAINER_DIR = "/etc/emu/containers"  # <netns>/<container>.sh: how each container is started
# Made by an `emu` command's plan while it changes this node, removed once the new
# state is in place: the agent leaves the node's pods alone meanwhile.
HOLD_FILE = "/run/emu/agent/hold"
# The cluster's lock (a directory on the hub's node): one change at a time, be it
# an `emu` command's or the hub's eviction of a lost node's pods.
LOCK_DIR = "/etc/emu/lock"


# Image pods (emu.control.runtime.sandbox): their sandbox and containers run in the node's PID
# namespace with these in their environment, so the node finds their processes.
SANDBOX_ENV = "EMU_SANDBOX"  # =<pod uid>
CONTAINER_ENV = "EMU_CONTAINER"  # =<pod uid>/<container>


def write_atomically(path: str, text: str, suffix: str = ".new") -> None:
    """Write beside `path` and rename into place: a reader sees the old file or
    the new one, never half of one. (The agent writes the state with its own
    suffix: the controller stages a new state as state.json.new.)"""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + suffix, "w") as handle:
        handle.write(text)
    os.replace(path + suffix, path)


def container_file(netns: str, container: str, kind: str) -> str:
    """RUN_DIR/<netns>/<container>.<kind>: 'pid' (its process), 'exit' (its exit code, once it ended)."""
    return f"{RUN_DIR}/{netns}/{container}.{kind}"


def container_script(netns: str, container: str) -> str:
    """The script that starts a pod's container (written by the plan, rerun by the agent)."""
    return f"{CONTAINER_DIR}/{netns}/{container}.sh"


# No command the agent runs may hold a job for good: a run blocked on a lock or
# a stuck tool would stop that job's every later run (kube-proxy bounds its
# iptables-restore calls with the xtables lock's wait too). A sync that writes
# 41,000 chains takes 5-14 s on a saturated machine; 300 s is far beyond any
# honest run. A timeout raises subprocess.TimeoutExpired: the runner logs it
# and tries again.
COMMAND_TIMEOUT = 300.0


def run(argv, **options) -> subprocess.CompletedProcess:
    """subprocess.run with COMMAND_TIMEOUT unless a timeout is given: what every
    job of the agent runs its commands with."""
    options.setdefault("timeout", COMMAND_TIMEOUT)
    return subprocess.run(argv, **options)
