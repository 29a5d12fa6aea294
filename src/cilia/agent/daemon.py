"""The agent's composition root: builds every component explicitly and runs the background loops.

Start-up order: state dirs -> resource store -> identities -> IPAM -> node networking ->
datapath (reusing pinned maps) -> endpoints restored from disk -> API socket. The datapath keeps
forwarding while the agent is down, so nothing here may tear down what a previous agent built.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

import cilia.lb.kinds  # noqa: F401  (registers Service and EndpointSlice with the object store)
from cilia import __version__
from cilia.agent.config import AgentConfig
from cilia.agent.datapath_adapter import DatapathAdapter
from cilia.agent.endpoint_manager import EndpointManager
from cilia.agent.errors import ApiError, invalid
from cilia.agent.events import EventPump
from cilia.agent.links import NetlinkLinks
from cilia.agent.policy_manager import PolicyManager, Settings
from cilia.agent.routes import api_error_handler, make_router
from cilia.agent.service_manager import ServiceManager
from cilia.api.models import Identity, NodeStatus
from cilia.endpoint.store import EndpointStore
from cilia.flows.routes import make_router as make_flow_router
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.ipam import Ipam
from cilia.netlink import NodeNetConfig, setup_node_networking
from cilia.policy.kinds import is_policy
from cilia.policy.resolve import Enforcement
from cilia.policy.rules import PROTOCOL_NAMES
from cilia.resources import ResourceError
from cilia.resources.store import LocalStore

log = logging.getLogger(__name__)


class Agent:
    """One node's agent. Constructed with its config; `serve()` runs until cancelled."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.started_at = time.monotonic()
        paths = config.paths
        for directory in (paths.run_dir, paths.state_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.resources = LocalStore(paths.state_dir / "resources.db")
        self.identities = LocalIdentityAllocator(paths.state_dir / "identities.json")
        self.ipam = Ipam(config.ipv4_pod_cidr, config.ipv6_pod_cidr, paths.state_dir / "ipam.json")
        self.node_net = NodeNetConfig(
            router_ipv4=self.ipam.router_ipv4,
            router_ipv6=self.ipam.router_ipv6,
            ipv4_pod_cidr=config.ipv4_pod_cidr,
            ipv6_pod_cidr=config.ipv6_pod_cidr,
            underlay_device=config.underlay_device,
            masquerade=config.masquerade,
        )
        self.datapath = DatapathAdapter(config, self.ipam)
        self.endpoints = EndpointManager(
            store=EndpointStore(paths.state_dir / "endpoints"),
            ipam=self.ipam,
            identities=self.identities,
            resources=self.resources,
            links=NetlinkLinks(),
            datapath=self.datapath,
        )
        self.policy = PolicyManager(
            resources=self.resources,
            identities=self.identities,
            datapath=self.datapath,
            endpoints=self.endpoints,
            state_dir=paths.state_dir,
            lock=self.endpoints.lock,
            settings=Settings(Enforcement(config.policy_enforcement), config.policy_audit_mode,
                              config.allow_localhost),
            max_entries=config.policy_map_max_entries,
        )
        self.endpoints.policy = self.policy
        self.services = ServiceManager(
            resources=self.resources,
            endpoints=self.endpoints,
            datapath=self.datapath,
            node=config.node,
            node_addresses=self.datapath.node_addresses,
            state_dir=paths.state_dir,
            lock=self.endpoints.lock,
            maglev_size=config.maglev_table_size,
            maglev_seed=config.maglev_hash_seed,
            service_cidrs=config.service_cidrs,
        )
        self.events = EventPump(config, self.datapath, self.endpoints, self.identities, self.policy.describe_rule,
                                self.services.describe_rev_nat)
        self._resource_lock = threading.Lock()

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
        self.policy.regenerate()
        # Services: ids come back from the maps, so an unchanged state writes nothing; then the
        # programs that serve them (replaced atomically when a previous agent attached them).
        self.services.load()
        self.services.sync_all()
        self.datapath.attach_service_programs(self.config.underlay_device, self.config.cgroup_root)
        self.endpoints.subscribe(self.services.on_endpoints_changed)
        self.resources.watch(self._on_resource_event)
        log.info("agent %s started: %d endpoints restored", self.config.node, self.endpoints.restored)

    def stop(self) -> None:
        """Close our handles. Programs, maps and links stay: the datapath outlives the agent."""
        self.events.close()
        self.datapath.close()

    def build_app(self) -> FastAPI:
        app = FastAPI(
            title="cilia agent API",
            version=__version__,
            description="Local API of a cilia node agent (unix socket, mode 0600).",
        )
        app.add_exception_handler(ApiError, api_error_handler)
        app.include_router(make_router(self))
        app.include_router(make_flow_router(self.events.ring, self.config.node, self.events.raw))
        return app

    async def serve(self) -> None:
        socket_path = self.config.paths.socket
        if socket_path.exists():
            socket_path.unlink()
        server = uvicorn.Server(
            uvicorn.Config(
                self.build_app(),
                uds=str(socket_path),
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        async with AsyncExitStack() as stack, asyncio.TaskGroup() as tasks:
            stack.callback(self.stop)
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
    def apply_objects(self, objects: list[dict[str, Any]]) -> list[Any]:
        with self._resource_lock:
            try:
                return list(self.resources.apply(objects))
            except ResourceError as exc:
                raise invalid(str(exc)) from exc

    def delete_objects(self, objects: list[dict[str, Any]]) -> list[Any]:
        with self._resource_lock:
            try:
                return list(self.resources.delete(objects))
            except ResourceError as exc:
                raise invalid(str(exc)) from exc

    def _on_resource_event(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        kind = obj.get("kind")
        metadata = obj.get("metadata", {})
        if is_policy(obj) or kind == "Pod":
            self.policy.on_resource_event(event, obj, old)
        if kind in ("Service", "EndpointSlice", "Pod"):
            self.services.on_resource_event(event, obj, old)
        if kind == "Pod":
            self.endpoints.reevaluate_identities(metadata.get("namespace", "default"), metadata.get("name"))
        elif kind == "Namespace":
            self.endpoints.reevaluate_identities(metadata.get("name"))

    # ----- views ---------------------------------------------------------------------------------
    def list_identities(self) -> list[Identity]:
        return [
            Identity(id=i.id, labels=[str(label) for label in i.labels], reserved=i.reserved, references=i.references)
            for i in self.identities.all()
        ]

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
        )

    def bpf_ct(self) -> list[dict[str, Any]]:
        return self.datapath.dump_ct()

    def bpf_ipcache(self) -> list[dict[str, Any]]:
        return self.datapath.dump_ipcache()

    def bpf_endpoints(self) -> list[dict[str, Any]]:
        return self.datapath.dump_endpoints()

    def bpf_metrics(self) -> list[dict[str, Any]]:
        return self.datapath.dump_metrics()

    def bpf_policy(self, endpoint_id: int) -> dict[str, Any]:
        """The endpoint's live policy entries, with identity classes expanded and rules named."""
        raw = self.datapath.dump_policy(endpoint_id)
        if not raw.get("installed"):
            return raw
        members: dict[tuple[str, int], list[int]] = {}
        for row in raw["classes"]:
            members.setdefault((row["direction"], row["class"]), []).append(row["identity"])
        rows = []
        for row in raw["ports"]:
            key, value = row["key"], row["value"]
            klass = row["class"]
            rule = self.policy.describe_rule(value.rule_id)
            rows.append({
                "direction": row["direction"],
                "identities": sorted(members.get((row["direction"], klass), [])) if klass else "any other",
                "class": klass,
                "port": _port_text(key.port, key.bits if key.protocol else 0),
                "protocol": PROTOCOL_NAMES.get(key.protocol, str(key.protocol)) if key.protocol else "ANY",
                "verdict": "allow" if value.verdict == 1 else "deny",
                "rule": (f"{rule['kind']}/{rule['namespace'] + '/' if rule['namespace'] else ''}{rule['name']} "
                         f"{rule['rule']}") if rule else ("no enforcement" if value.verdict == 1 else "-"),
            })
        rows.sort(key=lambda r: (r["direction"], r["class"], r["protocol"], r["port"]))
        return {"endpoint_id": endpoint_id, "installed": True, "flags": raw["flags"], "entries": rows,
                "identity_entries": len(raw["classes"])}


def _port_text(port: int, bits: int) -> str:
    if bits == 0:
        return "*"
    return str(port) if bits == 16 else f"{port}-{port + (1 << (16 - bits)) - 1}"


async def _chmod_when_bound(socket_path: Path) -> None:
    """The API socket is root-only (0600): it can create links and load programs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if socket_path.exists():
            os.chmod(socket_path, 0o600)
            return
        await asyncio.sleep(0.02)
    log.error("API socket %s did not appear within 30 s", socket_path)
