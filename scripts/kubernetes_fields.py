"""Regenerate emu/api/manifests/fields.py: the fields of the Kubernetes API types whose
manifests emu reads, from the official Python client's models (its OpenAPI
types). emu needs the list to tell a field Kubernetes has but emu does not model
(a warning) from one Kubernetes has not either (an error, as kubectl's strict
field validation).

    pip install kubernetes && python scripts/kubernetes_fields.py > emu/api/manifests/fields.py
"""

from __future__ import annotations

import re

import kubernetes
from kubernetes import client

# The types emu reads into (their other fields are warned about as a whole).
ROOTS = [
    "V1Pod", "V1Service", "V1ConfigMap", "V1Namespace", "V1Deployment", "V1StatefulSet", "V1DaemonSet",
    "V1PodSpec", "V1Container", "V1ContainerPort", "V1EnvVar", "V1EnvVarSource", "V1ConfigMapKeySelector",
    "V1ObjectFieldSelector", "V1EnvFromSource", "V1ConfigMapEnvSource", "V1VolumeMount", "V1Volume",
    "V1ConfigMapVolumeSource", "V1KeyToPath", "V1Probe", "V1HTTPGetAction", "V1TCPSocketAction", "V1ExecAction",
    "V1PodDNSConfig", "V1PodDNSConfigOption", "V1Toleration", "V1ServiceSpec", "V1ServicePort",
    "V1SessionAffinityConfig", "V1ClientIPConfig", "V1DeploymentSpec", "V1StatefulSetSpec", "V1DaemonSetSpec",
    "V1PodTemplateSpec", "V1LabelSelector", "V1LabelSelectorRequirement", "V1ObjectMeta", "V1NamespaceSpec",
    "V1EmptyDirVolumeSource", "V1HTTPHeader",
    "V1NetworkPolicy", "V1NetworkPolicySpec", "V1NetworkPolicyIngressRule", "V1NetworkPolicyEgressRule",
    "V1NetworkPolicyPeer", "V1NetworkPolicyPort", "V1IPBlock", "V1Ingress", "V1IngressSpec", "V1IngressRule",
    "V1HTTPIngressRuleValue", "V1HTTPIngressPath", "V1IngressBackend", "V1IngressServiceBackend",
    "V1ServiceBackendPort", "V1IngressTLS", "V1Secret",
]  # fmt: skip


def kind(openapi_type: str) -> str:
    """'list[V1Container]' -> 'list:Container', 'dict[str, str]' -> 'map', 'V1PodSpec' -> 'PodSpec'."""
    inner = re.fullmatch(r"(?i)list\[(\w+)\]", openapi_type)
    if inner:
        return "list:" + kind(inner.group(1))
    if openapi_type.lower().startswith("dict"):
        return "map"
    return re.sub(r"^V1", "", openapi_type) if openapi_type.startswith("V1") else openapi_type


def main() -> None:
    print(f'"""Fields of the Kubernetes API types emu reads (generated from the kubernetes {kubernetes.__version__}')
    print('Python client by scripts/kubernetes_fields.py; do not edit). {type: {field: type}}."""')
    print()
    print("FIELDS: dict[str, dict[str, str]] = {")
    for root in ROOTS:
        model = getattr(client, root)
        fields = {model.attribute_map[name]: kind(t) for name, t in model.openapi_types.items()}
        print(f"    {re.sub('^V1', '', root)!r}: {{")
        for field, type_ in sorted(fields.items()):
            print(f"        {field!r}: {type_!r},")
        print("    },")
    print("}")


if __name__ == "__main__":
    main()
