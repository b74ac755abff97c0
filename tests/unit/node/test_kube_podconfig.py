"""emu.node.kube.podconfig: what a pod made through the API takes from ConfigMaps,
Secrets and itself when its kubelet starts it (environment, args, volume files and
mounts), and the kubelet's reasons when it cannot start."""

from __future__ import annotations

import base64

import pytest

from emu.node.kube import podconfig, podwatch
from emu.node.plan import cni

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
OBJECTS = {
    ("ConfigMap", "shop", "settings"): {"metadata": {"name": "settings"},
                                        "data": {"GREETING": "hello", "COLOR": "blue", "bad key": "x",
                                                 "app.conf": "mode=shop\n"},
                                        "binaryData": {"logo.txt": base64.b64encode(b"emu\n").decode()}},
    ("Secret", "shop", "creds"): {"metadata": {"name": "creds"},
                                  "data": {"PASSWORD": base64.b64encode(b"s3cret").decode()}},
}  # fmt: skip


def read(kind: str, namespace: str, name: str) -> dict | None:
    return OBJECTS.get((kind, namespace, name))


def pod_object(container: dict, volumes: list | None = None) -> dict:
    base = {"name": "web", "image": AGNHOST, "args": ["netexec", "--http-port=$(PORT)"]}
    return {"metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "w1", "containers": [{**base, **container}], "volumes": volumes or []}}  # fmt: skip


def configured(obj: dict):
    return podconfig.configure(obj, podwatch.pod_state(obj, "w1", "10.244.1.192"), "172.28.0.3", read)


def test_env_from_config_maps_secrets_fields_and_references_in_the_kubelets_order():
    obj = pod_object({
        "envFrom": [{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "creds"}, "prefix": "DB_"}],
        "env": [{"name": "COLOR", "value": "red"},  # env after envFrom: it wins
                {"name": "PORT", "value": "8080"},
                {"name": "URL", "value": "http://$(POD_IP):$(PORT)/$(LATER)$$"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MSG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "GREETING"}}},
                {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
    })  # fmt: skip
    pod = configured(obj)
    [container] = pod.containers
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"GREETING": "hello", "COLOR": "red", "app.conf": "mode=shop\n", "logo.txt": "emu\n",
                   "DB_PASSWORD": "s3cret", "PORT": "8080",
                   "URL": "http://$(POD_IP):8080/$(LATER)$",  # only variables defined before it
                   "POD_IP": "10.244.1.192", "MSG": "hello", "APP": "web", "NODE": "w1", "HOST": "172.28.0.3"}
    assert "bad key" not in env  # not a variable name: skipped, as the kubelet skips it
    assert container["args"] == ["--http-port=8080"]  # $(VAR) in args too
    # What the container's process gets (emu's plans start it with exactly this environment):
    started = cni.start_container_script(pod, container)
    assert "MSG=hello" in started and "DB_PASSWORD=s3cret" in started and "netexec.py --http-port=8080" in started


def test_volumes_of_config_maps_secrets_and_empty_dirs_are_files_the_containers_mount():
    obj = pod_object({"volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": True},
                                       {"name": "one", "mountPath": "/etc/one.conf", "subPath": "one.conf"},
                                       {"name": "scratch", "mountPath": "/tmp/scratch"}]},
                     [{"name": "config", "configMap": {"name": "settings"}},
                      {"name": "one", "configMap": {"name": "settings",
                                                    "items": [{"key": "app.conf", "path": "one.conf"}]}},
                      {"name": "secret", "secret": {"secretName": "creds"}},
                      {"name": "maybe", "configMap": {"name": "nope", "optional": True}},
                      {"name": "scratch", "emptyDir": {}}])  # fmt: skip
    pod = configured(obj)
    assert pod.volumes == {"config": {"GREETING": "hello", "COLOR": "blue", "bad key": "x", "app.conf": "mode=shop\n",
                                      "logo.txt": "emu\n"},
                           "one": {"one.conf": "mode=shop\n"}, "secret": {"PASSWORD": "s3cret"}, "maybe": {},
                           "scratch": {}}  # fmt: skip
    assert cni.volume_files(pod)["/var/lib/emu/volumes/shop.web-1/one/one.conf"] == "mode=shop\n"
    mounts = cni.mount_commands(pod, pod.containers[0])
    assert "mount --bind /var/lib/emu/volumes/shop.web-1/config /etc/app" in mounts
    assert "mount -o remount,bind,ro /etc/app" in mounts
    assert "mount --bind /var/lib/emu/volumes/shop.web-1/one/one.conf /etc/one.conf" in mounts


