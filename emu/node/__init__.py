"""Everything that runs inside a node, copied into every node at `up`.

Standard library (and dnslib, for the DNS server) only: the node image's
python3 runs it. Nothing here imports the controller side (emu.control,
emu.api, emu.cli, emu.observe, emu.testing); tests/unit/test_layout.py
checks it. agent/ is the kubelet-and-kube-proxy, proxy/ kube-proxy's modes,
dns/ the cluster DNS server, plan/ the pod network plans (cni).
"""
