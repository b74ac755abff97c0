"""The node's Kubernetes API client side: a REST client (client.py), informers
(informer.py, client-go's reflector and cache) and kube-proxy's view of
Services and EndpointSlices (proxyfeed.py). Standard library only: it runs in
every node with the node image's python3."""

import ctypes
import gc


def release_memory() -> None:
    """Collect, and hand freed heap back to the system (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
