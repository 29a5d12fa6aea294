"""The cluster view on its way into the datapath, shown to the policy engine first.

The remote endpoints' IPs decide which identities a NetworkPolicy ipBlock or a toServices rule
selects (cilia.policy.addresses). The engine learns them before the new ipcache entries are
written, and the write waits (bounded) for the endpoints that must learn the new selection: a
remote pod whose identity an ipBlock selected, arriving outside the block, must not be reachable
through that identity before the selection is withdrawn."""

from __future__ import annotations

import logging

from cilia.cluster.controller import ClusterDatapath
from cilia.cluster.model import ClusterView
from cilia.policy.engine import PolicyEngine

log = logging.getLogger(__name__)
POLICY_WAIT_SECONDS = 5.0


class PolicyAwareClusterSync:
    def __init__(self, datapath: ClusterDatapath, policy: PolicyEngine) -> None:
        self._datapath = datapath
        self._policy = policy

    def sync_cluster(self, view: ClusterView) -> object:
        endpoints = {prefix.network_address: endpoint.identity for prefix, endpoint in view.remote_endpoints.items()
                     if prefix.prefixlen == prefix.max_prefixlen}
        pod_cidrs = [cidr for node in view.nodes if node.name != view.local_node for cidr in node.pod_cidrs]
        revision = self._policy.cluster_endpoints_changed(endpoints, pod_cidrs)
        if revision is not None:
            result = self._policy.wait(revision, POLICY_WAIT_SECONDS)
            if not result.reached:
                log.warning("cluster view: %d endpoints did not learn the new address selection within %.0f s",
                            len(result.pending), POLICY_WAIT_SECONDS)
        return self._datapath.sync_cluster(view)



