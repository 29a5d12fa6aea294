"""The cluster view on its way into the datapath, shown to the policy engine first.

The remote endpoints' IPs decide which identities a NetworkPolicy ipBlock or a toServices rule
selects (cilia.policy.addresses). The engine learns them before the new ipcache entries are
written, and the write waits (bounded) for the endpoints that must learn the new selection: a
remote pod whose identity an ipBlock selected, arriving outside the block, must not be reachable
through that identity before the selection is withdrawn.

The engine's IP -> identity index is kept in step incrementally: each view is compared with the
last one handed over (`RemoteEndpoints.identity_diff`, on int keys) and only the endpoints that
came, went or changed identity are sent (`PolicyEngine.cluster_endpoints_update`), so a sync at
10,000 remote endpoints builds no map of them all. `test_cluster_policy_index` checks the index
against a full rebuild over random sequences of ipcache and node events."""

from __future__ import annotations

import logging

from cilia.cluster.controller import ClusterDatapath
from cilia.cluster.model import ClusterView, RemoteEndpoints
from cilia.policy.engine import PolicyEngine

log = logging.getLogger(__name__)
POLICY_WAIT_SECONDS = 5.0


class PolicyAwareClusterSync:
    def __init__(self, datapath: ClusterDatapath, policy: PolicyEngine) -> None:
        self._datapath = datapath
        self._policy = policy
        self._handed = RemoteEndpoints()  # the remote endpoints the engine holds (the last view's)

    def sync_cluster(self, view: ClusterView) -> object:
        current = RemoteEndpoints.of(view.remote_endpoints)
        changed, gone = current.identity_diff(self._handed)
        pod_cidrs = [cidr for node in view.nodes if node.name != view.local_node for cidr in node.pod_cidrs]
        revision = self._policy.cluster_endpoints_update(changed, gone, pod_cidrs)
        self._handed = current
        if revision is not None:
            result = self._policy.wait(revision, POLICY_WAIT_SECONDS)
            if not result.reached:
                log.warning("cluster view: %d endpoints did not learn the new address selection within %.0f s",
                            len(result.pending), POLICY_WAIT_SECONDS)
        return self._datapath.sync_cluster(view)
