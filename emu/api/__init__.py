"""The declared model: the topology schema (topology/) and Kubernetes manifests
(manifests/), with their validation and the names they derive."""
