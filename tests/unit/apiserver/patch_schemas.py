"""Small dict-backed PatchSchemas for Pod, Deployment and Service, with the
patch strategies and merge keys Kubernetes declares for those fields
(x-kubernetes-patch-strategy / x-kubernetes-patch-merge-key in its OpenAPI).

The real schemas come from openapi.py; these let patch.py be tested on its own.
"""

from __future__ import annotations


class DictSchema:
    """A PatchSchema backed by a dict: field -> (sub-schema name or None, strategy, merge key)."""

    def __init__(self, registry: dict[str, dict], name: str):
        self.registry = registry
        self.name = name

    def field(self, name: str):
        sub, strategy, key = self.registry[self.name].get(name, (None, "", ""))
        return (DictSchema(self.registry, sub) if sub else None), strategy, key



TYPES: dict[str, dict] = {
    "ObjectMeta": {
        "finalizers": (None, "merge", ""),
        "ownerReferences": ("OwnerReference", "merge", "uid"),
        "managedFields": ("ManagedFieldsEntry", "", ""),
    },
    "OwnerReference": {},
    "ManagedFieldsEntry": {},
    "LabelSelector": {"matchExpressions": ("LabelSelectorRequirement", "", "")},
    "LabelSelectorRequirement": {},
    "Pod": {"metadata": ("ObjectMeta", "", ""), "spec": ("PodSpec", "", ""),
            "status": ("PodStatus", "", "")},
    "PodTemplateSpec": {"metadata": ("ObjectMeta", "", ""), "spec": ("PodSpec", "", "")},
    "PodSpec": {
        "containers": ("Container", "merge", "name"),
        "initContainers": ("Container", "merge", "name"),
        "ephemeralContainers": ("Container", "merge", "name"),
        "volumes": ("Volume", "merge,retainKeys", "name"),
        "imagePullSecrets": ("LocalObjectReference", "merge", "name"),
        "tolerations": ("Toleration", "", ""),
        "hostAliases": ("HostAlias", "merge", "ip"),
        "topologySpreadConstraints": ("TopologySpreadConstraint", "merge", "topologyKey"),
        "schedulingGates": ("PodSchedulingGate", "merge", "name"),
        "securityContext": ("PodSecurityContext", "", ""),
        "affinity": ("Affinity", "", ""),
        "dnsConfig": ("PodDNSConfig", "", ""),
        "readinessGates": ("PodReadinessGate", "", ""),
    },
    "PodSecurityContext": {}, "Affinity": {}, "PodDNSConfig": {}, "PodReadinessGate": {},
    "LocalObjectReference": {}, "Toleration": {}, "HostAlias": {},
    "TopologySpreadConstraint": {"labelSelector": ("LabelSelector", "", "")},
    "PodSchedulingGate": {},
    "Container": {
        "ports": ("ContainerPort", "merge", "containerPort"),
        "env": ("EnvVar", "merge", "name"),
        "volumeMounts": ("VolumeMount", "merge", "mountPath"),
        "volumeDevices": ("VolumeDevice", "merge", "devicePath"),
        "resources": ("ResourceRequirements", "", ""),
        "envFrom": ("EnvFromSource", "", ""),
        "livenessProbe": ("Probe", "", ""), "readinessProbe": ("Probe", "", ""),
        "startupProbe": ("Probe", "", ""),
        "securityContext": ("SecurityContext", "", ""),
    },
    "ContainerPort": {}, "VolumeMount": {}, "VolumeDevice": {}, "EnvFromSource": {},
    "ResourceRequirements": {}, "SecurityContext": {},
    "Probe": {"httpGet": ("HTTPGetAction", "", ""), "exec": ("ExecAction", "", ""),
              "tcpSocket": ("TCPSocketAction", "", "")},
    "HTTPGetAction": {}, "ExecAction": {}, "TCPSocketAction": {},
    "EnvVar": {"valueFrom": ("EnvVarSource", "", "")},
    "EnvVarSource": {"configMapKeyRef": ("KeySelector", "", ""), "secretKeyRef": ("KeySelector", "", ""),
                     "fieldRef": ("KeySelector", "", "")},
    "KeySelector": {},
    "Volume": {
        "configMap": ("ConfigMapVolumeSource", "", ""),
        "secret": ("SecretVolumeSource", "", ""),
        "emptyDir": ("EmptyDirVolumeSource", "", ""),
        "hostPath": ("HostPathVolumeSource", "", ""),
        "persistentVolumeClaim": ("PVCSource", "", ""),
    },
    "ConfigMapVolumeSource": {"items": ("KeyToPath", "", "")},
    "SecretVolumeSource": {"items": ("KeyToPath", "", "")},
    "KeyToPath": {}, "EmptyDirVolumeSource": {}, "HostPathVolumeSource": {}, "PVCSource": {},
    "PodStatus": {
        "conditions": ("PodCondition", "merge", "type"),
        "podIPs": ("PodIP", "merge", "ip"),
        "containerStatuses": ("ContainerStatus", "", ""),
    },
    "PodCondition": {}, "PodIP": {}, "ContainerStatus": {},
    "Deployment": {"metadata": ("ObjectMeta", "", ""), "spec": ("DeploymentSpec", "", ""),
                   "status": ("DeploymentStatus", "", "")},
    "DeploymentSpec": {
        "selector": ("LabelSelector", "", ""),
        "template": ("PodTemplateSpec", "", ""),
        "strategy": ("DeploymentStrategy", "retainKeys", ""),
    },
    "DeploymentStrategy": {"rollingUpdate": ("RollingUpdateDeployment", "", "")},
    "RollingUpdateDeployment": {},
    "DeploymentStatus": {"conditions": ("DeploymentCondition", "merge", "type")},
    "DeploymentCondition": {},
    "Service": {"metadata": ("ObjectMeta", "", ""), "spec": ("ServiceSpec", "", ""),
                "status": ("ServiceStatus", "", "")},
    "ServiceSpec": {
        "ports": ("ServicePort", "merge", "port"),
        "sessionAffinityConfig": ("SessionAffinityConfig", "", ""),
    },
    "ServicePort": {}, "SessionAffinityConfig": {}, "ServiceStatus": {},
}

POD = DictSchema(TYPES, "Pod")
DEPLOYMENT = DictSchema(TYPES, "Deployment")
SERVICE = DictSchema(TYPES, "Service")
