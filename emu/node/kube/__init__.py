"""The node's Kubernetes API client side: a REST client (client.py), informers
(informer.py, client-go's reflector and cache) and kube-proxy's view of
Services and EndpointSlices (proxyfeed.py). Standard library only: it runs in
every node with the node image's python3."""
