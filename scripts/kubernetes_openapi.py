"""Regenerate emu/apiserver/data/: the OpenAPI documents emu's API server serves
(Swagger 2.0 at /openapi/v2, OpenAPI 3.0 per group-version at /openapi/v3/...).

The schemas come from the official Python client's models (their fields, types,
required fields and descriptions: the client is generated from Kubernetes' own
OpenAPI; its required fields were checked against the Go types' json tags and
+optional markers and agree). What the client does not carry is kept by hand
below, written from Kubernetes' Go types (k8s.io/api, k8s.io/apimachinery): the
Go package of each type (the definition names), patch strategies and merge
keys, list, map and struct types, int64 formats, Quantity / IntOrString / Time /
MicroTime fields, and the resources served with their verbs (the paths). Every
table entry must name a field the client has (the script stops otherwise).

    python scripts/kubernetes_openapi.py [--out DIR]     (default emu/apiserver/data)

The output is deterministic: the same client gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import kubernetes
from kubernetes import client

# ---------------------------------------------------------------------------
# Definition names: the Go package of every model the served kinds reach.

API = "io.k8s.api."
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
TIME = META + "Time"
MICROTIME = META + "MicroTime"
FIELDSV1 = META + "FieldsV1"
PATCH = META + "Patch"
RAW = "io.k8s.apimachinery.pkg.runtime.RawExtension"
INTORSTRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"

# Types of k8s.io/apimachinery/pkg/apis/meta/v1 (by the client's class name).
META_TYPES = {
    "V1ObjectMeta", "V1ListMeta", "V1OwnerReference", "V1ManagedFieldsEntry", "V1LabelSelector",
    "V1LabelSelectorRequirement", "V1Status", "V1StatusDetails", "V1StatusCause", "V1DeleteOptions",
    "V1Preconditions", "V1WatchEvent", "V1Condition", "V1FieldSelectorRequirement", "V1APIResource",
    "V1APIResourceList", "V1ShardInfo", "V1APIVersions", "V1APIGroupList", "V1APIGroup",
    "V1GroupVersionForDiscovery", "V1ServerAddressByClientCIDR",
}  # fmt: skip

# The client prefixes a class with its group where two packages share a name.
GROUP_PREFIX = {"CoreV1": "core.v1", "EventsV1": "events.v1", "DiscoveryV1": "discovery.v1",
                "RbacV1": "rbac.v1", "AuthenticationV1": "authentication.v1"}  # fmt: skip

# Models reached first from another group's kind but defined in core/v1
# (apps' pod templates and StatefulSet's volume claim templates).
CORE_TYPES = {
    "V1PodTemplateSpec", "V1PersistentVolumeClaim", "V1PersistentVolumeClaimStatus",
    "V1PersistentVolumeClaimCondition", "V1ModifyVolumeStatus",
}  # fmt: skip


class Kind:
    """One kind served: its group/version, client model, plural, scope, verbs, subresources."""

    def __init__(self, group, version, kind, model, plural="", namespaced=True, verbs="crudpl", sub=(), listed=True):
        self.group, self.version, self.kind, self.model = group, version, kind, model
        self.plural, self.namespaced, self.verbs, self.sub = plural, namespaced, verbs, sub
        self.listed = listed and ("l" in verbs)

    @property
    def package(self) -> str:
        return f"{(self.group.split('.')[0] or 'core')}.{self.version}"

    @property
    def gv_path(self) -> str:
        return f"api/{self.version}" if not self.group else f"apis/{self.group}/{self.version}"


# verbs: c create, r get, u update, d delete, p patch, l list (+watch, deletecollection)
# sub: (name, kind-model or None for the kind itself, verbs) ; "status" and "scale" as Kubernetes serves them
STATUS = ("status", None, "rup")
SCALE = ("scale", "V1Scale", "rup")
KINDS = [
    Kind("", "v1", "Namespace", "V1Namespace", "namespaces", False, "crudpl", (STATUS, ("finalize", None, "u"))),
    Kind("", "v1", "Node", "V1Node", "nodes", False, "crudpl", (STATUS,)),
    Kind("", "v1", "Pod", "V1Pod", "pods", True, "crudpl",
         (STATUS, ("binding", "V1Binding", "c"), ("log", "str", "r"), ("exec", "str", "x"),
          ("portforward", "str", "x"))),
    Kind("", "v1", "Service", "V1Service", "services", True, "crudpl", (STATUS,)),
    Kind("", "v1", "Endpoints", "V1Endpoints", "endpoints"),
    Kind("", "v1", "ConfigMap", "V1ConfigMap", "configmaps"),
    Kind("", "v1", "Secret", "V1Secret", "secrets"),
    Kind("", "v1", "ServiceAccount", "V1ServiceAccount", "serviceaccounts", True, "crudpl",
         (("token", "AuthenticationV1TokenRequest", "c"),)),
    Kind("", "v1", "Event", "CoreV1Event", "events"),
    Kind("", "v1", "Binding", "V1Binding", "bindings", True, "c"),
    Kind("events.k8s.io", "v1", "Event", "EventsV1Event", "events"),
    Kind("discovery.k8s.io", "v1", "EndpointSlice", "V1EndpointSlice", "endpointslices"),
    Kind("coordination.k8s.io", "v1", "Lease", "V1Lease", "leases"),
    Kind("apps", "v1", "Deployment", "V1Deployment", "deployments", True, "crudpl", (STATUS, SCALE)),
    Kind("apps", "v1", "ReplicaSet", "V1ReplicaSet", "replicasets", True, "crudpl", (STATUS, SCALE)),
    Kind("apps", "v1", "StatefulSet", "V1StatefulSet", "statefulsets", True, "crudpl", (STATUS, SCALE)),
    Kind("apps", "v1", "DaemonSet", "V1DaemonSet", "daemonsets", True, "crudpl", (STATUS,)),
    Kind("networking.k8s.io", "v1", "NetworkPolicy", "V1NetworkPolicy", "networkpolicies"),
    Kind("networking.k8s.io", "v1", "Ingress", "V1Ingress", "ingresses", True, "crudpl", (STATUS,)),
    Kind("networking.k8s.io", "v1", "IngressClass", "V1IngressClass", "ingressclasses", False),
    Kind("rbac.authorization.k8s.io", "v1", "Role", "V1Role", "roles"),
    Kind("rbac.authorization.k8s.io", "v1", "ClusterRole", "V1ClusterRole", "clusterroles", False),
    Kind("rbac.authorization.k8s.io", "v1", "RoleBinding", "V1RoleBinding", "rolebindings"),
    Kind("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "V1ClusterRoleBinding", "clusterrolebindings",
         False),
    Kind("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "V1SelfSubjectAccessReview",
         "selfsubjectaccessreviews", False, "c"),
    Kind("authorization.k8s.io", "v1", "SubjectAccessReview", "V1SubjectAccessReview", "subjectaccessreviews",
         False, "c"),
    Kind("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "V1LocalSubjectAccessReview",
         "localsubjectaccessreviews", True, "c"),
    Kind("authentication.k8s.io", "v1", "SelfSubjectReview", "V1SelfSubjectReview", "selfsubjectreviews", False,
         "c"),
]  # fmt: skip
# Kinds with a schema but no resource of their own here (subresource bodies).
EXTRA_KINDS = [
    Kind("autoscaling", "v1", "Scale", "V1Scale", listed=False),
    Kind("authentication.k8s.io", "v1", "TokenRequest", "AuthenticationV1TokenRequest", listed=False),
]
# meta/v1 kinds served in every group-version (GVK extension with each group's version).
META_KINDS = ["V1Status", "V1DeleteOptions", "V1WatchEvent", "V1APIResourceList"]
# The discovery documents' types (GET /api/, /apis/, /apis/<group>/, /version/).
DISCOVERY_MODELS = ["V1APIVersions", "V1APIGroupList", "V1APIGroup", "VersionInfo"]
VERSION_INFO = "io.k8s.apimachinery.pkg.version.Info"

# ---------------------------------------------------------------------------
# What the client's models do not say (from the Go types' struct tags and markers).
# Keys: "<package>.<Type>.<jsonField>" with the package as in the definition name.

# x-kubernetes-patch-strategy, x-kubernetes-patch-merge-key
PATCH_META = {
    "core.v1.PodSpec.volumes": ("merge,retainKeys", "name"),
    "core.v1.PodSpec.initContainers": ("merge", "name"),
    "core.v1.PodSpec.containers": ("merge", "name"),
    "core.v1.PodSpec.ephemeralContainers": ("merge", "name"),
    "core.v1.PodSpec.imagePullSecrets": ("merge", "name"),
    "core.v1.PodSpec.hostAliases": ("merge", "ip"),
    "core.v1.PodSpec.topologySpreadConstraints": ("merge", "topologyKey"),
    "core.v1.PodSpec.schedulingGates": ("merge", "name"),
    "core.v1.PodSpec.resourceClaims": ("merge,retainKeys", "name"),
    "core.v1.Container.ports": ("merge", "containerPort"),
    "core.v1.Container.env": ("merge", "name"),
    "core.v1.Container.volumeMounts": ("merge", "mountPath"),
    "core.v1.Container.volumeDevices": ("merge", "devicePath"),
    "core.v1.EphemeralContainer.ports": ("merge", "containerPort"),
    "core.v1.EphemeralContainer.env": ("merge", "name"),
    "core.v1.EphemeralContainer.volumeMounts": ("merge", "mountPath"),
    "core.v1.EphemeralContainer.volumeDevices": ("merge", "devicePath"),
    "core.v1.ContainerStatus.volumeMounts": ("merge", "mountPath"),
    "core.v1.ContainerStatus.allocatedResourcesStatus": ("merge", "name"),
    "core.v1.PodStatus.conditions": ("merge", "type"),
    "core.v1.PodStatus.hostIPs": ("merge", "ip"),
    "core.v1.PodStatus.podIPs": ("merge", "ip"),
    "core.v1.PodStatus.resourceClaimStatuses": ("merge,retainKeys", "name"),
    "core.v1.PersistentVolumeClaimStatus.conditions": ("merge", "type"),
    "core.v1.ServiceSpec.ports": ("merge", "port"),
    "core.v1.ServiceStatus.conditions": ("merge", "type"),
    "core.v1.ServiceAccount.secrets": ("merge", "name"),
    "core.v1.NodeSpec.podCIDRs": ("merge", ""),
    "core.v1.NodeStatus.conditions": ("merge", "type"),
    "core.v1.NodeStatus.addresses": ("merge", "type"),
    "core.v1.NamespaceStatus.conditions": ("merge", "type"),
    "apps.v1.DeploymentSpec.strategy": ("retainKeys", ""),
    "apps.v1.DeploymentStatus.conditions": ("merge", "type"),
    "apps.v1.ReplicaSetStatus.conditions": ("merge", "type"),
    "apps.v1.StatefulSetStatus.conditions": ("merge", "type"),
    "apps.v1.DaemonSetStatus.conditions": ("merge", "type"),
    "meta.v1.ObjectMeta.ownerReferences": ("merge", "uid"),
    "meta.v1.ObjectMeta.finalizers": ("merge", ""),
    # alpha fields of newer releases the client already has
    "core.v1.PodSpec.evictionResponders": ("merge", "name"),
    "core.v1.PodStatus.nodeAllocatableResourceClaimStatuses": ("merge", "resourceClaimName"),
    "core.v1.VolumeHealthStatus.healthConditions": ("merge", "status"),
    "core.v1.PodVolumeHealth.healthConditions": ("merge", "status"),
    "core.v1.NodeAllocatableResourceClaimStatus.mapping": ("merge", "name"),
    "core.v1.NodeAllocatableResourceClaimStatus.overhead": ("merge", "name"),
}

# x-kubernetes-list-type "map" with its x-kubernetes-list-map-keys, or "set"
# (server-side apply merges these; every other list is atomic).
LIST_MAP = {
    "core.v1.PodSpec.volumes": ["name"],
    "core.v1.PodSpec.initContainers": ["name"],
    "core.v1.PodSpec.containers": ["name"],
    "core.v1.PodSpec.ephemeralContainers": ["name"],
    "core.v1.PodSpec.imagePullSecrets": ["name"],
    "core.v1.PodSpec.hostAliases": ["ip"],
    "core.v1.PodSpec.topologySpreadConstraints": ["topologyKey", "whenUnsatisfiable"],
    "core.v1.PodSpec.schedulingGates": ["name"],
    "core.v1.PodSpec.resourceClaims": ["name"],
    "core.v1.Container.ports": ["containerPort", "protocol"],
    "core.v1.Container.env": ["name"],
    "core.v1.Container.volumeMounts": ["mountPath"],
    "core.v1.Container.volumeDevices": ["devicePath"],
    "core.v1.EphemeralContainer.ports": ["containerPort", "protocol"],
    "core.v1.EphemeralContainer.env": ["name"],
    "core.v1.EphemeralContainer.volumeMounts": ["mountPath"],
    "core.v1.EphemeralContainer.volumeDevices": ["devicePath"],
    "core.v1.ResourceRequirements.claims": ["name"],
    "core.v1.ContainerStatus.volumeMounts": ["mountPath"],
    "core.v1.ContainerStatus.allocatedResourcesStatus": ["name"],
    "core.v1.ResourceStatus.resources": ["resourceID"],
    "core.v1.PodStatus.conditions": ["type"],
    "core.v1.PodStatus.podIPs": ["ip"],
    "core.v1.PodStatus.resourceClaimStatuses": ["name"],
    "core.v1.PersistentVolumeClaimStatus.conditions": ["type"],
    "core.v1.ServiceSpec.ports": ["port", "protocol"],
    "core.v1.ServiceStatus.conditions": ["type"],
    "core.v1.ServiceAccount.secrets": ["name"],
    "core.v1.NodeStatus.conditions": ["type"],
    "core.v1.NodeStatus.addresses": ["type"],
    "core.v1.NamespaceStatus.conditions": ["type"],
    "apps.v1.DeploymentStatus.conditions": ["type"],
    "apps.v1.ReplicaSetStatus.conditions": ["type"],
    "apps.v1.StatefulSetStatus.conditions": ["type"],
    "apps.v1.DaemonSetStatus.conditions": ["type"],
    "meta.v1.ObjectMeta.ownerReferences": ["uid"],
    "core.v1.PodSpec.evictionResponders": ["name"],
    "core.v1.PodStatus.nodeAllocatableResourceClaimStatuses": ["resourceClaimName"],
    "core.v1.PodStatus.volumeHealth": ["name"],
    "core.v1.VolumeHealthStatus.healthConditions": ["status", "reason"],
    "core.v1.PodVolumeHealth.healthConditions": ["status", "reason"],
    "core.v1.NodeAllocatableResourceClaimStatus.mapping": ["name"],
    "core.v1.NodeAllocatableResourceClaimStatus.overhead": ["name"],
}
LIST_SET = {
    "core.v1.NodeSpec.podCIDRs", "discovery.v1.Endpoint.addresses", "meta.v1.ObjectMeta.finalizers",
    "core.v1.VolumeMount.bindMountOptions", "core.v1.ContainerRestartRuleOnExitCodes.values",
    "core.v1.NodePodPreemptionPolicy.disableResizePreemption", "core.v1.NodeAllocatableResourceClaimStatus.containers",
}  # fmt: skip
# x-kubernetes-map-type of map fields (+mapType)
MAP_TYPE = {
    "core.v1.PodSpec.nodeSelector": "atomic",
    "core.v1.ServiceSpec.selector": "atomic",
    "core.v1.PersistentVolumeClaimStatus.allocatedResourceStatuses": "granular",
}
# Structs replaced as a whole by server-side apply (+structType=atomic): x-kubernetes-map-type atomic.
STRUCT_ATOMIC = {
    "core.v1.FileKeySelector", "core.v1.ObjectFieldSelector",
    "core.v1.ResourceFieldSelector", "core.v1.ConfigMapKeySelector", "core.v1.SecretKeySelector",
    "core.v1.NodeSelector", "core.v1.NodeSelectorTerm", "core.v1.EvictionResponder", "core.v1.EndpointAddress",
    "core.v1.EndpointPort", "core.v1.ObjectReference", "core.v1.LocalObjectReference",
    "core.v1.TypedLocalObjectReference", "networking.v1.ServiceBackendPort", "discovery.v1.EndpointPort",
    "rbac.v1.Subject", "rbac.v1.RoleRef", "meta.v1.OwnerReference", "meta.v1.LabelSelector",
}  # fmt: skip

# Integer fields that are int64 in Go (the rest are int32).
INT64 = {
    "core.v1.SecretVolumeSource.defaultUser", "core.v1.ConfigMapVolumeSource.defaultUser",
    "core.v1.ServiceAccountTokenProjection.expirationSeconds", "core.v1.ProjectedVolumeSource.defaultUser",
    "core.v1.DownwardAPIVolumeSource.defaultUser", "core.v1.KeyToPath.user", "core.v1.DownwardAPIVolumeFile.user",
    "core.v1.SleepAction.seconds", "core.v1.Probe.terminationGracePeriodSeconds", "core.v1.LinuxContainerUser.uid",
    "core.v1.LinuxContainerUser.gid", "core.v1.PodCondition.observedGeneration", "core.v1.Toleration.tolerationSeconds",
    "core.v1.PodSpec.terminationGracePeriodSeconds", "core.v1.PodSpec.activeDeadlineSeconds",
    "core.v1.PodSecurityContext.runAsUser", "core.v1.PodSecurityContext.runAsGroup", "core.v1.PodSecurityContext.fsGroup",
    "core.v1.PodStatus.observedGeneration", "core.v1.NodeSwapStatus.capacity", "core.v1.ContainerImage.sizeBytes",
    "core.v1.SecurityContext.runAsUser", "core.v1.SecurityContext.runAsGroup",
    "apps.v1.StatefulSetStatus.observedGeneration", "apps.v1.DeploymentStatus.observedGeneration",
    "apps.v1.DaemonSetStatus.observedGeneration", "apps.v1.ReplicaSetStatus.observedGeneration",
    "authentication.v1.TokenRequestSpec.expirationSeconds", "meta.v1.ListMeta.remainingItemCount",
    "meta.v1.ObjectMeta.generation", "meta.v1.ObjectMeta.deletionGracePeriodSeconds",
    "meta.v1.DeleteOptions.gracePeriodSeconds", "meta.v1.Condition.observedGeneration",
    "core.v1.ClusterTrustBundleProjection.user", "core.v1.PodCertificateProjection.user",
}  # fmt: skip

# enum values of string fields (Go types marked +enum, their constants): explain prints them.
_SIGNALS = sorted(
    ["SIGABRT", "SIGALRM", "SIGBUS", "SIGCHLD", "SIGCLD", "SIGCONT", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGIO",
     "SIGIOT", "SIGKILL", "SIGPIPE", "SIGPOLL", "SIGPROF", "SIGPWR", "SIGQUIT", "SIGRTMAX", "SIGRTMIN", "SIGSEGV",
     "SIGSTKFLT", "SIGSTOP", "SIGSYS", "SIGTERM", "SIGTRAP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGUSR1",
     "SIGUSR2", "SIGVTALRM", "SIGWINCH", "SIGXCPU", "SIGXFSZ"]
    + [f"SIGRTMIN+{i}" for i in range(1, 16)] + [f"SIGRTMAX-{i}" for i in range(1, 15)]
)  # fmt: skip
ENUMS = {
    "apps.v1.DaemonSetUpdateStrategy.type": ["OnDelete", "RollingUpdate"],
    "apps.v1.DeploymentStrategy.type": ["Recreate", "RollingUpdate"],
    "apps.v1.StatefulSetSpec.podManagementPolicy": ["OrderedReady", "Parallel"],
    "apps.v1.StatefulSetUpdateStrategy.type": ["OnDelete", "Recreate", "RollingUpdate"],
    "core.v1.AppArmorProfile.type": ["Localhost", "RuntimeDefault", "Unconfined"],
    "core.v1.AzureDiskVolumeSource.cachingMode": ["None", "ReadOnly", "ReadWrite"],
    "core.v1.AzureDiskVolumeSource.kind": ["Dedicated", "Managed", "Shared"],
    "core.v1.Container.imagePullPolicy": ["Always", "IfNotPresent", "Never"],
    "core.v1.Container.terminationMessagePolicy": ["FallbackToLogsOnError", "File"],
    "core.v1.ContainerPort.protocol": ["SCTP", "TCP", "UDP"],
    "core.v1.EndpointPort.protocol": ["SCTP", "TCP", "UDP"],
    "core.v1.EphemeralContainer.imagePullPolicy": ["Always", "IfNotPresent", "Never"],
    "core.v1.EphemeralContainer.terminationMessagePolicy": ["FallbackToLogsOnError", "File"],
    "core.v1.GRPCAction.mode": ["Plaintext", "TLS"],
    "core.v1.HTTPGetAction.protocol": ["HTTP1", "HTTP2"],
    "core.v1.HTTPGetAction.scheme": ["HTTP", "HTTPS"],
    "core.v1.HostPathVolumeSource.type": [
        "",
        *["BlockDevice", "CharDevice", "Directory", "DirectoryOrCreate", "File", "FileOrCreate", "Socket"],
    ],
    "core.v1.ImageVolumeSource.pullPolicy": ["Always", "IfNotPresent", "Never"],
    "core.v1.ModifyVolumeStatus.status": ["InProgress", "Infeasible", "Pending"],
    "core.v1.NamespaceStatus.phase": ["Active", "Terminating"],
    "core.v1.NodeSelectorRequirement.operator": ["DoesNotExist", "Exists", "Gt", "In", "Lt", "NotIn"],
    "core.v1.NodeStatus.phase": ["Pending", "Running", "Terminated"],
    "core.v1.PersistentVolumeClaimSpec.accessModes": [
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOnce",
        "ReadWriteOncePod",
    ],
    "core.v1.PersistentVolumeClaimSpec.volumeMode": ["Block", "Filesystem"],
    "core.v1.PersistentVolumeClaimStatus.accessModes": [
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOnce",
        "ReadWriteOncePod",
    ],
    "core.v1.PersistentVolumeClaimStatus.phase": ["Bound", "Lost", "Pending"],
    "core.v1.PodSecurityContext.fsGroupChangePolicy": ["Always", "OnRootMismatch"],
    "core.v1.PodSecurityContext.supplementalGroupsPolicy": ["Merge", "Strict"],
    "core.v1.PodSpec.dnsPolicy": ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
    "core.v1.PodSpec.preemptionPolicy": ["Never", "PreemptLowerPriority"],
    "core.v1.PodSpec.restartPolicy": ["Always", "Never", "OnFailure"],
    "core.v1.PodStatus.phase": ["Failed", "Pending", "Running", "Succeeded", "Unknown"],
    "core.v1.PodStatus.qosClass": ["BestEffort", "Burstable", "Guaranteed"],
    "core.v1.PortStatus.protocol": ["SCTP", "TCP", "UDP"],
    "core.v1.SeccompProfile.type": ["Localhost", "RuntimeDefault", "Unconfined"],
    "core.v1.SecurityContext.procMount": ["Default", "Unmasked"],
    "core.v1.ServicePort.protocol": ["SCTP", "TCP", "UDP"],
    "core.v1.ServiceSpec.externalTrafficPolicy": ["Cluster", "Local"],
    "core.v1.ServiceSpec.internalTrafficPolicy": ["Cluster", "Local"],
    "core.v1.ServiceSpec.ipFamilies": ["", *["IPv4", "IPv6"]],
    "core.v1.ServiceSpec.ipFamilyPolicy": ["PreferDualStack", "RequireDualStack", "SingleStack"],
    "core.v1.ServiceSpec.sessionAffinity": ["ClientIP", "None"],
    "core.v1.ServiceSpec.type": ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
    "core.v1.Taint.effect": ["NoExecute", "NoSchedule", "PreferNoSchedule"],
    "core.v1.Toleration.effect": ["NoExecute", "NoSchedule", "PreferNoSchedule"],
    "core.v1.Toleration.operator": ["Equal", "Exists", "Gt", "Lt"],
    "core.v1.TopologySpreadConstraint.nodeAffinityPolicy": ["Honor", "Ignore"],
    "core.v1.TopologySpreadConstraint.nodeTaintsPolicy": ["Honor", "Ignore"],
    "core.v1.TopologySpreadConstraint.whenUnsatisfiable": ["DoNotSchedule", "ScheduleAnyway"],
    "core.v1.VolumeHealthCondition.status": ["DataLoss", "Degraded", "Inaccessible"],
    "core.v1.VolumeMount.mountPropagation": ["Bidirectional", "HostToContainer", "None"],
    "discovery.v1.EndpointPort.protocol": ["SCTP", "TCP", "UDP"],
    "networking.v1.IngressPortStatus.protocol": ["SCTP", "TCP", "UDP"],
    "networking.v1.NetworkPolicyPort.protocol": ["SCTP", "TCP", "UDP"],
    "networking.v1.NetworkPolicySpec.policyTypes": ["Egress", "Ingress"],
    "core.v1.ContainerStatus.stopSignal": _SIGNALS,
    "core.v1.Lifecycle.stopSignal": _SIGNALS,
    "discovery.v1.EndpointSlice.addressType": ["FQDN", "IPv4", "IPv6"],
    "networking.v1.HTTPIngressPath.pathType": ["Exact", "ImplementationSpecific", "Prefix"],
}

# resource.Quantity fields (the client types them as strings, ResourceLists as maps of strings).
QUANTITIES = {
    "core.v1.PersistentVolumeClaimStatus.capacity", "core.v1.PersistentVolumeClaimStatus.allocatedResources",
    "core.v1.EmptyDirVolumeSource.sizeLimit", "core.v1.ResourceFieldSelector.divisor",
    "core.v1.ResourceRequirements.limits", "core.v1.ResourceRequirements.requests",
    "core.v1.VolumeResourceRequirements.limits", "core.v1.VolumeResourceRequirements.requests",
    "core.v1.ContainerStatus.allocatedResources", "core.v1.PodSpec.overhead", "core.v1.PodStatus.allocatedResources",
    "core.v1.NodeStatus.capacity", "core.v1.NodeStatus.allocatable",
    "core.v1.NodeAllocatableMappedResources.quantity", "core.v1.NodeAllocatableOverheadResources.perPod",
    "core.v1.NodeAllocatableOverheadResources.perContainer",
}  # fmt: skip

# metav1.MicroTime fields (the client has datetime for them and for metav1.Time alike).
MICROTIMES = {
    "core.v1.Event.eventTime", "core.v1.EventSeries.lastObservedTime", "events.v1.Event.eventTime",
    "events.v1.EventSeries.lastObservedTime", "coordination.v1.LeaseSpec.acquireTime",
    "coordination.v1.LeaseSpec.renewTime",
}  # fmt: skip

# Free-form fields the client has as "object": what Kubernetes types them as.
OBJECTS = {"meta.v1.ManagedFieldsEntry.fieldsV1": FIELDSV1, "meta.v1.WatchEvent.object": RAW}

# Field descriptions the client drops for struct-valued fields (it keeps them for the others).
METADATA_DESCRIPTION = (
    "Standard object's metadata. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
LIST_METADATA_DESCRIPTION = (
    "Standard list metadata. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
)

SPEC_DESCRIPTION = (
    "Specification of the desired behavior of the {}. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#spec-and-status"
)
STATUS_DESCRIPTION = (
    "Most recently observed status of the {}. This data may not be up to date. Populated by the "
    "system. Read-only. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#spec-and-status"
)

# Definitions the client has no model for (their Go types marshal to JSON strings or free-form values).
SPECIAL = {
    TIME: {
        "type": "string",
        "format": "date-time",
        "description": "Time is a wrapper around time.Time which supports correct marshaling to YAML and JSON. "
        "Wrappers are provided for many of the factory methods that the time package offers.",
    },
    MICROTIME: {
        "type": "string",
        "format": "date-time",
        "description": "MicroTime is version of Time with microsecond level precision.",
    },
    FIELDSV1: {
        "type": "object",
        "description": "FieldsV1 stores a set of fields in a data structure like a Trie, in JSON format.",
    },
    RAW: {
        "type": "object",
        "description": "RawExtension is used to hold extensions in external versions: an embedded object "
        "of any kind, as JSON.",
    },
    INTORSTRING: {
        "type": "string",
        "format": "int-or-string",
        "description": "IntOrString is a type that can hold an int32 or a string. When used in JSON or "
        "YAML marshalling and unmarshalling, it produces or consumes the inner type.",
    },
    QUANTITY: {
        "type": "string",
        "description": "Quantity is a fixed-point representation of a number, written in JSON as a string "
        'such as "100m", "1.5Gi" or "2" (decimal SI, binary SI or decimal exponent '
        "suffixes).",
    },
    PATCH: {
        "type": "object",
        "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
    },
}

# ---------------------------------------------------------------------------


def short(model: str) -> str:
    for prefix in GROUP_PREFIX:
        if model.startswith(prefix):
            return model[len(prefix) :]
    return re.sub(r"^V1", "", model)


class Builder:
    def __init__(self) -> None:
        self.package: dict[str, str] = {}  # client model -> "core.v1", "meta.v1", ...
        self.defs: dict[str, dict] = {}
        self.used_keys: set[str] = set()

    def name(self, model: str) -> str:
        if model == "VersionInfo":
            return VERSION_INFO
        pkg = self.package[model]
        base = META if pkg == "meta.v1" else API + pkg + "."
        return base + short(model)

    def assign(self, model: str, pkg: str) -> None:
        """Give model and everything it reaches a package (first reach wins, with the tables' exceptions)."""
        if model in self.package:
            return
        for prefix, p in GROUP_PREFIX.items():
            if model.startswith(prefix):
                pkg = p
        if model in META_TYPES:
            pkg = "meta.v1"
        elif model in CORE_TYPES:
            pkg = "core.v1"
        self.package[model] = pkg
        for t in getattr(client, model).openapi_types.values():
            for inner in re.findall(r"[A-Z]\w+", t):
                if inner not in ("List", "Dict") and hasattr(client, inner):
                    self.assign(inner, pkg)

    def prop(self, model: str, key: str, typ: str, annotation, description: str | None) -> dict:
        def ref(name: str) -> dict:
            return {"$ref": "#/definitions/" + name}

        def of(t: str) -> dict:
            inner = re.fullmatch(r"List\[(.+)\]", t)
            if inner:
                return {"type": "array", "items": of(inner.group(1))}
            inner = re.fullmatch(r"Dict\[str, (.+)\]", t)
            if inner:
                return {"type": "object", "additionalProperties": of(inner.group(1))}
            if key in QUANTITIES and t == "str":
                return ref(QUANTITY)
            if t == "str":
                return {"type": "string"}
            if t == "bytes" or t == "bytearray":
                return {"type": "string", "format": "byte"}
            if t == "int":
                return {"type": "integer", "format": "int64" if key in INT64 else "int32"}
            if t == "bool":
                return {"type": "boolean"}
            if t == "float":
                return {"type": "number", "format": "double"}
            if t == "datetime":
                return ref(MICROTIME if key in MICROTIMES else TIME)
            if t == "object":
                if key in OBJECTS:
                    return ref(OBJECTS[key])
                if "int" in str(annotation) and "str" in str(annotation):
                    return ref(INTORSTRING)
                raise SystemExit(f"{key}: free-form field with no entry in OBJECTS")
            if hasattr(client, t):
                return ref(self.name(t))
            raise SystemExit(f"{key}: unknown client type {t!r}")

        schema = of(typ)
        if key in ENUMS:  # on the string, or on the items of a list of strings
            target = schema["items"] if schema.get("type") == "array" else schema
            if target.get("type") != "string":
                raise SystemExit(f"{key}: enum values for a field that is not a string")
            target["enum"] = ENUMS[key]
        for table in (QUANTITIES, INT64, MICROTIMES, OBJECTS, PATCH_META, LIST_MAP, LIST_SET, MAP_TYPE, ENUMS):
            if key in table:
                self.used_keys.add(key)
        if description:
            schema = {"description": description, **schema}
        if key in PATCH_META:
            strategy, merge_key = PATCH_META[key]
            if merge_key:
                schema["x-kubernetes-patch-merge-key"] = merge_key
            schema["x-kubernetes-patch-strategy"] = strategy
        if key in LIST_MAP:
            schema["x-kubernetes-list-map-keys"] = LIST_MAP[key]
            schema["x-kubernetes-list-type"] = "map"
        elif key in LIST_SET:
            schema["x-kubernetes-list-type"] = "set"
        elif schema.get("type") == "array":
            schema["x-kubernetes-list-type"] = "atomic"
        if key in MAP_TYPE:
            schema["x-kubernetes-map-type"] = MAP_TYPE[key]
        return schema

    def define(self, model: str) -> None:
        name = self.name(model)
        if name in self.defs:
            return
        cls = getattr(client, model)
        pkg_type = f"{self.package[model]}.{short(model)}"
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        doc = " ".join(line.strip() for line in doc.splitlines())
        definition: dict = {"description": doc, "type": "object", "properties": {}}
        self.defs[name] = definition
        required = []
        for attr, typ in cls.openapi_types.items():
            json_name = cls.attribute_map[attr]
            field = model_field(cls, attr, json_name)
            description = field.description
            if not description and json_name == "metadata":
                description = LIST_METADATA_DESCRIPTION if model.endswith("List") else METADATA_DESCRIPTION
            if not description and json_name in ("spec", "status") and "kind" in cls.attribute_map.values():
                description = (SPEC_DESCRIPTION if json_name == "spec" else STATUS_DESCRIPTION).format(short(model))
            definition["properties"][json_name] = self.prop(
                model, f"{pkg_type}.{json_name}", typ, field.annotation, description
            )
            if field.is_required():
                required.append(json_name)
            for inner in re.findall(r"[A-Z]\w+", typ):
                if inner not in ("List", "Dict") and hasattr(client, inner):
                    self.define(inner)
        if required:
            definition["required"] = required
        definition["properties"] = dict(sorted(definition["properties"].items()))
        if pkg_type in STRUCT_ATOMIC:
            definition["x-kubernetes-map-type"] = "atomic"
            self.used_keys.add(pkg_type)


def model_field(cls, attr: str, json_name: str):
    """The pydantic field of an attribute (the client renames Python keywords: _continue -> var_continue)."""
    if attr in cls.model_fields:
        return cls.model_fields[attr]
    for field in cls.model_fields.values():
        if field.serialization_alias == json_name:
            return field
    raise SystemExit(f"{cls.__name__}.{attr}: no such field in the client's model")


def gvk(kind: Kind, kind_name: str | None = None) -> dict:
    return {"group": kind.group, "kind": kind_name or kind.kind, "version": kind.version}


# OpenAPI 3 says what these hold with oneOf (Swagger 2.0 cannot), as kube-apiserver's v3 does.
V3_ONE_OF = {
    INTORSTRING: {"description": SPECIAL[INTORSTRING]["description"], "format": "int-or-string",
                  "oneOf": [{"type": "integer"}, {"type": "string"}]},
    QUANTITY: {"description": SPECIAL[QUANTITY]["description"], "oneOf": [{"type": "string"}, {"type": "number"}]},
}  # fmt: skip

# ---------------------------------------------------------------------------
# Paths and operations, as kube-apiserver publishes them.

PARAM_TEXT = {
    "pretty": "If 'true', then the output is pretty printed.",
    "dryRun": "When present, indicates that modifications should not be persisted. Valid values are: All (every "
    "dry run stage is processed).",
    "fieldManager": "fieldManager is a name associated with the actor or entity that is making these changes.",
    "fieldValidation": "fieldValidation instructs the server on how to handle objects in the request "
    "(POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore (drop them "
    "silently), Warn (drop them and send a warning for each), Strict (fail the request with a "
    "BadRequest error naming them).",
    "force": 'Force is going to "force" Apply requests: the user re-acquires conflicting fields owned by other '
    "people. Must be unset for non-apply patch requests.",
    "labelSelector": "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
    "fieldSelector": "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
    "limit": "limit is a maximum number of responses to return for a list call. If more items exist, the "
    "server sets the `continue` field on the list metadata.",
    "continue": "The continue option should be set when retrieving more results from the server.",
    "resourceVersion": "resourceVersion sets a constraint on what resource versions a request may be served from.",
    "resourceVersionMatch": "resourceVersionMatch determines how resourceVersion is applied to list calls.",
    "timeoutSeconds": "Timeout for the list/watch call.",
    "watch": "Watch for changes to the described resources and return them as a stream of add, update, and "
    "remove notifications.",
    "allowWatchBookmarks": 'allowWatchBookmarks requests watch events with type "BOOKMARK".',
    "sendInitialEvents": "`sendInitialEvents=true` may be set together with `watch=true`.",
    "gracePeriodSeconds": "The duration in seconds before the object should be deleted.",
    "propagationPolicy": "Whether and how garbage collection will be performed: Orphan, Background or Foreground.",
    "orphanDependents": "Deprecated: please use the PropagationPolicy.",
    "name": "name of the {kind}",
    "namespace": "object name and auth scope, such as for teams and projects",
    "container": "The container for which to stream logs (or to exec in).",
    "follow": "Follow the log stream of the pod.",
    "command": "Command is the remote command to execute.",
    "ports": "List of ports to forward.",
}
PARAM_TYPE = {"dryRun": "string", "force": "boolean", "limit": "integer", "timeoutSeconds": "integer",
              "watch": "boolean", "allowWatchBookmarks": "boolean", "sendInitialEvents": "boolean",
              "gracePeriodSeconds": "integer", "orphanDependents": "boolean", "follow": "boolean",
              "ports": "integer"}  # fmt: skip

LIST_Q = ["allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit", "resourceVersion",
          "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds", "watch"]  # fmt: skip
WRITE_Q = ["dryRun", "fieldManager", "fieldValidation"]
DELETE_Q = ["dryRun", "gracePeriodSeconds", "orphanDependents", "propagationPolicy"]


def qparam(name: str, kind: str = "") -> dict:
    param = {"description": PARAM_TEXT[name].replace("{kind}", kind), "in": "query", "name": name,
             "type": PARAM_TYPE.get(name, "string"), "uniqueItems": True}  # fmt: skip
    if name in ("name", "namespace"):
        param.update({"in": "path", "required": True})
    return param


def op_id(verb: str, kind: Kind, scope: str, suffix: str = "") -> str:
    group = "".join(p.capitalize() for p in (kind.group.split(".")[0] if kind.group else "core").split("-"))
    return f"{verb}{group}{kind.version.capitalize()}{scope}{kind.kind}{suffix}"


def operations(kind: Kind, names) -> dict[str, dict]:
    """Every path of a kind (list, item, watch, subresources) with its operations (Swagger 2.0)."""
    base = "/" + kind.gv_path
    ns = "/namespaces/{namespace}" if kind.namespaced else ""
    scope = "Namespaced" if kind.namespaced else ""
    kind_ref = {"$ref": "#/definitions/" + names[kind.model]}
    list_ref = {"$ref": "#/definitions/" + names.get(kind.model + "List", "")}
    status_ref = {"$ref": "#/definitions/" + META + "Status"}
    watch_ref = {"$ref": "#/definitions/" + META + "WatchEvent"}
    tags = [(kind.group.split(".")[0] if kind.group else "core") + "_" + kind.version]
    paths: dict[str, dict] = {}

    def op(verb_id, action, params, responses, gv_kind, consumes=None, produces=None, body=None, description=""):
        operation = {
            "consumes": consumes or ["*/*"],
            "description": description,
            "operationId": verb_id,
            "parameters": ([{"in": "body", "name": "body", "required": True, "schema": body}] if body else [])
            + [qparam(p, kind.kind) for p in params],
            "produces": produces or ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"],
            "responses": {code: {"description": text, "schema": schema} for code, text, schema in responses}
            | {"401": {"description": "Unauthorized"}},
            "schemes": ["https"],
            "tags": tags,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gv_kind,
        }
        return operation

    g = gvk(kind)
    ns_param = [qparam("namespace")] if kind.namespaced else []
    item_params = [{"description": f"name of the {kind.kind}", "in": "path", "name": "name", "required": True,
                    "type": "string", "uniqueItems": True}] + ns_param  # fmt: skip
    pretty = {"description": PARAM_TEXT["pretty"], "in": "query", "name": "pretty", "type": "string",
              "uniqueItems": True}  # fmt: skip
    collection: dict = {}
    item: dict = {}
    if "l" in kind.verbs:
        collection["get"] = op(
            op_id("list", kind, scope),
            "list",
            LIST_Q,
            [("200", "OK", list_ref)],
            g,
            produces=[
                "application/json",
                "application/yaml",
                "application/vnd.kubernetes.protobuf",
                "application/json;stream=watch",
                "application/vnd.kubernetes.protobuf;stream=watch",
            ],
            description=f"list or watch objects of kind {kind.kind}",
        )
        collection["delete"] = op(
            op_id("deleteCollection", kind, scope),
            "deletecollection",
            LIST_Q + DELETE_Q,
            [("200", "OK", status_ref)],
            g,
            body={"$ref": "#/definitions/" + META + "DeleteOptions"},
            description=f"delete collection of {kind.kind}",
        )
    if "c" in kind.verbs:
        created = [("200", "OK", kind_ref), ("201", "Created", kind_ref), ("202", "Accepted", kind_ref)]
        collection["post"] = op(
            op_id("create", kind, scope),
            "post",
            WRITE_Q,
            created,
            g,
            body=kind_ref,
            description=f"create a {kind.kind}",
        )
    if collection:
        collection["parameters"] = ns_param + [pretty]
        paths[f"{base}{ns}/{kind.plural}"] = collection
    if "r" in kind.verbs:
        item["get"] = op(
            op_id("read", kind, scope),
            "get",
            [],
            [("200", "OK", kind_ref)],
            g,
            description=f"read the specified {kind.kind}",
        )
    if "u" in kind.verbs:
        item["put"] = op(
            op_id("replace", kind, scope),
            "put",
            WRITE_Q,
            [("200", "OK", kind_ref), ("201", "Created", kind_ref)],
            g,
            body=kind_ref,
            description=f"replace the specified {kind.kind}",
        )
    if "p" in kind.verbs:
        item["patch"] = op(
            op_id("patch", kind, scope),
            "patch",
            WRITE_Q + ["force"],
            [("200", "OK", kind_ref), ("201", "Created", kind_ref)],
            g,
            consumes=[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ],
            body={"$ref": "#/definitions/" + PATCH},
            description=f"partially update the specified {kind.kind}",
        )
    if "d" in kind.verbs:
        item["delete"] = op(
            op_id("delete", kind, scope),
            "delete",
            DELETE_Q,
            [("200", "OK", status_ref), ("202", "Accepted", status_ref)],
            g,
            body={"$ref": "#/definitions/" + META + "DeleteOptions"},
            description=f"delete a {kind.kind}",
        )
    if item:
        item["parameters"] = item_params + [pretty]
        paths[f"{base}{ns}/{kind.plural}/{{name}}"] = item
    if "l" in kind.verbs:
        if kind.namespaced:
            paths[f"{base}/{kind.plural}"] = {
                "get": op(
                    op_id("list", kind, "", "ForAllNamespaces"),
                    "list",
                    LIST_Q,
                    [("200", "OK", list_ref)],
                    g,
                    description=f"list or watch objects of kind {kind.kind}",
                ),
            }
        paths[f"{base}/watch{ns}/{kind.plural}"] = {
            "get": op(
                op_id("watch", kind, scope, "List"),
                "watchlist",
                LIST_Q,
                [("200", "OK", watch_ref)],
                g,
                description=f"watch individual changes to a list of {kind.kind}",
            ),
            "parameters": ns_param + [pretty],
        }
        paths[f"{base}/watch{ns}/{kind.plural}/{{name}}"] = {
            "get": op(
                op_id("watch", kind, scope),
                "watch",
                LIST_Q,
                [("200", "OK", watch_ref)],
                g,
                description=f"watch changes to an object of kind {kind.kind}",
            ),
            "parameters": item_params + [pretty],
        }
    for sub, sub_model, verbs in kind.sub:
        path = f"{base}{ns}/{kind.plural}/{{name}}/{sub}"
        target = kind if sub_model is None else None
        if sub_model in ("str",):
            entry = {}
            suffix = sub.capitalize() if sub != "portforward" else "Portforward"
            if sub == "log":
                entry["get"] = op(
                    op_id("read", kind, scope, "Log"),
                    "get",
                    ["container", "follow"],
                    [("200", "OK", {"type": "string"})],
                    g,
                    produces=["text/plain", "application/json"],
                    description=f"read log of the specified {kind.kind}",
                )
            else:
                for method in ("get", "post"):
                    entry[method] = op(
                        op_id("connect" + method.capitalize(), kind, scope, suffix),
                        "connect",
                        ["command", "container"] if sub == "exec" else ["ports"],
                        [("200", "OK", {"type": "string"})],
                        {"group": kind.group, "kind": "Pod" + sub.capitalize() + "Options", "version": kind.version},
                        produces=["*/*"],
                        description=f"connect {method.upper()} requests to {sub} of {kind.kind}",
                    )
            entry["parameters"] = item_params
            paths[path] = entry
            continue
        sub_kind = target or next(k for k in KINDS + EXTRA_KINDS if k.model == sub_model)
        sub_ref = {"$ref": "#/definitions/" + names[sub_kind.model]}
        sg = gvk(sub_kind)
        entry = {}
        suffix = sub.capitalize()
        if "r" in verbs:
            entry["get"] = op(
                op_id("read", kind, scope, suffix),
                "get",
                [],
                [("200", "OK", sub_ref)],
                sg,
                description=f"read {sub} of the specified {kind.kind}",
            )
        if "u" in verbs:
            entry["put"] = op(
                op_id("replace", kind, scope, suffix),
                "put",
                WRITE_Q,
                [("200", "OK", sub_ref), ("201", "Created", sub_ref)],
                sg,
                body=sub_ref,
                description=f"replace {sub} of the specified {kind.kind}",
            )
        if "p" in verbs:
            entry["patch"] = op(
                op_id("patch", kind, scope, suffix),
                "patch",
                WRITE_Q + ["force"],
                [("200", "OK", sub_ref), ("201", "Created", sub_ref)],
                sg,
                consumes=[
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/strategic-merge-patch+json",
                    "application/apply-patch+yaml",
                ],
                body={"$ref": "#/definitions/" + PATCH},
                description=f"partially update {sub} of the specified {kind.kind}",
            )
        if "c" in verbs:
            created = [("200", "OK", sub_ref), ("201", "Created", sub_ref), ("202", "Accepted", sub_ref)]
            entry["post"] = op(
                op_id("create", kind, scope, suffix),
                "post",
                WRITE_Q,
                created,
                sg,
                body=sub_ref,
                description=f"create {sub} of a {kind.kind}",
            )
        entry["parameters"] = item_params + [pretty]
        paths[path] = entry
    return paths


def discovery_path(path: str, operation_id: str, description: str, tag: str, meta_kind: str) -> dict:
    """One discovery document's path (GET only), answered with a meta/v1 type or version.Info."""
    target = META + meta_kind if meta_kind else VERSION_INFO
    content = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]
    return {
        path: {
            "get": {
                "consumes": content if meta_kind else ["application/json"],
                "description": description,
                "operationId": operation_id,
                "produces": content if meta_kind else ["application/json"],
                "responses": {
                    "200": {"description": "OK", "schema": {"$ref": "#/definitions/" + target}},
                    "401": {"description": "Unauthorized"},
                },
                "schemes": ["https"],
                "tags": [tag],
            }
        }
    }


