"""The agent's composition root: builds every component explicitly (the object kinds it accepts,
the engines, the API with its routers) and runs the background loops.

Start-up order: state dirs -> (with `--kvstore etcd`: the etcd client, the node's session and
the pod CIDRs claimed from the cluster pool) -> resource store -> identities -> IPAM -> node
networking -> datapath (reusing pinned maps) -> endpoints restored from disk -> the cluster
runtime (node registry, ipcache, controller; agent/cluster.py) -> API socket. The datapath keeps
forwarding while the agent is down, so nothing here may tear down what a previous agent built;
nothing waits for etcd either (caches first, convergence when it answers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from cilia import __version__
from cilia.agent.accesslog import AccessLogReader
from cilia.agent.api import bpf as bpf_api
from cilia.agent.api import config as config_api
from cilia.agent.api import endpoints as endpoints_api
from cilia.agent.api import flows as flows_api
from cilia.agent.api import fqdn as fqdn_api
from cilia.agent.api import identities as identities_api
from cilia.agent.api import nodes as nodes_api
from cilia.agent.api import policy as policy_api
from cilia.agent.api import resources as resources_api
from cilia.agent.api import services as services_api
from cilia.agent.api import status as status_api
from cilia.agent.api.app import create_app
from cilia.agent.api.policy_view import PolicyApi
from cilia.agent.cluster import AgentIdentities, EtcdCluster, LocalCluster
from cilia.agent.cluster_policy import PolicyAwareClusterSync
from cilia.agent.config import AgentConfig
from cilia.agent.datapath_adapter import DatapathAdapter
from cilia.agent.events import EventPump
from cilia.agent.links import NetlinkLinks
from cilia.agent.observability import Observability
from cilia.api.models import NodeStatus
from cilia.cluster.model import RoutingMode
from cilia.endpoint.manager import EndpointManager
from cilia.endpoint.registry import EndpointRegistry
from cilia.endpoint.store import EndpointStore
from cilia.flows.l7 import L7FlowBuilder
from cilia.fqdn.history import DnsHistory
from cilia.hubble.agent_events import AgentEventLog, AgentEventRecorder, agent_started
from cilia.hubble.peer import cluster_peers
from cilia.hubble.server import HubbleConfig, HubbleServer
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.ipam import Ipam
from cilia.lb import kinds as lb_kinds
from cilia.lb.manager import ServiceManager
from cilia.metrics.collector import AgentMetrics, Sources
from cilia.metrics.server import MetricsServer
from cilia.netlink import NodeNetConfig, setup_node_networking
from cilia.paths import NodePaths
from cilia.policy import kinds as policy_kinds
from cilia.policy.engine import PolicyEngine, Settings
from cilia.policy.kinds import is_policy
from cilia.policy.resolve import Enforcement
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.resources.store import LocalStore, ResourceStore

log = logging.getLogger(__name__)


class Agent:
    """One node's agent. Constructed with its config; `serve()` runs until cancelled."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.started_at = time.monotonic()
        paths = config.paths
        for directory in (paths.run_dir, paths.state_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The kinds the object store accepts; each package that owns kinds lists them.
        self.kinds = KindRegistry([*CORE_KINDS, *lb_kinds.KINDS, *policy_kinds.KINDS])
        self.etcd: EtcdCluster | None = None
        self.resources: ResourceStore
        self.identities: AgentIdentities
        if config.kvstore == "etcd":
            # Cluster state in etcd; each piece keeps a local cache so the agent starts (and keeps
            # enforcing) with etcd unreachable. The pooled pod CIDR comes before IPAM.
            self.etcd = EtcdCluster(config)
            config = self.config = self.etcd.claim_pod_cidrs(config)
            self.resources, self.identities = self.etcd.stores(self.kinds)
        else:
            self.resources = LocalStore(paths.state_dir / "resources.db", self.kinds)
            self.identities = LocalIdentityAllocator(paths.state_dir / "identities.json")
        self.ipam = Ipam(config.ipv4_pod_cidr, config.ipv6_pod_cidr, paths.state_dir / "ipam.json")
        self.node_net = NodeNetConfig(
            router_ipv4=self.ipam.router_ipv4,
            router_ipv6=self.ipam.router_ipv6,
            ipv4_pod_cidr=config.ipv4_pod_cidr,
            ipv6_pod_cidr=config.ipv6_pod_cidr,
            underlay_device=config.underlay_device,
            masquerade=config.masquerade,
            native_routing_cidrs=config.native_routing_cidrs,
            tunnel_port=config.tunnel_port if config.routing_mode is RoutingMode.TUNNEL else None,
        )
        self.datapath = DatapathAdapter(config, self.ipam)
        # Dependency direction: the registry holds the endpoints and their states; the policy
        # engine reads it and reports regeneration to it; the endpoint manager drives the
        # lifecycle and tells the engine (never the other way round).
        self.registry = EndpointRegistry()
        self.policy = PolicyEngine(
            resources=self.resources,
            identities=self.identities,
            datapath=self.datapath,
            endpoints=self.registry,
            state_dir=paths.state_dir,
            settings=Settings(Enforcement(config.policy_enforcement), config.policy_audit_mode,
                              config.allow_localhost),
            max_entries=config.policy_map_max_entries,
            workers=config.regeneration_workers,
            mode=config.policy_regeneration,
        )
        self.endpoints = EndpointManager(
            registry=self.registry,
            store=EndpointStore(paths.state_dir / "endpoints"),
            ipam=self.ipam,
            identities=self.identities,
            resources=self.resources,
            links=NetlinkLinks(self.datapath.encap_overhead, config.underlay_device),
            datapath=self.datapath,
            policy=self.policy,
        )
        self.services = ServiceManager(
            resources=self.resources,
            endpoints=self.endpoints,
            datapath=self.datapath,
            node=config.node,
            node_addresses=self.datapath.node_addresses,
            state_dir=paths.state_dir,
            maglev_size=config.maglev_table_size,
            maglev_seed=config.maglev_hash_seed,
            service_cidrs=config.service_cidrs,
            remote_pods=self.etcd,  # pods on other nodes as backends (none with one node)
        )
        # the endpoints' DNS history (the DNS proxy's cache file and answers): flows' source/destination_names
        self.dns_history = DnsHistory(paths.fqdn_cache_file)
        self.events = EventPump(config, self.datapath, self.endpoints, self.identities, self.policy.describe_rule,
                                self.services.describe_rev_nat, self.dns_history.names_of)
        self.accesslog = AccessLogReader(paths.accesslog_socket, L7FlowBuilder(  # the proxies' L7 flows
            config.node, self.events.endpoint_view, self.events.identity_labels, self.policy.describe_rule),
            self.events.ring, self.dns_history)
        self.metrics = AgentMetrics(Sources(
            endpoint_states=lambda: [state for _record, state, _reason in self.registry.snapshot()],
            identities=lambda: [identity.reserved for identity in self.identities.all()],
            policy_revision=lambda: self.policy.revision,
            services=lambda: len(self.services.services()),
            metric_totals=self.datapath.metric_totals,
            events_lost=self.events.events_lost,
        ))
        self.policy.queue.add_observer(self.metrics.observe_regeneration)
        self.agent_events = AgentEventLog()  # Hubble's agent events (GetAgentEvents), hooked up in start()
        self.cluster: EtcdCluster | LocalCluster = self.etcd or LocalCluster(config, self.datapath.node_addresses)
        self.observability = Observability(config.observability, self.events.ring, self.metrics.registry,
                                           self.datapath, self.endpoints, self.events.events_lost,
                                           config.policy_map_max_entries)

    # ----- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Blocking start-up work, done before the API socket accepts requests."""
        setup_node_networking(self.node_net)
        self.datapath.open()
        self.datapath.sync_node_entries(self.node_net)
        self.policy.load()
        self.endpoints.restore()
        self.identities.forget_unreferenced()
        # The restored endpoints' policy is recomputed and compared with what is live: when
        # nothing changed while the agent was away, nothing in the kernel is touched.
        self.policy.start()
        # Services: ids come back from the maps, so an unchanged state writes nothing; then the
        # programs that serve them (replaced atomically when a previous agent attached them).
        self.services.load()
        self.services.sync_all()
        self.datapath.attach_service_programs(self.config.underlay_device, self.config.cgroup_root)
        self.endpoints.subscribe(self.services.on_endpoints_changed)
        self.resources.watch(self._on_resource_event)
        self._record_agent_events()
        if self.etcd is not None:
            self._start_cluster(self.etcd)
        log.info("agent %s started: %d endpoints restored", self.config.node, self.endpoints.restored)

    def _record_agent_events(self) -> None:
        """From here on (the restored endpoints are not "created"), as Cilium's monitor agent events."""
        recorder = AgentEventRecorder(self.agent_events, self.registry.records, lambda: self.policy.revision, is_policy)
        self.policy.queue.add_observer(recorder.on_regeneration)
        self.endpoints.subscribe(recorder.on_endpoints_changed)
        self.resources.watch(recorder.on_resource_event)
        self.agent_events.record(agent_started(time.time_ns()))

    def _start_cluster(self, etcd: EtcdCluster) -> None:
        """Other nodes' endpoints into our ipcache, ours out to them; identities allocated on
        other nodes reach policy (the allocator's subscribe sees every node's)."""
        # the policy engine sees the remote endpoints first (ipBlock / toServices select by address)
        runtime = etcd.start(addresses=self.datapath.node_addresses(),
                             datapath=PolicyAwareClusterSync(self.datapath, self.policy),
                             local_endpoints=self.endpoints.records,
                             identities_changed=self.policy.identities_changed,
                             remote_pods_changed=self.services.on_remote_pods_changed)
        self.endpoints.subscribe(runtime.endpoints_changed)
        self.identities.subscribe(runtime.controller.identity_event)
        runtime.controller.identity_event()  # what the allocator learned before this subscription
        runtime.endpoints_changed()  # the restored ones

    def stop(self) -> None:
        """Close our handles. Programs, maps and links stay: the datapath outlives the agent."""
        self.events.close()
        self.policy.stop()
        self.cluster.stop()
        self.datapath.close()

    def build_app(self) -> FastAPI:
        """The API: each router gets the one component (or two) it reads, nothing else."""
        policy = PolicyApi(self.policy)  # the engine in wire models
        return create_app([
            status_api.make_router(self.config.node, self),
            endpoints_api.make_router(self.endpoints, policy),
            config_api.make_router(policy),
            policy_api.make_router(policy, policy, policy),
            identities_api.make_router(self.identities),
            nodes_api.make_router(self.cluster),
            resources_api.make_router(self.resources, lambda: self.policy.revision),
            services_api.make_router(self.services),
            bpf_api.make_router(self.datapath, self.endpoints, self.policy.describe_rule),
            flows_api.make_router(self.events.ring, self.config.node, self.events.raw),
            fqdn_api.make_router(self.policy, self.config.paths),
        ])

    async def serve(self) -> None:
        socket_path = self.config.paths.socket
        if socket_path.exists():
            socket_path.unlink()
        server = uvicorn.Server(
            uvicorn.Config(
                self.observability.wrap_api(self.build_app()),
                uds=str(socket_path),
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        async with AsyncExitStack() as stack, asyncio.TaskGroup() as tasks:
            stack.callback(self.stop)
            if self.config.hubble:  # Hubble's Observer API on hubble.sock (and a TCP address if given)
                hubble_config = HubbleConfig.from_agent(self.config)
                hubble = HubbleServer(hubble_config, self.events.ring, peers=lambda: cluster_peers(
                    ((n.name, n.ipv4) for n in self.cluster.cluster_nodes()), hubble_config.listen_address,
                    hubble_config.tls is not None, lambda name: str(NodePaths(name).hubble_socket)),
                    events=self.agent_events)
                stack.callback(hubble.stop)
                try:
                    await asyncio.to_thread(hubble.start)
                except (RuntimeError, TimeoutError):
                    log.exception("Hubble server not started; the agent runs without it")
            if self.config.prometheus_serve_addr:
                metrics = MetricsServer(self.config.prometheus_serve_addr, self.metrics.registry)
                stack.callback(metrics.stop)
                try:
                    metrics.start()
                except OSError:
                    log.exception("Prometheus metrics not served; the agent runs without them")
            stack.callback(self.observability.stop)
            self.observability.start()
            stack.callback(self.accesslog.stop)
            try:
                self.accesslog.start()
            except OSError:
                log.exception("proxy access log not read; L7 flows are not recorded")
            tasks.create_task(self.events.run(), name="events")
            tasks.create_task(self._ct_gc_loop(), name="ct-gc")
            tasks.create_task(_chmod_when_bound(socket_path), name="socket-mode")
            await server.serve()
            raise asyncio.CancelledError  # the server returned (signal): end the background loops

    async def _ct_gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.ct_gc_interval_seconds)
            try:
                removed = await asyncio.to_thread(self.datapath.ct_gc)
                removed_affinity = await asyncio.to_thread(self.services.gc_affinity)
                if self.services.needs_resync:
                    await asyncio.to_thread(self.services.sync_all)
                if removed or removed_affinity:
                    log.debug("gc removed %d expired conntrack and %d affinity entries", removed, removed_affinity)
            except Exception:
                log.exception("conntrack / affinity garbage collection failed")

    # ----- resources -----------------------------------------------------------------------------
    def _on_resource_event(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        kind = obj.get("kind")
        metadata = obj.get("metadata", {})
        if is_policy(obj) or kind == "Pod":
            self.policy.on_resource_event(event, obj, old)
        if kind in ("Service", "EndpointSlice", "Pod"):
            self.services.on_resource_event(event, obj, old)
        if kind in ("Service", "EndpointSlice"):  # toServices follows the backends
            self.policy.on_resource_event(event, obj, old)
        if kind == "Pod":
            self.endpoints.reevaluate_identities(metadata.get("namespace", "default"), metadata.get("name"))
        elif kind == "Namespace":
            self.endpoints.reevaluate_identities(metadata.get("name"))

    # ----- views ---------------------------------------------------------------------------------
    def status(self) -> NodeStatus:
        return NodeStatus(
            node=self.config.node,
            version=__version__,
            uptime_seconds=round(time.monotonic() - self.started_at, 1),
            endpoints=len(self.endpoints.records()),
            identities=len(self.identities.all()),
            ipv4_pod_cidr=str(self.config.ipv4_pod_cidr) if self.config.ipv4_pod_cidr else None,
            ipv6_pod_cidr=str(self.config.ipv6_pod_cidr) if self.config.ipv6_pod_cidr else None,
            datapath=self.datapath.summary(),
            restored_endpoints=self.endpoints.restored,
            flows_buffered=self.events.flows_buffered(),
            events_lost=self.events.events_lost(),
            services=len(self.services.services()),
            service_sync_operations=self.services.last_sync_operations,
            kvstore=self.cluster.kvstore_status(),
            cluster_nodes=self.cluster.cluster_nodes(),
            remote_endpoints=self.cluster.remote_endpoints(),
        )


async def _chmod_when_bound(socket_path: Path) -> None:
    """The API socket is root-only (0600): it can create links and load programs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if socket_path.exists():
            os.chmod(socket_path, 0o600)
            return
        await asyncio.sleep(0.02)
    log.error("API socket %s did not appear within 30 s", socket_path)
