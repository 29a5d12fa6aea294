"""The cluster part of the composition root (`--kvstore etcd`): the etcd client and the node's
session, the pod CIDRs claimed from the cluster pool (before IPAM is built), and once the node's
datapath is up, the cluster runtime (node registry, ipcache, controller) wired to the endpoint
manager, the identity allocator and the policy engine; the pods of other nodes for the service
engine (`remote_pods`, cilia.lb.pods.RemotePodSource). Also the views `cilia status` and
`GET /v1/nodes` read, for both kvstores (with `local` the cluster is this node).

Nothing here waits for etcd: the agent starts with it unreachable (from its caches) and
converges when it is back."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from cilia.agent.config import AgentConfig
from cilia.api.errors import CNI_TRY_AGAIN_LATER, ApiError
from cilia.api.models import ClusterNode, KvstoreStatus
from cilia.cluster.controller import ClusterDatapath
from cilia.cluster.model import IPAddress, IpcacheRecord, Network, NodeRecord
from cilia.cluster.podcidr import PodCidrClaimer
from cilia.cluster.runtime import ClusterRuntime
from cilia.endpoint.record import EndpointRecord
from cilia.identity.allocator import Identity, IdentityAllocator
from cilia.identity.labels import LabelSet
from cilia.kvstore.api import KvError
from cilia.kvstore.etcd import EtcdClient
from cilia.kvstore.identities import EtcdIdentityAllocator
from cilia.kvstore.resources import EtcdStore
from cilia.kvstore.session import NodeSession
from cilia.lb.pods import RemotePod
from cilia.resources.kinds import KindRegistry
from cilia.resources.store import ResourceStore

log = logging.getLogger(__name__)


class AgentIdentities(IdentityAllocator, Protocol):
    """What the agent needs of either allocator (LocalIdentityAllocator, EtcdIdentityAllocator)."""

    def subscribe(self, listener: Callable[[Identity, bool], None]) -> None: ...

    def forget_unreferenced(self) -> int: ...


def pod_cidrs(config: AgentConfig) -> tuple[Network, ...]:
    return tuple(c for c in (config.ipv4_pod_cidr, config.ipv6_pod_cidr) if c is not None)


def local_record(config: AgentConfig, addresses: Iterable[IPAddress], registered: float) -> NodeRecord:
    """This node as the cluster sees it: its first global underlay address of each family."""
    usable = [a for a in addresses if not (a.is_link_local or a.is_loopback)]
    ipv4 = next((a for a in usable if isinstance(a, ipaddress.IPv4Address)), None)
    ipv6 = next((a for a in usable if isinstance(a, ipaddress.IPv6Address)), None)
    return NodeRecord(name=config.node, ipv4=ipv4, ipv6=ipv6, pod_cidrs=pod_cidrs(config),
                      routing_mode=config.routing_mode, updated=registered)


def node_view(record: NodeRecord, local: bool, now: float) -> ClusterNode:
    return ClusterNode(name=record.name, local=local, ipv4=str(record.ipv4) if record.ipv4 else None,
                       ipv6=str(record.ipv6) if record.ipv6 else None,
                       pod_cidrs=[str(c) for c in record.pod_cidrs], routing_mode=record.routing_mode.value,
                       health=record.health, health_reason=record.health_reason,
                       age_seconds=round(max(0.0, now - record.updated), 1) if record.updated else 0.0)


def remote_pods(local_node: str, nodes: Iterable[NodeRecord], records: Iterable[IpcacheRecord],
                local_ips: Iterable[IPAddress] = ()) -> dict[str, RemotePod]:
    """The pods of other nodes as service backends: their ipcache records grouped by pod.

    The same rules as the datapath's view (cilia.cluster.controller.build_view): a record counts
    only while its node is registered and never for an IP this node hosts; records without a pod
    name (written by hand) are no pod. A pod's addresses are sorted (v4 first)."""
    registered = {n.name for n in nodes if n.name != local_node}
    mine = set(local_ips)
    found: dict[str, tuple[str, str, str, list[IPAddress]]] = {}
    for record in sorted(records, key=lambda r: (r.ip.version, int(r.ip))):
        if record.node not in registered or record.ip in mine or not record.pod:
            continue
        namespace = record.namespace or "default"
        key = f"{namespace}/{record.pod}"
        entry = found.setdefault(key, (namespace, record.pod, record.node, []))
        if entry[2] == record.node:  # one pod on two nodes (a stale record): the first node's IPs
            entry[3].append(record.ip)
    return {key: RemotePod(namespace, name, node, tuple(ips)) for key, (namespace, name, node, ips) in found.items()}


