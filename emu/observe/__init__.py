"""Seeing the cluster: `emu graph` (the picture of the live cluster) and
`emu trace` (the path one real packet took, as the kernel reported it)."""
