"""emu's Kubernetes API server (docs/apiserver.md).

Runs with the node image's python3 on the first control-plane node: standard
library plus the Debian packages the node image installs. Imports nothing
from the controller side.
"""
