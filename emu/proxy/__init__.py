"""kube-proxy's modes, one module each, all fed by emu.services' endpoints."""
