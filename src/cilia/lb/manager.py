"""The service engine: Service / EndpointSlice / Pod objects, local endpoints and the pods of other
nodes -> the LB maps, incrementally.

On any change only the services it touches are recomputed (cilia.lb.state, cilia.lb.desired) and
only the entries that differ are written (cilia.lb.reconcile, in an order that never exposes a
dangling id). Ids (rev-NAT per frontend, one per backend address:port:protocol) are taken back from
the maps themselves at start (cilia.lb.recovery), so a restarted agent that computes the same state
writes nothing. The maps are reached only through `LbMapsPort`, in typed entries: packing them is
cilia.maps.lb's job.

Backends of a selector come from every node: a pod with a local endpoint has that endpoint's
addresses (this node), any other pod the addresses the cluster view gives it (`RemotePodSource`,
with its node; provided by the composition root, none with one node). `on_remote_pods_changed`
recomputes only the services selecting a pod whose remote addresses or node changed. The remote
pods that are backends are cached in `remote-backends.json`: until the source knows the cluster
(a restart, maybe with etcd down), a sync uses them, so a restarted agent keeps its remote
backends in the maps instead of dropping and re-adding them.

Locking: the engine has its own lock and never calls the endpoint source or the remote pod source
while holding it (the endpoint manager calls `on_endpoints_changed` under its own lock); their
addresses are kept from the last notification or full sync instead.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cilia.jsonfile import read_json, write_json
from cilia.lb import recovery
from cilia.lb.affinity import AffinityEntry, AffinityKey, expired
from cilia.lb.clusterip import ClusterIpAllocator
from cilia.lb.desired import ServiceState, frontend_entries
from cilia.lb.entries import BackendEntry, BackendKey, LbEntries, SlotKey
from cilia.lb.ids import IdAllocator
from cilia.lb.k8s import parse_endpoint_slice, parse_service
from cilia.lb.model import (
    Backend,
    BackendState,
    EndpointSliceSpec,
    FrontendKey,
    IPAddress,
    LbFrontend,
    ServiceName,
)
from cilia.lb.pods import RemotePod, RemotePodSource, decode_remote, encode_remote, pod_info
from cilia.lb.reconcile import LbChanges, LbMapError, Operation, diff, plan
from cilia.lb.state import PodInfo, frontends_for
from cilia.lb.views import frontend_text, maglev_rows, rev_nat_row, service_rows
from cilia.resources import ResourceError

log = logging.getLogger(__name__)
PodAddresses = tuple[str | None, str | None]  # a local endpoint's IPv4 and IPv6 address


class LbMapsPort(Protocol):
    """The LB maps in typed entries (cilia.maps.lb.LbMaps)."""

    def entries(self) -> LbEntries:
        """What the services, backends, rev-NAT and Maglev maps hold now."""
        ...

    def write(self, operations: Sequence[Operation]) -> int:
        """Execute these operations in order; the number done. LbMapError when one fails."""
        ...

    def affinity(self) -> dict[AffinityKey, AffinityEntry]: ...

    def delete_affinity(self, keys: Iterable[AffinityKey]) -> int: ...


class LbDatapath(Protocol):
    @property
    def lb(self) -> LbMapsPort: ...


class ResourceReader(Protocol):
    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]: ...

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...


class LocalEndpoint(Protocol):
    """What the engine needs of a local endpoint record: whose pod it is and its addresses."""

    @property
    def pod_namespace(self) -> str: ...

    @property
    def pod_name(self) -> str: ...

    @property
    def ipv4(self) -> str | None: ...

    @property
    def ipv6(self) -> str | None: ...


class EndpointSource(Protocol):
    def records(self) -> Sequence[LocalEndpoint]: ...


def _addresses_of(records: Iterable[LocalEndpoint]) -> dict[str, PodAddresses]:
    return {f"{r.pod_namespace}/{r.pod_name}": (r.ipv4, r.ipv6) for r in records}


def _changed_keys(now: Mapping[str, object], before: Mapping[str, object]) -> set[str]:
    """The keys added, removed or with another value."""
    return {k for k in now.keys() | before.keys() if now.get(k) != before.get(k)}


class ServiceManager:
    def __init__(self, *, resources: ResourceReader, endpoints: EndpointSource, datapath: LbDatapath, node: str,
                 node_addresses: Callable[[], list[IPAddress]], state_dir: Path,
                 maglev_size: int, maglev_seed: int = 0,
                 service_cidrs: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
                 remote_pods: RemotePodSource | None = None) -> None:
        self._resources = resources
        self._endpoints = endpoints
        self._remote_source = remote_pods
        self._datapath = datapath
        self._node = node
        self._node_addresses = node_addresses
        self._lock = threading.RLock()
        self._maglev_size = maglev_size
        self._maglev_seed = maglev_seed
        self._cluster_ips = ClusterIpAllocator(service_cidrs, state_dir / "cluster-ips.json")
        self._rev_nat = IdAllocator[FrontendKey]("rev-NAT ids", 1, 65535)
        self._backend_ids = IdAllocator[BackendKey]("backend ids", 1, (1 << 32) - 1)
        self._services: dict[ServiceName, ServiceState] = {}
        self._owners: dict[FrontendKey, ServiceName] = {}
        self._backend_users: dict[int, set[ServiceName]] = {}
        self._backend_values: dict[int, BackendEntry] = {}  # desired entry of every allocated backend id
        self._backend_written: dict[int, BackendEntry] = {}  # what the backends map holds
        self._overrides: dict[tuple[ServiceName, IPAddress, int], BackendState] = {}
        self._pod_addresses: dict[str, PodAddresses] = {}  # "namespace/name" -> its local endpoint's
        # "namespace/name" -> a pod on another node; from the cache until the source knows the cluster
        self._remote_cache = state_dir / "remote-backends.json"
        self._remote_pods: dict[str, RemotePod] = decode_remote(read_json(self._remote_cache, {}))
        self._remote_saved = dict(self._remote_pods)
        self._remote_used: dict[ServiceName, set[str]] = {}  # each service's backends on other nodes
        self._addresses: list[IPAddress] = []
        self._live: LbEntries | None = None  # what the maps held at load(), until the first sync
        # EndpointSlices by the service they belong to, parsed once when they change (the store
        # has no index, and scanning every slice per service would make a sync quadratic)
        self._slices: dict[ServiceName, dict[str, EndpointSliceSpec]] = {}
        self._errors: dict[ServiceName, str] = {}
        self.needs_resync = False
        self.last_sync_seconds = 0.0
        self.last_sync_operations = 0

    # ----- start-up ------------------------------------------------------------------------------
    def load(self) -> None:
        """Take back the ids the maps use, so the first sync rewrites nothing that is unchanged."""
        with self._lock:
            live = self._datapath.lb.entries()
            self._rev_nat.restore(recovery.rev_nat_ids(live))
            self._backend_ids.restore(recovery.backend_ids(live))
            self._backend_values = dict(live.backends)
            self._live = live

    def sync_all(self) -> None:
        """Compute every service and make the maps hold exactly that (start-up, and after a failed write)."""
        records = self._endpoints.records()  # before our lock: see the module's docstring
        remote = self._read_remote()
        with self._lock:
            started = time.monotonic()
            self.needs_resync = False
            self._services.clear()
            self._owners.clear()
            self._backend_users.clear()
            self._addresses = self._node_addresses()
            self._pod_addresses = _addresses_of(records)
            if remote is not None:
                self._remote_pods = remote
            self._remote_used.clear()
            self._slices.clear()
            for obj in self._resources.list("EndpointSlice"):
                self._index_slice(obj)
            names = {self._name(obj) for obj in self._resources.list("Service")}
            desired = LbEntries()
            for name in sorted(names):
                state = self._compute(name)
                self._services[name] = state
                desired.update(state.entries)
                for backend_id in state.backend_ids:
                    self._backend_users.setdefault(backend_id, set()).add(name)
                self._note_remote_used(name, state)
            for backend_id in self._backend_users:
                desired.backends[backend_id] = self._backend_values[backend_id]
            live = self._live if self._live is not None else self._datapath.lb.entries()
            try:
                operations = self._write(diff(live, desired))
                self._errors.clear()  # the maps hold exactly the desired state: earlier failures are healed
            except LbMapError as exc:  # the agent still starts; `cilia service list` and the log say why
                log.error("services: programming the datapath failed, retried at the next GC: %s", exc)
                self._errors[ServiceName("", "*")] = str(exc)
                self.needs_resync = True
                operations = 0
            self._forget_unused_ids()
            self._backend_written = {i: self._backend_values[i] for i in self._backend_users}
            self._live = None
            self._save_remote()
            self.last_sync_seconds = time.monotonic() - started
            self.last_sync_operations = operations
            log.info("services synced: %d services, %d map operations in %.3f s", len(names), operations,
                     self.last_sync_seconds)

    def _write(self, changes: LbChanges) -> int:
        return self._datapath.lb.write(plan(changes))

    def _forget_unused_ids(self) -> None:
        live = {f.key for s in self._services.values() for f in s.frontends}
        for key in list(self._rev_nat.items()):
            if key not in live:
                self._rev_nat.release(key)
        for backend_key, backend_id in list(self._backend_ids.items().items()):
            if backend_id not in self._backend_users:
                self._backend_ids.release(backend_key)
                self._backend_values.pop(backend_id, None)

    # ----- changes ---------------------------------------------------------------------------------
    def on_resource_event(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        kind = obj.get("kind")
        with self._lock:
            if kind == "Service":
                self.update({self._name(obj)})
            elif kind == "EndpointSlice":
                if old is not None:
                    self._unindex_slice(old)
                if event != "DELETED":
                    self._index_slice(obj)
                names = {self._slice_service(obj)} | ({self._slice_service(old)} if old else set())
                self.update({n for n in names if n is not None})
            elif kind == "Pod":
                namespace = obj.get("metadata", {}).get("namespace", "default")
                labels = [o.get("metadata", {}).get("labels") or {} for o in (obj, old) if o]
                self.update(self._selecting(namespace, labels))

    def on_endpoints_changed(self) -> None:
        """An endpoint came, went or changed address: services selecting its pod follow."""
        now = _addresses_of(self._endpoints.records())  # before our lock: see the module's docstring
        with self._lock:
            changed = _changed_keys(now, self._pod_addresses)
            self._pod_addresses = now
            names = self._selecting_pods(changed)
            if names:
                self.update(names)

    def on_remote_pods_changed(self) -> None:
        """The cluster view changed: services selecting a pod whose remote addresses (or node) came,
        went or changed follow; nothing else is recomputed."""
        now = self._read_remote()  # before our lock: see the module's docstring
        if now is None:
            return
        with self._lock:
            changed = _changed_keys(now, self._remote_pods)
            self._remote_pods = now
            # a local endpoint's addresses win: a remote record of the same pod is stale or conflicting
            names = self._selecting_pods(k for k in changed if k not in self._pod_addresses)
            if names:
                self.update(names)

    def _read_remote(self) -> dict[str, RemotePod] | None:
        if self._remote_source is None:
            return {}
        pods = self._remote_source.remote_pods()
        return None if pods is None else dict(pods)

    def _note_remote_used(self, name: ServiceName, state: ServiceState) -> None:
        used = {b.pod for f in state.frontends for b in f.backends
                if b.pod is not None and b.node != self._node and b.pod in self._remote_pods}
        if used:
            self._remote_used[name] = used
        else:
            self._remote_used.pop(name, None)

    def _save_remote(self) -> None:
        """Write the cache of remote backends' pods when it changed."""
        used = set().union(*self._remote_used.values()) if self._remote_used else set()
        wanted = {key: self._remote_pods[key] for key in sorted(used) if key in self._remote_pods}
        if wanted == self._remote_saved:
            return
        try:
            write_json(self._remote_cache, encode_remote(wanted))
            self._remote_saved = wanted
        except OSError as exc:  # only a restart's first sync would miss it
            log.warning("services: cannot write %s: %s", self._remote_cache, exc)

    def set_backend_state(self, service: ServiceName, address: IPAddress, port: int, state: BackendState) -> None:
        """Operator override (quarantine a backend, or make it active again)."""
        with self._lock:
            if service not in self._services:
                raise LookupError(f"service {service} does not exist")
            if not any(b.address == address and b.port == port for f in self._services[service].frontends
                       for b in f.backends):
                raise LookupError(f"service {service} has no backend {address}:{port}")
            if state is BackendState.ACTIVE:
                self._overrides.pop((service, address, port), None)
            else:
                self._overrides[(service, address, port)] = state
            self.update({service})

    def update(self, names: Iterable[ServiceName]) -> int:
        """Recompute these services and write what changed. Returns map operations done.

        A frontend that its owner gives up (deleted, or no longer in its spec) passes to a service
        that wanted it too and was refused with a conflict, as if that service had been re-applied."""
        operations = 0
        with self._lock:
            pending = sorted(set(names))
            # each hand-over gains a frontend and releases none, so this bound is never reached
            budget = 2 * (len(pending) + len(self._services)) + 1
            while pending and budget:
                budget -= 1
                name = pending.pop(0)
                done, released = self._update_one(name)
                operations += done
                if released:
                    pending += sorted(n for n, state in self._services.items()
                                      if n != name and n not in pending and state.conflicted & released)
            self._save_remote()
        return operations

    def _update_one(self, name: ServiceName) -> tuple[int, set[FrontendKey]]:
        """Returns map operations done and the frontends this service gave up that no one owns now."""
        old = self._services.get(name, ServiceState(None))
        for frontend in old.frontends:
            self._owners.pop(frontend.key, None)
        new = self._compute(name, old)
        changes = diff(old.entries, new.entries)  # services, rev-NAT and Maglev: backends are shared
        for backend_id in new.backend_ids - old.backend_ids:
            self._backend_users.setdefault(backend_id, set()).add(name)
        freed: list[int] = []
        for backend_id in old.backend_ids - new.backend_ids:
            users = self._backend_users.get(backend_id, set())
            users.discard(name)
            if not users:
                self._backend_users.pop(backend_id, None)
                freed.append(backend_id)
        # new backends, and kept ones whose state changed; then those no service uses any more
        changes.upserts.backends = {i: self._backend_values[i] for i in new.backend_ids
                                    if self._backend_written.get(i) != self._backend_values[i]}
        changes.deletes.backends = freed
        try:
            operations = self._write(changes)
            self._errors.pop(name, None)
        except LbMapError as exc:
            # e.g. a full map (--bpf-lb-map-max): the maps now hold part of the change. Say so on
            # the service, and let the next resync diff against what the maps really hold.
            self._errors[name] = f"programming the datapath failed: {exc}"
            log.error("service %s: %s", name, self._errors[name])
            self.needs_resync = True
            operations = 0
        for backend_id in new.backend_ids:
            self._backend_written[backend_id] = self._backend_values[backend_id]
        for backend_id in freed:
            self._backend_written.pop(backend_id, None)
        released: set[FrontendKey] = set()
        for frontend in old.frontends:
            if frontend.key not in self._owners:  # no service serves this frontend any more
                self._rev_nat.release(frontend.key)
                released.add(frontend.key)
        for backend_id in freed:
            self._backend_ids.release(self._backend_values.pop(backend_id).key)
        if new.spec is None:
            self._services.pop(name, None)
            self._cluster_ips.release(name)
        else:
            self._services[name] = new
        self._note_remote_used(name, new)
        return operations, released

    # ----- computing one service -------------------------------------------------------------------
    def _compute(self, name: ServiceName, old: ServiceState | None = None) -> ServiceState:
        obj = self._resources.get("Service", name.namespace, name.name)
        if obj is None:
            return ServiceState(None)
        try:
            spec = parse_service(obj)
        except ResourceError:  # validated on apply; a stored object that no longer parses is skipped
            log.exception("service %s does not parse", name)
            return ServiceState(None)
        cluster_ips = spec.cluster_ips
        if not cluster_ips and not spec.headless:
            taken = {ip for s in self._services.values() for ip in s.cluster_ips}
            allocated = self._cluster_ips.get(name, taken)
            cluster_ips = (allocated,) if allocated else ()
        slices = self._slices_of(name)
        pods = self._pods_in(name.namespace) if spec.selector is not None and not slices else []
        frontends = frontends_for(spec, cluster_ips, slices, pods, self._node, self._addresses)
        state = ServiceState(spec, cluster_ips)
        for frontend in frontends:
            owner = self._owners.get(frontend.key)
            if owner is not None and owner != name:
                state.conflicts.append(f"{frontend_text(frontend.key)} is already a frontend of service {owner}")
                state.conflicted.add(frontend.key)
                continue
            frontend = self._with_overrides(frontend)
            self._owners[frontend.key] = name
            state.frontends.append(frontend)
        if state.conflicts:
            log.error("service %s: %s", name, "; ".join(state.conflicts))
        # Slots stay where this service's last write put them, or, at start, where the maps have them.
        previous = old.entries if old is not None and old.entries.services else self._live or LbEntries()
        for frontend in state.frontends:
            protocol = frontend.key.protocol.number
            ids = {b: self._backend_id(b, protocol) for b in frontend.backends}
            state.backend_ids.update(ids.values())
            master = SlotKey(frontend.key.address, frontend.key.port, protocol)
            state.entries.update(frontend_entries(frontend, self._rev_nat.allocate(frontend.key), ids,
                                                  previous.slots(master), self._maglev_size, self._maglev_seed))
        return state

    def _with_overrides(self, frontend: LbFrontend) -> LbFrontend:
        if not self._overrides:
            return frontend
        backends = tuple(
            Backend(b.address, b.port, self._overrides.get((frontend.service, b.address, b.port), b.state),
                    b.weight, b.node, b.pod) if b.state is BackendState.ACTIVE else b
            for b in frontend.backends)
        return LbFrontend(frontend.key, frontend.type, frontend.service, frontend.port_name, backends,
                          frontend.affinity_timeout, frontend.local_only)

    def _backend_id(self, backend: Backend, protocol: int) -> int:
        entry = BackendEntry(backend.address, backend.port, protocol, backend.state)
        backend_id = self._backend_ids.allocate(entry.key)
        self._backend_values[backend_id] = entry
        return backend_id

    # ----- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _name(obj: dict[str, Any]) -> ServiceName:
        metadata = obj.get("metadata", {})
        return ServiceName(metadata.get("namespace", "default"), metadata["name"])

    @staticmethod
    def _slice_service(obj: dict[str, Any]) -> ServiceName | None:
        metadata = obj.get("metadata", {})
        service = (metadata.get("labels") or {}).get("kubernetes.io/service-name")
        return ServiceName(metadata.get("namespace", "default"), service) if service else None

    def _index_slice(self, obj: dict[str, Any]) -> None:
        service = self._slice_service(obj)
        if service is None:
            return
        try:
            spec = parse_endpoint_slice(obj)
        except ResourceError:  # validated on apply; one that no longer parses is skipped
            log.exception("EndpointSlice %s does not parse", obj.get("metadata", {}).get("name"))
            return
        self._slices.setdefault(service, {})[spec.name] = spec

    def _unindex_slice(self, obj: dict[str, Any]) -> None:
        service = self._slice_service(obj)
        if service is not None:
            self._slices.get(service, {}).pop(obj.get("metadata", {}).get("name", ""), None)

    def _slices_of(self, name: ServiceName) -> list[EndpointSliceSpec]:
        return list(self._slices.get(name, {}).values())

    def _pods_in(self, namespace: str) -> list[PodInfo]:
        """The namespace's pods with their addresses and node: this node's endpoint if it has one,
        else what the cluster view says; a pod neither knows has no address (no backend)."""
        pods = []
        for pod in self._resources.list("Pod", namespace):
            key = f"{namespace}/{pod['metadata']['name']}"
            local = self._pod_addresses.get(key)
            remote = self._remote_pods.get(key)
            if local is not None:
                pods.append(pod_info(pod, tuple(ipaddress.ip_address(a) for a in local if a), self._node))
            elif remote is not None:
                pods.append(pod_info(pod, remote.addresses, remote.node))
            else:
                pods.append(pod_info(pod, (), None))
        return pods

    def _selecting_pods(self, keys: Iterable[str]) -> set[ServiceName]:
        """The services whose selector picks one of these pods ("namespace/name", stored Pods)."""
        names: set[ServiceName] = set()
        for key in keys:
            namespace, _, pod_name = key.partition("/")
            pod = self._resources.get("Pod", namespace, pod_name)
            if pod is not None:
                names |= self._selecting(namespace, [pod.get("metadata", {}).get("labels") or {}])
        return names

    def _selecting(self, namespace: str, label_sets: list[dict[str, str]]) -> set[ServiceName]:
        names = set()
        for name, state in self._services.items():
            spec = state.spec
            if spec is None or spec.selector is None or name.namespace != namespace:
                continue
            if any(all(labels.get(k) == v for k, v in spec.selector.items()) for labels in label_sets):
                names.add(name)
        return names

    # ----- views -----------------------------------------------------------------------------------
    def describe_rev_nat(self, rev_nat_id: int) -> dict[str, Any] | None:
        """The frontend behind a rev-NAT id, for flows: service name, address, port."""
        with self._lock:
            for key, ident in self._rev_nat.items().items():
                if ident == rev_nat_id:
                    return rev_nat_row(key, self._owners.get(key))
        return None

    def services(self) -> list[dict[str, Any]]:
        with self._lock:
            return service_rows(self._services, self._errors, self._rev_nat.get, self._backend_ids.get)

    def maglev(self, name: ServiceName) -> list[dict[str, Any]]:
        """Each external frontend's Maglev table: entries per backend, and the table's head."""
        with self._lock:
            state = self._services.get(name)
            if state is None:
                raise LookupError(f"service {name} does not exist")
            return maglev_rows(state, self._rev_nat.get, self._backend_ids.get)

    # ----- affinity --------------------------------------------------------------------------------
    def gc_affinity(self, now: int | None = None) -> int:
        """Delete expired affinity entries (the datapath ignores them already; this frees the slots)."""
        with self._lock:
            lb = self._datapath.lb
            entries: Mapping[AffinityKey, AffinityEntry] = lb.affinity()
            timeouts = {self._rev_nat.get(f.key) or 0: f.affinity_timeout or 0
                        for s in self._services.values() for f in s.frontends if f.affinity_timeout}
            current = int(now if now is not None else time.monotonic())
            doomed = expired(entries, lambda k: k.rev_nat_id, timeouts, current, set(self._backend_users))
            return lb.delete_affinity(doomed)