def resources_path(gv_path: str, group: str, version: str) -> dict:
    """GET /api/v1/ and /apis/G/V/: the group-version's APIResourceList."""
    tag = (group.split(".")[0] if group else "core") + "_" + version
    ident = "".join(p.capitalize() for p in (group.split(".")[0] if group else "core").split("-"))
    return {
        "/" + gv_path + "/": {
            "get": {
                "consumes": ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"],
                "description": "get available resources",
                "operationId": f"get{ident}{version.capitalize()}APIResources",
                "produces": ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"],
                "responses": {
                    "200": {"description": "OK", "schema": {"$ref": "#/definitions/" + META + "APIResourceList"}},
                    "401": {"description": "Unauthorized"},
                },
                "schemes": ["https"],
                "tags": [tag],
            }
        }
    }


# ---------------------------------------------------------------------------
# Documents


def build() -> tuple[dict, dict[str, dict]]:
    b = Builder()
    for model in META_KINDS + DISCOVERY_MODELS:
        b.assign(model, "meta.v1")
    for kind in KINDS + EXTRA_KINDS:
        b.assign(kind.model, kind.package)
        if kind.listed:
            b.assign(kind.model + "List", kind.package)
    names = {}
    for kind in KINDS + EXTRA_KINDS:
        b.define(kind.model)
        names[kind.model] = b.name(kind.model)
        if kind.listed:
            b.define(kind.model + "List")
            names[kind.model + "List"] = b.name(kind.model + "List")
    for model in META_KINDS + DISCOVERY_MODELS:
        b.define(model)
    unused = (set(PATCH_META) | set(LIST_MAP) | LIST_SET | set(MAP_TYPE) | INT64 | QUANTITIES | MICROTIMES
              | set(OBJECTS) | STRUCT_ATOMIC | set(ENUMS)) - b.used_keys  # fmt: skip
    if unused:
        raise SystemExit(f"table entries that match no field of the client's models: {sorted(unused)}")
    defs = b.defs | SPECIAL
    # x-kubernetes-group-version-kind on the top-level kinds and their lists.
    for kind in KINDS + EXTRA_KINDS:
        defs[names[kind.model]].setdefault("x-kubernetes-group-version-kind", [])
        entry = gvk(kind)
        if entry not in defs[names[kind.model]]["x-kubernetes-group-version-kind"]:
            defs[names[kind.model]]["x-kubernetes-group-version-kind"].append(entry)
        if kind.listed:
            defs[names[kind.model + "List"]]["x-kubernetes-group-version-kind"] = [gvk(kind, kind.kind + "List")]
    group_versions = sorted({(k.group, k.version) for k in KINDS})
    for model in META_KINDS:
        defs[b.name(model)]["x-kubernetes-group-version-kind"] = [
            {"group": g, "kind": short(model), "version": v} for g, v in group_versions
        ]
    for name in defs:
        if "x-kubernetes-group-version-kind" in defs[name]:
            defs[name]["x-kubernetes-group-version-kind"].sort(key=lambda e: (e["group"], e["version"], e["kind"]))

    paths: dict[str, dict] = {}
    by_gv: dict[str, dict] = {}
    for group, version in group_versions:
        gv_path = f"api/{version}" if not group else f"apis/{group}/{version}"
        gv_paths = resources_path(gv_path, group, version)
        for kind in KINDS:
            if (kind.group, kind.version) == (group, version):
                gv_paths |= operations(kind, names)
        by_gv[gv_path] = gv_paths
        paths |= gv_paths
    # The discovery documents, each in its own v3 document as kube-apiserver publishes them.
    by_gv["api"] = discovery_path("/api/", "getCoreAPIVersions", "get available API versions", "core", "APIVersions")
    by_gv["apis"] = discovery_path("/apis/", "getAPIVersions", "get available API versions", "apis", "APIGroupList")
    for group in sorted({g for g, _ in group_versions if g}):
        ident = "".join(p.capitalize() for p in group.split(".")[0].split("-"))
        by_gv[f"apis/{group}"] = discovery_path(
            f"/apis/{group}/", f"get{ident}APIGroup", "get information of a group", group.split(".")[0], "APIGroup"
        )
    by_gv["version"] = discovery_path("/version/", "getCodeVersion", "get the version information for this server",
                                      "version", "")  # fmt: skip
    for gv_path in ("api", "apis", "version", *(f"apis/{g}" for g, _ in group_versions if g)):
        paths |= by_gv[gv_path]
    info = {"title": "Kubernetes", "version": "v1.33.0"}
    v2 = {"definitions": dict(sorted(defs.items())), "info": info, "paths": dict(sorted(paths.items())),
          "security": [{"BearerToken": []}],
          "securityDefinitions": {"BearerToken": {"description": "Bearer Token authentication", "in": "header",
                                                  "name": "authorization", "type": "apiKey"}},
          "swagger": "2.0"}  # fmt: skip
    v3 = {gv_path: to_v3(gv_paths, v2["definitions"], info) for gv_path, gv_paths in by_gv.items()}
    return v2, v3


