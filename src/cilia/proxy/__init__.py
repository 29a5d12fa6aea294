"""cilia-proxy: the node-local transparent L7 (HTTP/1.1) proxy, its own process (docs/policy.md#l7-http)."""
