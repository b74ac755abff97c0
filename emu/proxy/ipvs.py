"""kube-proxy's IPVS mode: only the kernel check for now.

IPVS needs the kernel's ip_vs module, which not every kernel has (this
project's build machine lacks it). `require_ip_vs` says so before anything is
created. Standard library only: it runs in the agent.
"""

from __future__ import annotations

import os

from emu.proxy.base import KernelMissing

IP_VS_MARKERS = ("/proc/net/ip_vs", "/sys/module/ip_vs")


def require_ip_vs() -> None:
    """Raise KernelMissing unless this machine's kernel has IPVS loaded."""
    if any(os.path.exists(path) for path in IP_VS_MARKERS):
        return
    release = os.uname().release
    loadable = os.path.isdir(f"/lib/modules/{release}") and any(
        name.startswith("ip_vs.ko") for _, _, names in os.walk(f"/lib/modules/{release}/kernel/net/netfilter")
        for name in names
    )
    fix = (
        "load it with `modprobe ip_vs` (as root on the Docker host) and try again"
        if loadable
        else "this kernel was built without it; use proxyMode iptables or nftables, or a host whose kernel has IPVS"
    )
    raise KernelMissing(
        f"proxyMode ipvs needs the kernel module ip_vs, which kernel {release} does not have loaded "
        f"(no {IP_VS_MARKERS[0]}); {fix}"
    )
