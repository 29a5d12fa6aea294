"""The cluster's key-value store: the interface the cluster state is written against
(`api.KvClient`), the etcd implementation, an in-memory one for unit tests, leases kept alive per
node, and prefix reflectors that list, watch, resume and resync."""