def refs_in(value, found: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "$ref" and isinstance(v, str):
                found.add(v.rsplit("/", 1)[1])
            else:
                refs_in(v, found)
    elif isinstance(value, list):
        for v in value:
            refs_in(v, found)


def closure(start: set[str], defs: dict) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found: set[str] = set()
        refs_in(defs[name], found)
        todo.extend(found - seen)
    return seen


def schema_v3(schema):
    """A Swagger 2.0 schema as OpenAPI 3.0: refs into components, a described ref wrapped in allOf."""
    if isinstance(schema, list):
        return [schema_v3(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k == "$ref":
            out[k] = v.replace("#/definitions/", "#/components/schemas/")
        else:
            out[k] = schema_v3(v)
    if "$ref" in out and len(out) > 1:
        ref = out.pop("$ref")
        out = {"allOf": [{"$ref": ref}], **out}
    return out


def to_v3(paths: dict, defs: dict, info: dict) -> dict:
    """One group-version's paths and the schemas they reach, as kube-apiserver serves /openapi/v3/<gv>."""
    out_paths = {}
    for path, item in paths.items():
        new_item = {}
        for method, op in item.items():
            if method == "parameters":
                new_item["parameters"] = [param_v3(p) for p in op]
                continue
            new_op = {k: v for k, v in op.items() if k not in ("consumes", "produces", "parameters", "responses",
                                                               "schemes")}  # fmt: skip
            params = [p for p in op.get("parameters", []) if p["in"] != "body"]
            if params:
                new_op["parameters"] = [param_v3(p) for p in params]
            body = next((p for p in op.get("parameters", []) if p["in"] == "body"), None)
            if body:
                new_op["requestBody"] = {
                    "content": {
                        ct: {"schema": schema_v3(body["schema"])}
                        for ct in (op["consumes"] if op["consumes"] != ["*/*"] else ["*/*"])
                    },
                    "required": True,
                }
            responses = {}
            for code, resp in op["responses"].items():
                r = {"description": resp["description"]}
                if "schema" in resp:
                    r["content"] = {ct: {"schema": schema_v3(resp["schema"])} for ct in op["produces"]}
                responses[code] = r
            new_op["responses"] = responses
            new_item[method] = new_op
        out_paths[path] = new_item
    used: set[str] = set()
    refs_in(paths, used)
    names = closure(used, defs)
    schemas = {name: schema_v3(V3_ONE_OF.get(name, defs[name])) for name in sorted(names)}
    return {"components": {"schemas": schemas,
                           "securitySchemes": {"BearerToken": {"description": "Bearer Token authentication",
                                                               "in": "header", "name": "authorization",
                                                               "type": "apiKey"}}},
            "info": info, "openapi": "3.0.0", "paths": out_paths,
            "security": [{"BearerToken": []}]}  # fmt: skip


def param_v3(param: dict) -> dict:
    out = {k: v for k, v in param.items() if k in ("description", "in", "name", "required")}
    out["schema"] = {"type": param.get("type", "string"), "uniqueItems": True}
    return out


def dump(obj) -> bytes:
    return json.dumps(obj, sort_keys=False, separators=(",", ":"), ensure_ascii=False).encode()


def gz(data: bytes) -> bytes:
    # mtime=0 and no file name: the same input gives the same bytes.
    return gzip.compress(data, compresslevel=9, mtime=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "emu/apiserver/data")
    args = parser.parse_args()
    v2, v3 = build()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openapi-v2.json.gz").write_bytes(gz(dump(v2)))
    v3_dir = args.out / "openapi-v3"
    v3_dir.mkdir(exist_ok=True)
    for old in v3_dir.glob("*.json.gz"):
        old.unlink()
    for gv_path, doc in v3.items():
        (v3_dir / (gv_path.replace("/", "__") + ".json.gz")).write_bytes(gz(dump(doc)))
    (args.out / "SOURCE").write_text(
        f"Generated by scripts/kubernetes_openapi.py from the kubernetes {kubernetes.__version__} Python client.\n"
    )


if __name__ == "__main__":
    main()
