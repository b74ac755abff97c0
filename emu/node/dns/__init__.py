"""emu's cluster DNS: a CoreDNS-compatible server (dnslib + the standard library).

It runs as the pod kube-system/coredns behind the service kube-system/kube-dns,
reads the snapshot the node agent writes (emu.node.dns.snapshot) and never imports
the controller.
"""
