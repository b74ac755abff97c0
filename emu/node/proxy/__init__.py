"""kube-proxy's modes, one module each, all fed by emu.node.services' endpoints.

`proxier(mode)` gives the mode's Proxier (emu.node.proxy.base): iptables,
nftables or ipvs, as networking.proxyMode names them.
"""

from __future__ import annotations

import importlib

from emu.node.records import DEFAULT_PROXY_MODE, PROXY_MODES

MODES = PROXY_MODES


def proxier(mode: str | None):
    """The Proxier of a proxyMode ("" or None: iptables, kube-proxy's default)."""
    mode = mode or DEFAULT_PROXY_MODE
    if mode not in MODES:
        raise ValueError(f"unknown proxyMode {mode!r}; use one of {', '.join(MODES)}")
    return importlib.import_module(f"emu.node.proxy.{mode}").PROXIER


def mode_of(state) -> str:
    """A cluster state's proxyMode."""
    return state.net.proxy_mode
