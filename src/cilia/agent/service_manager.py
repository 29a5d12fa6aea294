"""Services: Service / EndpointSlice / Pod objects and local endpoints -> the LB maps, incrementally.

On any change only the services it touches are recomputed (cilia.lb.state) and only the map
entries that differ are written, in an order that never exposes a dangling id (cilia.maps.lb).
Ids (rev-NAT per frontend, one per backend address:port:protocol) are taken back from the maps
themselves at start, so a restarted agent that computes the same state writes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cilia.bpf import BpfError
from cilia.endpoint.record import EndpointRecord
from cilia.jsonfile import read_json, write_json
from cilia.lb.affinity import AffinityEntry, expired
from cilia.lb.ids import IdAllocator
from cilia.lb.k8s import parse_endpoint_slice, parse_service
from cilia.lb.maglev import MaglevBackend, build_table
from cilia.lb.model import (
    Backend,
    BackendState,
    EndpointSliceSpec,
    FrontendKey,
    IPAddress,
    L4Protocol,
    LbFrontend,
    ServiceName,
    ServiceSpec,
)
from cilia.lb.state import PodInfo, frontends_for
from cilia.maps import lb as lbm
from cilia.resources import ResourceError

log = logging.getLogger(__name__)
Entries = dict[bytes, bytes]
PER_SERVICE_MAPS = (lbm.SERVICES_NAME, lbm.REVNAT_NAME, lbm.MAGLEV_NAME)
BackendKey = tuple[IPAddress, int, int]  # address, port, IP protocol number


class LbDatapath(Protocol):
    @property
    def lb(self) -> lbm.LbMaps: ...


class ResourceReader(Protocol):
    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]: ...

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...


class EndpointSource(Protocol):
    def records(self) -> list[EndpointRecord]: ...


@dataclass
class ServiceState:
    """What one service contributes to the maps, as last written."""

    spec: ServiceSpec | None
    cluster_ips: tuple[IPAddress, ...] = ()
    frontends: list[LbFrontend] = field(default_factory=list)
    entries: dict[str, Entries] = field(default_factory=dict)
    backend_ids: set[int] = field(default_factory=set)
    conflicts: list[str] = field(default_factory=list)
    conflicted: set[FrontendKey] = field(default_factory=set)  # frontends another service owns


class ClusterIpAllocator:
    """ClusterIPs for Services that name none (the apiserver's job in a real cluster), persisted."""

    def __init__(self, cidrs: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network], state_file: Path) -> None:
        self._cidrs = list(cidrs)
        self._state_file = state_file
        raw: dict[str, str] = read_json(state_file, {})
        self._given = {name: ipaddress.ip_address(ip) for name, ip in raw.items()}

    def get(self, service: ServiceName, taken: set[IPAddress]) -> IPAddress | None:
        key = str(service)
        if key in self._given:
            return self._given[key]
        used = taken | set(self._given.values())
        for cidr in self._cidrs[:1]:  # single stack by default, the first family configured
            for offset, host in enumerate(cidr.hosts()):
                address = ipaddress.ip_address(str(host))
                if offset == 0:
                    continue  # .1 is kept for the `kubernetes` service, as the apiserver does
                if address not in used:
                    self._given[key] = address
                    write_json(self._state_file, {k: str(v) for k, v in self._given.items()})
                    return address
                if offset > 1 << 20:
                    break
        return None

    def release(self, service: ServiceName) -> None:
        if self._given.pop(str(service), None) is not None:
            write_json(self._state_file, {k: str(v) for k, v in self._given.items()})