class KvGuardedIdentities:
    """The etcd allocator as the endpoint manager sees it: an allocation that needs the kvstore
    while it is unreachable (a label set this node has no cached number for) is a 503 with CNI's
    "try again later" code and a message saying so, not an internal error. The endpoint manager
    rolls the ADD back (nothing is left behind); everything else is passed through."""

    def __init__(self, inner: AgentIdentities) -> None:
        self._inner = inner

    def allocate(self, labels: LabelSet) -> Identity:
        try:
            return self._inner.allocate(labels)
        except KvError as exc:
            raise ApiError(503, CNI_TRY_AGAIN_LATER,
                           f"kvstore unreachable: no cluster identity for {labels.key()} can be allocated now",
                           f"{exc}. Pods whose labels already have an identity on this node are still "
                           "added; try again when etcd is back") from exc

    def release(self, labels: LabelSet) -> bool:
        return self._inner.release(labels)

    def lookup_by_id(self, identity_id: int) -> Identity | None:
        return self._inner.lookup_by_id(identity_id)

    def all(self) -> list[Identity]:
        return self._inner.all()

    def subscribe(self, listener: Callable[[Identity, bool], None]) -> None:
        self._inner.subscribe(listener)

    def forget_unreferenced(self) -> int:
        return self._inner.forget_unreferenced()


class LocalCluster:
    """`--kvstore local`: one node, the embedded store."""

    def __init__(self, config: AgentConfig, addresses: Callable[[], Iterable[IPAddress]]) -> None:
        self._config = config
        self._addresses = addresses
        self._registered = time.time()

    def kvstore_status(self) -> KvstoreStatus:
        return KvstoreStatus(backend="local", reachable=True)

    def cluster_nodes(self) -> list[ClusterNode]:
        return [node_view(local_record(self._config, self._addresses(), self._registered), True, time.time())]

    def remote_endpoints(self) -> int:
        return 0

    def remote_pods(self) -> Mapping[str, RemotePod]:
        return {}

    def stop(self) -> None:
        pass