@pytest.mark.parametrize("container, volumes, reason, message", [
    ({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x"}}}]}, [],
     "CreateContainerConfigError", 'configmap "nope" not found'),
    ({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MISSING"}}}]}, [],
     "CreateContainerConfigError", "couldn't find key MISSING in ConfigMap shop/settings"),
    ({"envFrom": [{"secretRef": {"name": "nope"}}]}, [], "CreateContainerConfigError", 'secret "nope" not found'),
    ({}, [{"name": "v", "configMap": {"name": "nope"}}], "CreateContainerConfigError", 'configmap "nope" not found'),
    ({}, [{"name": "v", "configMap": {"name": "settings", "items": [{"key": "MISSING", "path": "p"}]}}],
     "CreateContainerConfigError", "non-existent config key: MISSING"),
    ({}, [{"name": "v", "hostPath": {"path": "/"}}], "CreateContainerError", "volume 'v' (hostPath)"),
    ({"volumeMounts": [{"name": "v", "mountPath": "/x"}]}, [], "CreateContainerError", "no volume of that name"),
    ({"env": [{"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}, [],
     "CreateContainerError", "not resourceFieldRef"),
    ({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.priority"}}}]}, [],
     "CreateContainerError", "fieldRef 'spec.priority'"),
])  # fmt: skip
def test_what_stops_a_pod_from_starting_says_why_with_the_kubelets_reason(container, volumes, reason, message):
    with pytest.raises(podconfig.PodConfigError) as stopped:
        configured(pod_object(container, volumes))
    assert stopped.value.reason == reason and message in stopped.value.message


def test_service_variables_of_the_pods_namespace_and_the_kubernetes_service_under_its_own_env():
    from emu.node.records import ServicePortState, ServiceState

    def service(namespace: str, name: str, ip: str, port: int, port_name: str = "") -> ServiceState:
        return ServiceState(namespace, name, "ClusterIP", ip, [ServicePortState(port_name, port, "TCP", port)])

    services = {s.key: s for s in (service("default", "kubernetes", "10.96.0.1", 443, "https"),
                                   service("shop", "web-api", "10.96.0.20", 80, "http"),
                                   service("other", "db", "10.96.0.30", 5432))}  # fmt: skip
    obj = pod_object({"env": [{"name": "WEB_API_SERVICE_PORT", "value": "8080"},  # its own env wins
                              {"name": "URL", "value": "http://$(WEB_API_SERVICE_HOST)"}]})  # fmt: skip
    pod = podconfig.configure(obj, podwatch.pod_state(obj, "w1", "10.244.1.192"), "172.28.0.3", read, services)

    def started(pod) -> dict[str, str]:
        """The environment its container starts with: the Service variables' file the node
        plan writes (from the same Services), then its own env, as in_pod_argv runs them."""
        files = cni.service_env_files(services, [pod])
        sourced = files[files[cni.service_env_file(pod)].split()[1]]
        env = {line[len("export "):].split("=", 1)[0]: line.split("=", 1)[1] for line in sourced.splitlines()}
        return {**env, **dict(item.split("=", 1) for item in cni.container_environment(pod, pod.containers[0]))}

    env = started(pod)
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert env["WEB_API_SERVICE_HOST"] == "10.96.0.20" and env["WEB_API_PORT"] == "tcp://10.96.0.20:80"
    assert env["WEB_API_SERVICE_PORT"] == "8080" and env["URL"] == "http://10.96.0.20"
    assert not any(name.startswith("DB_") for name in env)  # another namespace's
    obj["spec"]["enableServiceLinks"] = False
    pod = podconfig.configure(obj, podwatch.pod_state(obj, "w1", "10.244.1.192"), "172.28.0.3", read, services)
    env = started(pod)
    assert "WEB_API_SERVICE_HOST" not in env and env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