def _pod_info(pod: dict[str, Any], record: EndpointRecord | None, node: str) -> PodInfo:
    metadata = pod.get("metadata", {})
    addresses = tuple(ipaddress.ip_address(a) for a in ((record.ipv4, record.ipv6) if record else ()) if a)
    named: dict[tuple[str, L4Protocol], int] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") and port.get("protocol", "TCP") in ("TCP", "UDP"):
                named[(port["name"], L4Protocol(port.get("protocol", "TCP")))] = int(port["containerPort"])
    conditions = ((pod.get("status") or {}).get("conditions")) or []
    ready = not any(c.get("type") == "Ready" and c.get("status") == "False" for c in conditions)
    return PodInfo(namespace=metadata.get("namespace", "default"), name=metadata["name"],
                   labels=dict(metadata.get("labels") or {}), addresses=addresses, node=node, ready=ready,
                   terminating=bool(metadata.get("deletionTimestamp")), named_ports=named)


class ServiceManager:
    def __init__(self, *, resources: ResourceReader, endpoints: EndpointSource, datapath: LbDatapath, node: str,
                 node_addresses: Callable[[], list[IPAddress]], state_dir: Path, lock: threading.RLock,
                 maglev_size: int, maglev_seed: int = 0,
                 service_cidrs: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        self._resources = resources
        self._endpoints = endpoints
        self._datapath = datapath
        self._node = node
        self._node_addresses = node_addresses
        self._lock = lock
        self._maglev_size = maglev_size
        self._maglev_seed = maglev_seed
        self._cluster_ips = ClusterIpAllocator(service_cidrs, state_dir / "cluster-ips.json")
        self._rev_nat = IdAllocator[FrontendKey]("rev-NAT ids", 1, 65535)
        self._backend_ids = IdAllocator[BackendKey]("backend ids", 1, (1 << 32) - 1)
        self._services: dict[ServiceName, ServiceState] = {}
        self._owners: dict[FrontendKey, ServiceName] = {}
        self._backend_users: dict[int, set[ServiceName]] = {}
        self._backend_values: dict[int, bytes] = {}  # desired value of every allocated backend id
        self._backend_written: dict[int, bytes] = {}  # what the backends map holds
        self._overrides: dict[tuple[ServiceName, IPAddress, int], BackendState] = {}
        self._pod_addresses: dict[str, tuple[str | None, str | None]] = {}
        self._addresses: list[IPAddress] = []
        self._snapshot: dict[str, Entries] | None = None
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
            lb = self._datapath.lb
            snapshot = lb.snapshot()
            masters: dict[FrontendKey, int] = {}
            for raw_key, raw_value in snapshot[lbm.SERVICES_NAME].items():
                key = lbm.ServiceKey.unpack(raw_key)
                if key.slot == 0:
                    protocol = L4Protocol.TCP if key.protocol == 6 else L4Protocol.UDP
                    master = lbm.ServiceValue.unpack(raw_value)
                    masters[FrontendKey(key.address, key.port, protocol)] = master.rev_nat_id
            self._rev_nat.restore(masters)
            backends: dict[BackendKey, int] = {}
            for raw_key, raw_value in snapshot[lbm.BACKENDS_NAME].items():
                value = lbm.BackendValue.unpack(raw_value)
                backends[(value.address, value.port, value.protocol)] = lbm.unpack_id(raw_key)
            self._backend_ids.restore(backends)
            self._backend_values = {lbm.unpack_id(k): v for k, v in snapshot[lbm.BACKENDS_NAME].items()}
            self._snapshot = snapshot

    def sync_all(self) -> None:
        """Compute every service and make the maps hold exactly that (start-up, and after a failed write)."""
        with self._lock:
            started = time.monotonic()
            self.needs_resync = False
            self._services.clear()
            self._owners.clear()
            self._backend_users.clear()
            self._addresses = self._node_addresses()
            self._pod_addresses = self._current_pod_addresses()
            self._slices.clear()
            for obj in self._resources.list("EndpointSlice"):
                self._index_slice(obj)
            names = {self._name(obj) for obj in self._resources.list("Service")}
            desired: dict[str, Entries] = {name: {} for name in (*PER_SERVICE_MAPS, lbm.BACKENDS_NAME)}
            for name in sorted(names):
                state = self._compute(name)
                self._services[name] = state
                for map_name, entries in state.entries.items():
                    desired[map_name].update(entries)
                for backend_id in state.backend_ids:
                    self._backend_users.setdefault(backend_id, set()).add(name)
            for backend_id in self._backend_users:
                desired[lbm.BACKENDS_NAME][lbm.pack_id(backend_id)] = self._backend_values[backend_id]
            current = self._snapshot if self._snapshot is not None else self._datapath.lb.snapshot()
            upserts = {m: {k: v for k, v in desired[m].items() if current[m].get(k) != v} for m in desired}
            deletes = {m: [k for k in current[m] if k not in desired[m]] for m in desired}
            try:
                operations = self._datapath.lb.apply(upserts, deletes)
            except BpfError as exc:  # the agent still starts; `cilia service list` and the log say why
                log.error("services: programming the datapath failed, retried at the next GC: %s", exc)
                self._errors[ServiceName("", "*")] = str(exc)
                self.needs_resync = True
                operations = 0
            self._forget_unused_ids()
            self._backend_written = {i: self._backend_values[i] for i in self._backend_users}
            self._snapshot = None
            self.last_sync_seconds = time.monotonic() - started
            self.last_sync_operations = operations
            log.info("services synced: %d services, %d map operations in %.3f s", len(names), operations,
                     self.last_sync_seconds)

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
        with self._lock:
            now = self._current_pod_addresses()
            changed = {k for k in now.keys() | self._pod_addresses.keys() if now.get(k) != self._pod_addresses.get(k)}
            self._pod_addresses = now
            names: set[ServiceName] = set()
            for key in changed:
                namespace, _, pod_name = key.partition("/")
                pod = self._resources.get("Pod", namespace, pod_name)
                if pod is not None:
                    names |= self._selecting(namespace, [pod.get("metadata", {}).get("labels") or {}])
            if names:
                self.update(names)

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
        return operations

    def _update_one(self, name: ServiceName) -> tuple[int, set[FrontendKey]]:
        """Returns map operations done and the frontends this service gave up that no one owns now."""
        old = self._services.get(name, ServiceState(None))
        for frontend in old.frontends:
            self._owners.pop(frontend.key, None)
        new = self._compute(name, old)
        upserts: dict[str, Entries] = {}
        deletes: dict[str, list[bytes]] = {}
        for map_name in PER_SERVICE_MAPS:
            before, after = old.entries.get(map_name, {}), new.entries.get(map_name, {})
            upserts[map_name] = {k: v for k, v in after.items() if before.get(k) != v}
            deletes[map_name] = [k for k in before if k not in after]
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
        upserts[lbm.BACKENDS_NAME] = {lbm.pack_id(i): self._backend_values[i] for i in new.backend_ids
                                      if self._backend_written.get(i) != self._backend_values[i]}
        deletes[lbm.BACKENDS_NAME] = [lbm.pack_id(i) for i in freed]
        try:
            operations = self._datapath.lb.apply(upserts, deletes)
            self._errors.pop(name, None)
        except BpfError as exc:
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
            value = self._backend_values.pop(backend_id)
            backend = lbm.BackendValue.unpack(value)
            self._backend_ids.release((backend.address, backend.port, backend.protocol))
        if new.spec is None:
            self._services.pop(name, None)
            self._cluster_ips.release(name)
        else:
            self._services[name] = new
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
                state.conflicts.append(f"{_frontend_text(frontend.key)} is already a frontend of service {owner}")
                state.conflicted.add(frontend.key)
                continue
            frontend = self._with_overrides(frontend)
            self._owners[frontend.key] = name
            state.frontends.append(frontend)
        if state.conflicts:
            log.error("service %s: %s", name, "; ".join(state.conflicts))
        previous = old.entries.get(lbm.SERVICES_NAME, {}) if old else {}
        for frontend in state.frontends:
            self._pack(frontend, state, previous)
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
        key: BackendKey = (backend.address, backend.port, protocol)
        backend_id = self._backend_ids.allocate(key)
        value = lbm.BackendValue(backend.address, backend.port, protocol, lbm.BACKEND_STATES[backend.state.value])
        self._backend_values[backend_id] = value.pack()
        return backend_id

    def _previous_slots(self, key: lbm.ServiceKey, previous: Entries) -> list[int]:
        source = previous if previous else (self._snapshot or {}).get(lbm.SERVICES_NAME, {})
        master = source.get(key.pack())
        if master is None:
            return []
        count = lbm.ServiceValue.unpack(master).count
        slots = []
        for slot in range(1, count + 1):
            raw = source.get(lbm.ServiceKey(key.address, key.port, key.protocol, slot).pack())
            slots.append(lbm.ServiceValue.unpack(raw).backend_id if raw else 0)
        return slots

    def _pack(self, frontend: LbFrontend, state: ServiceState, previous: Entries) -> None:
        protocol = frontend.key.protocol.number
        rev_nat_id = self._rev_nat.allocate(frontend.key)
        ids = {b: self._backend_id(b, protocol) for b in frontend.backends}
        state.backend_ids.update(ids.values())
        active = [ids[b] for b in frontend.backends if b.state.selectable]
        master_key = lbm.ServiceKey(frontend.key.address, frontend.key.port, protocol)
        slots = stable_slots(self._previous_slots(master_key, previous), active)
        flags = (lbm.SVC_F_EXTERNAL if frontend.type.external else 0) | \
            (lbm.SVC_F_AFFINITY if frontend.affinity_timeout else 0)
        entries = state.entries.setdefault(lbm.SERVICES_NAME, {})
        maglev = state.entries.setdefault(lbm.MAGLEV_NAME, {})
        if frontend.type.external and active:
            table = build_table([MaglevBackend(ids[b], f"{b.address}:{b.port}", b.weight)
                                 for b in frontend.backends if b.state.selectable], self._maglev_size,
                                self._maglev_seed)
            maglev[lbm.pack_id(rev_nat_id)] = lbm.pack_maglev(table, self._maglev_size)
            flags |= lbm.SVC_F_MAGLEV
        entries[master_key.pack()] = lbm.ServiceValue(
            count=len(slots), rev_nat_id=rev_nat_id, flags=flags,
            affinity_timeout=frontend.affinity_timeout or 0).pack()
        for slot, backend_id in enumerate(slots, start=1):
            key = lbm.ServiceKey(frontend.key.address, frontend.key.port, protocol, slot)
            entries[key.pack()] = lbm.ServiceValue(backend_id=backend_id).pack()
        state.entries.setdefault(lbm.REVNAT_NAME, {})[lbm.pack_id(rev_nat_id)] = lbm.RevNatValue(
            frontend.key.address, frontend.key.port).pack()

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
        records = {(r.pod_namespace, r.pod_name): r for r in self._endpoints.records()}
        return [_pod_info(pod, records.get((namespace, pod["metadata"]["name"])), self._node)
                for pod in self._resources.list("Pod", namespace)]

    def _selecting(self, namespace: str, label_sets: list[dict[str, str]]) -> set[ServiceName]:
        names = set()
        for name, state in self._services.items():
            spec = state.spec
            if spec is None or spec.selector is None or name.namespace != namespace:
                continue
            if any(all(labels.get(k) == v for k, v in spec.selector.items()) for labels in label_sets):
                names.add(name)
        return names

    def _current_pod_addresses(self) -> dict[str, tuple[str | None, str | None]]:
        return {f"{r.pod_namespace}/{r.pod_name}": (r.ipv4, r.ipv6) for r in self._endpoints.records()}

    # ----- views -----------------------------------------------------------------------------------
    def describe_rev_nat(self, rev_nat_id: int) -> dict[str, Any] | None:
        """The frontend behind a rev-NAT id, for flows: service name, address, port."""
        with self._lock:
            for key, ident in self._rev_nat.items().items():
                if ident == rev_nat_id:
                    owner = self._owners.get(key)
                    return {"service": str(owner) if owner else None, "namespace": owner.namespace if owner else "",
                            "name": owner.name if owner else "", "address": str(key.address), "port": key.port,
                            "protocol": key.protocol.value, "frontend": _frontend_text(key)}
        return None

    def services(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = []
            for name, state in sorted(self._services.items()):
                if state.spec is None:
                    continue
                rows.append({
                    "namespace": name.namespace, "name": name.name, "type": state.spec.type.value,
                    "cluster_ips": [str(ip) for ip in state.cluster_ips],
                    "session_affinity": f"ClientIP ({state.spec.affinity_timeout} s)"
                    if state.spec.affinity_timeout else "None",
                    "conflicts": state.conflicts,
                    "error": self._errors.get(name),
                    "frontends": [{
                        "address": _frontend_text(f.key), "protocol": f.key.protocol.value, "type": f.type.value,
                        "port_name": f.port_name, "rev_nat_id": self._rev_nat.get(f.key),
                        "local_only": f.local_only,
                        "backends": [{"address": _frontend_text(FrontendKey(b.address, b.port, f.key.protocol)),
                                      "state": b.state.value, "weight": b.weight, "pod": b.pod, "node": b.node,
                                      "backend_id": self._backend_ids.get((b.address, b.port, f.key.protocol.number))}
                                     for b in f.backends],
                    } for f in state.frontends],
                })
            return rows

    def maglev(self, name: ServiceName) -> list[dict[str, Any]]:
        """Each external frontend's Maglev table: entries per backend, and the table's head."""
        with self._lock:
            state = self._services.get(name)
            if state is None:
                raise LookupError(f"service {name} does not exist")
            rows = []
            for frontend in state.frontends:
                rev_nat_id = self._rev_nat.get(frontend.key)
                raw = state.entries.get(lbm.MAGLEV_NAME, {}).get(lbm.pack_id(rev_nat_id or 0))
                if raw is None:
                    continue
                table = lbm.unpack_maglev(raw)
                by_id = {self._backend_ids.get((b.address, b.port, frontend.key.protocol.number)):
                         _frontend_text(FrontendKey(b.address, b.port, frontend.key.protocol))
                         for b in frontend.backends}
                counts: dict[str, int] = {}
                for backend_id in table:
                    label = by_id.get(backend_id, str(backend_id))
                    counts[label] = counts.get(label, 0) + 1
                rows.append({"frontend": _frontend_text(frontend.key), "type": frontend.type.value,
                             "rev_nat_id": rev_nat_id, "size": len(table), "entries_per_backend": counts,
                             "head": [by_id.get(i, str(i)) for i in table[:16]]})
            return rows

    def gc_affinity(self, now: int | None = None) -> int:
        """Delete expired affinity entries (the datapath ignores them already; this frees the slots)."""
        with self._lock:
            lb = self._datapath.lb
            raw = lb.affinity_entries()
            entries = {k: AffinityEntry(v[0], v[1]) for k, v in raw.items()}
            timeouts = {self._rev_nat.get(f.key) or 0: f.affinity_timeout or 0
                        for s in self._services.values() for f in s.frontends if f.affinity_timeout}
            current = int(now if now is not None else time.monotonic())
            doomed = expired(entries, lambda k: lbm.AffinityKey.unpack(k).rev_nat_id, timeouts, current,
                             set(self._backend_users))
            return lb.delete_affinity(doomed)


def stable_slots(previous: list[int], active: list[int]) -> list[int]:
    """Slot order for a service's active backends that moves as few slots as possible: kept
    backends stay where they were, newcomers fill holes, and the tail fills what is left."""
    wanted = set(active)
    slots: list[int | None] = [b if b in wanted else None for b in previous]
    newcomers = [b for b in sorted(wanted) if b not in set(previous)]
    for index, value in enumerate(slots):
        if value is None and newcomers:
            slots[index] = newcomers.pop(0)
    slots.extend(newcomers)
    while None in slots:
        hole = slots.index(None)
        last = slots.pop()
        if last is not None and hole < len(slots):
            slots[hole] = last
    return [b for b in slots if b is not None]


def _frontend_text(key: FrontendKey) -> str:
    return f"[{key.address}]:{key.port}" if key.address.version == 6 else f"{key.address}:{key.port}"

