"""Image pods without Docker: what the node plans do for them, and what the
controller asks Docker for (emu.control.imagepods, emu.control.runtime.sandbox records)."""

from __future__ import annotations

from emu.control import imagepods

from emu.node import reconcile
from emu.node.plan import cni
from emu.control.runtime.sandbox import ImagePod, _labels
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

LAB = """\
name: lab
nodes: [{name: cp, role: control-plane}, {name: w1}]
configMaps:
  - {name: settings, data: {app.conf: "color=blue", GREETING: hi}}
pods:
  - name: web
    hostname: web-0
    subdomain: web
    restartPolicy: OnFailure
    volumes: [{name: config, configMap: {name: settings}}]
    containers:
      - name: server
        image: example/web:1
        args: ["--port=8080"]
        env: [{name: MODE, value: test}]
        volumeMounts:
          - {name: config, mountPath: /etc/web}
          - {name: config, mountPath: /etc/greeting.txt, subPath: GREETING}
      - name: shell
        command: [sleep, infinity]
  - {name: plain, containers: [{name: c, command: [sleep, infinity]}]}
services:
  - {name: web, clusterIP: None, selector: {app: web}, ports: [{port: 8080}]}
"""


def state():
    return plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24", node_image="emu/node:test")


def test_an_image_pods_namespace_is_its_sandboxes_attached_by_the_node():
    desired = state()
    web, plain = desired.pods["default/web"], desired.pods["default/plain"]
    assert cni.image_pod(web) and not cni.image_pod(plain)
    assert not cni.pod_root_batch(web).startswith("netns add") and cni.pod_root_batch(plain).startswith("netns add plain")
    plan = cni.node_plan(desired, desired.node("w1"), [web, plain], [], new_node=False)
    attach = f'ip netns attach web "$(emu_find_pid EMU_SANDBOX={web.uid})"'
    script = plan.script
    assert script.index(attach) < script.index("ip -batch /etc/emu/plan/pods.batch")
    # The image container is Docker's to start: the plan only writes how to find its process.
    server_script = plan.files["/etc/emu/containers/web/server.sh"]
    assert f"EMU_CONTAINER={web.uid}/server" in server_script and "/run/emu/pods/web/server.pid" in server_script
    assert "/etc/emu/containers/web/server.sh" not in script
    assert ". /etc/emu/containers/web/shell.sh" in script  # the command container beside it starts as any


def test_a_restarted_node_and_repairs_leave_image_pods_to_the_controller():
    desired = state()
    boot = cni.boot_files(desired, desired.node("w1"))
    assert "netns add plain" in boot["/etc/emu/plan/boot/pods.batch"] and "web" not in boot["/etc/emu/plan/boot/pods.batch"]
    seen = reconcile.Observed(bridge=True, agent=True)  # nothing of either pod is there
    assert set(reconcile.drift(desired, desired.node("w1"), seen).pods) == {"default/plain"}


def test_what_docker_is_asked_for():
    desired = state()
    web = desired.pods["default/web"]
    pod = imagepods.spec(desired, web)
    assert pod.sandbox == f"lab_k8s_POD_web_default_{pod.uid_label}"
    assert (pod.hostname, pod.restart_policy, pod.sandbox_image) == ("web-0", "OnFailure", "emu/node:test")
    assert pod.nameservers == ["10.96.0.10"] and pod.options == ["ndots:5"]
    assert pod.searches == ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    assert pod.hosts == [f"web-0.web.default.svc.cluster.local:{web.ip}", f"web-0:{web.ip}"]
    [server] = pod.containers  # the command container is not Docker's
    assert (server.image, server.command, server.args) == ("example/web:1", None, ["--port=8080"])
    assert server.env["MODE"] == "test" and server.env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert server.files == {"/etc/web/app.conf": "color=blue", "/etc/web/GREETING": "hi", "/etc/greeting.txt": "hi"}
    labels = _labels(pod, "server")
    assert labels["io.emu.role"] == "pod" and labels["io.emu.pod"] == "default/web"


def test_a_recreated_pod_is_a_new_set_of_containers():
    one = ImagePod("lab", "lab-w1", "w1", "default/web", "default/web@10.244.1.2", "web", "web", "img", [])
    two = ImagePod("lab", "lab-w1", "w1", "default/web", "default/web@10.244.1.3", "web", "web", "img", [])
    assert one.sandbox != two.sandbox  # created before the old one is removed: names must differ


def test_get_says_why_an_image_container_stopped():
    from emu.api.manifests.render import View, format_table, table

    desired = state()
    web = desired.pods["default/web"]
    status = {web.key: {"server": {"state": "Exited", "ready": False, "restarts": 0, "started": 100},
                        "shell": {"state": "Running", "ready": True, "restarts": 0, "started": 100}}}  # fmt: skip
    docker = {imagepods.container_name(desired, web, "server"): {
        "running": False, "exitCode": 2, "restartCount": 4, "startedAt": "t0", "finishedAt": "t1", "error": ""}}

    def shown(policy: str) -> tuple[dict, str]:
        web.restart_policy = policy
        view = View(desired, status, 200.0, docker)
        pod = view.pod(web)
        row = format_table(table(view, "Pod", [pod], wide=False, namespaced_column=False)).splitlines()[1].split()
        return pod["status"]["containerStatuses"][0], row[2]

    server, column = shown("OnFailure")  # exit 2: Docker starts it again
    assert server["state"]["waiting"]["reason"] == "CrashLoopBackOff" and column == "CrashLoopBackOff"
    assert server["lastState"]["terminated"]["exitCode"] == 2 and server["restartCount"] == 4
    server, column = shown("Never")
    assert server["state"] == {"terminated": {"exitCode": 2, "reason": "Error", "startedAt": "t0", "finishedAt": "t1"}}
    assert column == "Error"
