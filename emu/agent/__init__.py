"""The node agent: emu's kubelet-and-kube-proxy inside every node.

It reads the cluster snapshot the controller writes (/etc/emu/state.json),
probes the readiness of its own pods from the node's root namespace, shares
readiness with the other nodes' agents over HTTP (port 10250, the kubelet's),
and programs the node's service rules from the ready endpoints. Standard
library only: it runs with the node image's python3.
"""
