"""One node's cluster side, assembled: the node registry and the ipcache publisher with the two
reflectors mirroring `cilia/nodes/` and `cilia/ipcache/`, and the controller pushing the view
into the datapath. The agent builds one (with `--kvstore etcd`); unit tests build several on one
MemoryKv. The kvstore may be unreachable at any time, start included: nothing here blocks on it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from cilia.cluster import codec
from cilia.cluster.controller import ClusterController, ClusterDatapath
from cilia.cluster.ipcache import IpcachePublisher, endpoint_entries
from cilia.cluster.model import IPAddress, IpcacheRecord, NodeRecord, RoutingMode
from cilia.cluster.nodes import NodeRegistry
from cilia.endpoint.record import EndpointRecord
from cilia.kvstore.api import KvClient
from cilia.kvstore.reflector import PrefixReflector
from cilia.kvstore.session import NodeSession

log = logging.getLogger(__name__)


class ClusterRuntime:
    def __init__(
        self,
        *,
        kv: KvClient,
        session: NodeSession,
        local: NodeRecord,
        datapath: ClusterDatapath,
        local_endpoints: Callable[[], Iterable[EndpointRecord]],
        identities_changed: Callable[[], object] | None = None,
        extra_publish: Callable[[], bool] | None = None,
        tables_changed: Callable[[], object] | None = None,
        debounce: float = 0.05,
        retry_interval: float = 1.0,
    ) -> None:
        self.kv = kv
        self.session = session
        self.routing_mode: RoutingMode = local.routing_mode
        self._local_endpoints = local_endpoints
        self.registry = NodeRegistry(kv, session, local)
        self.ipcache = IpcachePublisher(kv, session, local.name)
        # the tables hold the decoded records: the reflectors keep only fingerprints of the values
        self.node_reflector = PrefixReflector(kv, codec.NODES_PREFIX, self.registry.table.handle, name="nodes",
                                              keep_values=False)
        self.ipcache_reflector = PrefixReflector(kv, codec.IPCACHE_PREFIX, self.ipcache.table.handle,
                                                 name="ipcache", keep_values=False)
        self.registry.table.bind(lambda: self.node_reflector.synced, lambda: self.node_reflector.revision)
        self.ipcache.table.bind(lambda: self.ipcache_reflector.synced, lambda: self.ipcache_reflector.revision)
        self.controller = ClusterController(
            registry=self.registry, ipcache=self.ipcache, datapath=datapath, routing_mode=local.routing_mode,
            local_ips=self.local_ips, identities_changed=identities_changed, debounce=debounce,
            retry_interval=retry_interval, extra_publish=extra_publish, tables_changed=tables_changed)
        session.on_new_lease(self._new_lease)
        self.endpoints_changed()

    @property
    def node(self) -> str:
        return self.registry.name

    def _new_lease(self, lease: int) -> None:
        self.registry.lease_lost(lease)
        self.ipcache.lease_lost(lease)
        self.controller.publish_needed()

    def endpoints_changed(self) -> None:
        """The local endpoints changed (the endpoint manager's subscribe): publish their IPs."""
        local = self.registry.local
        self.ipcache.set_desired(endpoint_entries(self._local_endpoints(), local.name, local.ipv4, local.ipv6))
        self.controller.publish_needed()
        self.controller.view_changed()  # a local IP hides a conflicting remote record

    def local_ips(self) -> list[IPAddress]:
        return list(self.ipcache.desired())

    def nodes(self) -> list[NodeRecord]:
        return self.registry.nodes()

    def ipcache_records(self) -> list[IpcacheRecord]:
        """Every node's ipcache records as mirrored (this node's included)."""
        return list(self.ipcache.table.snapshot().values())

    def start(self) -> None:
        self.session.start()
        self.node_reflector.start()
        self.ipcache_reflector.start()
        self.controller.start()

    def stop(self) -> None:
        """Stop the threads. The lease is not revoked: a restarting agent's entries stay until it
        is back (or its lease expires), so the other nodes do not drop and re-add its pods."""
        self.controller.stop()
        self.node_reflector.stop()
        self.ipcache_reflector.stop()
        self.session.close()