class EtcdCluster:
    """`--kvstore etcd`: built in the agent's constructor (client, session, pod CIDRs), started
    in its start-up once endpoints are restored (`start`)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.kv = EtcdClient(list(config.kvstore_endpoints), tls=config.kvstore_tls)
        self.session = NodeSession(self.kv, config.node, config.kvstore_lease_ttl)
        self.session.start()  # a thread: grants the lease whenever etcd answers
        self._claimer = PodCidrClaimer(self.kv, config.node, config.paths.state_dir / "podcidrs.json")
        self._unconfirmed: list[Network] = []
        self._registered = time.time()
        self.runtime: ClusterRuntime | None = None
        self.allocator: EtcdIdentityAllocator | None = None
        self.store: EtcdStore | None = None

    # ----- before IPAM -----------------------------------------------------------------------------
    def claim_pod_cidrs(self, config: AgentConfig) -> AgentConfig:
        """The config with the pod CIDRs the cluster pool gave this node (a static CIDR of a family
        wins over the pool's). Raises KvError when etcd is unreachable and nothing is cached."""
        changes: dict[str, Any] = {}
        for family, static, pool, mask in (
            ("ipv4_pod_cidr", config.ipv4_pod_cidr, config.cluster_pool_ipv4_cidr, config.cluster_pool_ipv4_mask_size),
            ("ipv6_pod_cidr", config.ipv6_pod_cidr, config.cluster_pool_ipv6_cidr, config.cluster_pool_ipv6_mask_size),
        ):
            if pool is None:
                continue
            if static is not None:
                log.warning("%s %s given: the cluster pool %s is not used for it", family, static, pool)
                continue
            cidr = self._claimer.claim(pool, mask)
            if self._claimer.from_cache:
                self._unconfirmed.append(cidr)  # confirmed in etcd once it answers
            changes[family] = cidr
            log.info("node %s: pod CIDR %s from the cluster pool %s", config.node, cidr, pool)
        self.config = dataclasses.replace(config, **changes) if changes else config
        return self.config

    def _confirm_claims(self) -> bool:
        try:
            return all(self._claimer.confirm(cidr) for cidr in self._unconfirmed)
        except KvError:
            return False

    def stores(self, kinds: KindRegistry) -> tuple[ResourceStore, AgentIdentities]:
        """The resource store and identity allocator in etcd, each with its local cache."""
        state_dir = self.config.paths.state_dir
        self.store = EtcdStore(self.kv, self.config.node, state_dir / "resources-cache.db", kinds,
                               service_cidrs=self.config.service_cidrs)  # ClusterIPs cluster-wide
        self.allocator = EtcdIdentityAllocator(self.kv, self.config.node, self.session,
                                               state_dir / "identities-cache.json")
        # watching the cluster's identities from now on: restored endpoints' peers resolve
        self.allocator.start()
        return self.store, KvGuardedIdentities(self.allocator)

    # ----- after the datapath and the endpoints ----------------------------------------------------
    def start(self, *, addresses: Iterable[IPAddress], datapath: ClusterDatapath,
              local_endpoints: Callable[[], Iterable[EndpointRecord]],
              identities_changed: Callable[[], object],
              remote_pods_changed: Callable[[], object] | None = None) -> ClusterRuntime:
        self.runtime = ClusterRuntime(
            kv=self.kv, session=self.session, local=local_record(self.config, addresses, self._registered),
            datapath=datapath, local_endpoints=local_endpoints, identities_changed=identities_changed,
            extra_publish=self._confirm_claims if self._unconfirmed else None, tables_changed=remote_pods_changed)
        self.runtime.start()
        return self.runtime

    def stop(self) -> None:
        if self.runtime is not None:
            self.runtime.stop()
        if self.allocator is not None:
            self.allocator.stop()
        if self.store is not None:
            self.store.close()
        self.session.close()
        self.kv.close()

    # ----- views -----------------------------------------------------------------------------------
    def kvstore_status(self) -> KvstoreStatus:
        status = self.kv.status()
        lag = status.raft_index - status.raft_applied_index if status.raft_applied_index else 0
        pending = self.runtime.controller.pending() if self.runtime is not None else True
        return KvstoreStatus(backend="etcd", reachable=status.reachable, endpoint=status.endpoint,
                             member_id=status.member_id, leader_id=status.leader_id, revision=status.revision,
                             lag=max(0, lag), lease=self.session.has_lease, pending=pending, error=status.error)

    def cluster_nodes(self) -> list[ClusterNode]:
        now = time.time()
        if self.runtime is None:
            return [node_view(local_record(self.config, (), self._registered), True, now)]
        return [node_view(r, r.name == self.config.node, now) for r in self.runtime.nodes()]

    def remote_endpoints(self) -> int:
        view = self.runtime.controller.view if self.runtime is not None else None
        return len(view.remote_endpoints) if view is not None else 0

    def remote_pods(self) -> Mapping[str, RemotePod] | None:
        """The service engine's remote pod source: None until both cluster tables were listed
        (the engine keeps its cached remote backends meanwhile)."""
        runtime = self.runtime
        if runtime is None or not (runtime.registry.table.synced and runtime.ipcache.table.synced):
            return None
        return remote_pods(runtime.node, runtime.nodes(), runtime.ipcache_records(), runtime.local_ips())

