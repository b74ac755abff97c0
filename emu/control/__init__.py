"""The controller side: cluster lifecycle, runtime providers, hosts, PKI and kubeconfig."""
