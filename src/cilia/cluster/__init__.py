"""The cluster: nodes registered in the kvstore, every endpoint's IPs -> identity and node
(the cluster ipcache), pod CIDRs claimed from a cluster pool, and the controller that turns the
cluster view into what this node's datapath needs (routes, tunnel endpoints, ipcache entries)."""
