"""The service engine against in-memory maps: incremental updates touch only what changed, a
restart that finds the maps as it wants them writes nothing, ids are taken back from the maps, a
failed write heals at the resync, and local pods are read outside the engine's lock."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cilia.lb.kinds
from cilia.bpf import BpfError
from cilia.endpoint.record import EndpointRecord
from cilia.lb.affinity import AffinityKey
from cilia.lb.manager import ServiceManager
from cilia.lb.model import ServiceName
from cilia.maps import lb as lbm
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.resources.store import LocalStore
from cilia.testing.fakes import FakeMap

KINDS = KindRegistry([*CORE_KINDS, *cilia.lb.kinds.KINDS])


class FakeDatapath:
    def __init__(self) -> None:
        self.maps = {name: FakeMap() for name in lbm.NAMES}

    @property
    def lb(self) -> lbm.LbMaps:
        return lbm.LbMaps(self.maps, 251)  # type: ignore[arg-type]

    def writes(self) -> int:
        return sum(m.writes for m in self.maps.values())


class NoEndpoints:
    def records(self) -> list[EndpointRecord]:
        return []


def service(name: str, ip: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}], **spec}}


def endpoint_slice(name: str, addresses: list[str], terminating: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": [a], "conditions": ({"ready": False, "serving": True, "terminating": True}
                                                            if a in terminating else {})} for a in addresses]}


def manager(store: LocalStore, datapath: FakeDatapath, tmp_path: Path) -> ServiceManager:
    services = ServiceManager(resources=store, endpoints=NoEndpoints(), datapath=datapath, node="n1",
                              node_addresses=lambda: [ipaddress.ip_address("192.0.2.11")], state_dir=tmp_path,
                              maglev_size=251)
    services.load()
    services.sync_all()
    store.watch(services.on_resource_event)
    return services


@pytest.fixture
def setup(tmp_path: Path) -> tuple[LocalStore, FakeDatapath, ServiceManager]:
    store = LocalStore(tmp_path / "resources.db", KINDS)
    store.apply([service(f"s{i}", f"10.96.1.{i + 1}") for i in range(20)] +
                [endpoint_slice(f"s{i}", [f"10.1.{i}.{j + 1}" for j in range(10)]) for i in range(20)])
    datapath = FakeDatapath()
    return store, datapath, manager(store, datapath, tmp_path)


def test_replacing_one_backend_touches_three_entries(setup: tuple[LocalStore, FakeDatapath, ServiceManager]) -> None:
    store, datapath, _ = setup
    before = datapath.writes()
    addresses = [f"10.1.7.{j + 1}" for j in range(10)]
    addresses[3] = "10.1.7.99"
    store.apply([endpoint_slice("s7", addresses)])
    # the new backend's entry, the slot that held the old one, the old backend's entry removed
    assert datapath.writes() - before == 3


def test_terminating_backend_leaves_its_slot_but_keeps_its_entry(
        setup: tuple[LocalStore, FakeDatapath, ServiceManager]) -> None:
    store, datapath, services = setup
    addresses = [f"10.1.3.{j + 1}" for j in range(10)]
    before = datapath.writes()
    store.apply([endpoint_slice("s3", addresses, terminating=frozenset({"10.1.3.4"}))])
    # backend state, one slot refilled from the tail, the tail slot removed, the count: four writes
    assert datapath.writes() - before == 4
    row = next(r for r in services.services() if r["name"] == "s3")
    states = {b["address"]: b["state"] for b in row["frontends"][0]["backends"]}
    assert states["10.1.3.4:8080"] == "terminating" and list(states.values()).count("active") == 9
    table = {lbm.ServiceKey.unpack(k): lbm.ServiceValue.unpack(v) for k, v in
             datapath.maps[lbm.SERVICES_NAME].data.items()}
    master = next(v for k, v in table.items() if str(k.address) == "10.96.1.4" and k.slot == 0)
    assert master.count == 9
    backends = {lbm.BackendValue.unpack(v).address for v in datapath.maps[lbm.BACKENDS_NAME].data.values()}
    assert ipaddress.ip_address("10.1.3.4") in backends  # established connections still find it


def test_restart_finding_the_maps_as_wanted_writes_nothing(
        setup: tuple[LocalStore, FakeDatapath, ServiceManager], tmp_path: Path) -> None:
    _store, datapath, services = setup
    ids = {f["address"]: f["rev_nat_id"] for r in services.services() for f in r["frontends"]}
    before = datapath.writes()
    again = manager(LocalStore(tmp_path / "resources.db", KINDS), datapath, tmp_path)
    assert datapath.writes() == before and again.last_sync_operations == 0
    assert {f["address"]: f["rev_nat_id"] for r in again.services() for f in r["frontends"]} == ids


def test_restart_removes_what_no_service_wants_any_more(
        setup: tuple[LocalStore, FakeDatapath, ServiceManager], tmp_path: Path) -> None:
    store, datapath, _ = setup
    store.delete([service("s0", "10.96.1.1"), endpoint_slice("s0", [])])
    fresh = FakeDatapath()
    fresh.maps = {name: m for name, m in datapath.maps.items()}
    stale_key = lbm.ServiceKey(ipaddress.ip_address("10.96.9.9"), 80, 6).pack()
    fresh.maps[lbm.SERVICES_NAME].data[stale_key] = lbm.ServiceValue(count=0, rev_nat_id=999).pack()
    manager(store, fresh, tmp_path)
    assert stale_key not in fresh.maps[lbm.SERVICES_NAME].data
    addresses = {str(lbm.ServiceKey.unpack(k).address) for k in fresh.maps[lbm.SERVICES_NAME].data}
    assert "10.96.1.1" not in addresses and "10.96.1.2" in addresses


def test_frontend_claimed_twice_is_a_conflict_not_a_takeover(
        setup: tuple[LocalStore, FakeDatapath, ServiceManager]) -> None:
    store, _, services = setup
    store.apply([service("copycat", "10.96.1.1")])
    row = next(r for r in services.services() if r["name"] == "copycat")
    assert row["frontends"] == [] and "10.96.1.1:80 is already a frontend of service default/s0" in row["conflicts"][0]
    owner = next(r for r in services.services() if r["name"] == "s0")
    assert owner["frontends"][0]["address"] == "10.96.1.1:80"
    assert services.describe_rev_nat(owner["frontends"][0]["rev_nat_id"])["service"] == str(ServiceName("default",
                                                                                                          "s0"))


def test_frontend_passes_to_the_refused_service_when_its_owner_goes(
        setup: tuple[LocalStore, FakeDatapath, ServiceManager]) -> None:
    store, datapath, services = setup
    store.apply([service("copycat", "10.96.1.1"), endpoint_slice("copycat", ["10.9.9.9"])])
    assert next(r for r in services.services() if r["name"] == "copycat")["frontends"] == []
    store.delete([service("s0", "10.96.1.1")])
    row = next(r for r in services.services() if r["name"] == "copycat")
    assert row["conflicts"] == [] and row["frontends"][0]["address"] == "10.96.1.1:80"
    assert services.describe_rev_nat(row["frontends"][0]["rev_nat_id"])["service"] == str(ServiceName("default",
                                                                                                        "copycat"))
    backends = {str(lbm.BackendValue.unpack(v).address) for v in datapath.maps[lbm.BACKENDS_NAME].data.values()}
    assert "10.9.9.9" in backends and "10.1.0.1" not in backends  # s0's backends are gone, copycat's written


# --- the engine's own lock, a failed write, affinity GC ---------------------------------------------


@dataclass(frozen=True)
class LocalPod:
    """What the engine reads of an endpoint record (cilia.lb.manager.LocalEndpoint)."""

    pod_namespace: str
    pod_name: str
    ipv4: str | None
    ipv6: str | None = None


class LocalPods:
    """Endpoint records of local pods; `records()` fails if called while the engine's lock is held,
    since the endpoint manager calls the engine under its own lock (a lock-order inversion)."""

    def __init__(self) -> None:
        self.engine: ServiceManager | None = None
        self.list: list[LocalPod] = []

    def records(self) -> list[LocalPod]:
        assert self.engine is not None and not self.engine._lock._is_owned(), "called under the engine's lock"
        return list(self.list)


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}}


def test_local_pods_are_read_outside_the_engine_lock_and_followed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "resources.db", KINDS)
    pods = LocalPods()
    services = ServiceManager(resources=store, endpoints=pods, datapath=FakeDatapath(), node="n1",
                              node_addresses=lambda: [], state_dir=tmp_path, maglev_size=251)
    pods.engine = services
    services.load()
    services.sync_all()
    store.watch(services.on_resource_event)
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}), pod("web1", {"app": "web"})])
    assert services.services()[0]["frontends"][0]["backends"] == []  # no local endpoint yet: no address
    pods.list = [LocalPod("default", "web1", "10.1.0.7")]
    services.on_endpoints_changed()
    assert [b["address"] for b in services.services()[0]["frontends"][0]["backends"]] == ["10.1.0.7:8080"]
    store.apply([pod("web1", {"app": "web", "v": "2"})])  # a pod event uses the addresses last seen
    assert [b["address"] for b in services.services()[0]["frontends"][0]["backends"]] == ["10.1.0.7:8080"]
    pods.list = []
    services.on_endpoints_changed()
    assert services.services()[0]["frontends"][0]["backends"] == []


class FullMap(FakeMap):
    full = False

    def update(self, key: bytes, value: bytes) -> None:
        if self.full and key not in self.data:
            raise BpfError("map cilia_lb_backends_v1: update", 7)
        super().update(key, value)


def test_a_failed_write_is_shown_on_the_service_and_healed_by_the_resync(
        setup: tuple[LocalStore, FakeDatapath, ServiceManager]) -> None:
    store, datapath, services = setup
    backends = FullMap()
    backends.data = datapath.maps[lbm.BACKENDS_NAME].data
    datapath.maps[lbm.BACKENDS_NAME] = backends
    backends.full = True
    store.apply([endpoint_slice("s5", [f"10.1.5.{j + 1}" for j in range(10)] + ["10.1.5.99"])])
    row = next(r for r in services.services() if r["name"] == "s5")
    assert row["error"] == f"programming the datapath failed: {BpfError('map cilia_lb_backends_v1: update', 7)}"
    assert services.needs_resync
    backends.full = False
    services.sync_all()
    assert not services.needs_resync and services.last_sync_operations > 0
    assert next(r for r in services.services() if r["name"] == "s5")["error"] is None
    written = {str(lbm.BackendValue.unpack(v).address) for v in datapath.maps[lbm.BACKENDS_NAME].data.values()}
    assert "10.1.5.99" in written


def test_restart_removes_a_frontend_of_a_protocol_services_do_not_use(
        setup: tuple[LocalStore, FakeDatapath, ServiceManager], tmp_path: Path) -> None:
    store, datapath, _ = setup
    sctp = lbm.ServiceKey(ipaddress.ip_address("10.96.1.1"), 80, 132).pack()
    datapath.maps[lbm.SERVICES_NAME].data[sctp] = lbm.ServiceValue(count=0, rev_nat_id=60000).pack()
    again = manager(store, datapath, tmp_path)
    assert sctp not in datapath.maps[lbm.SERVICES_NAME].data and again.last_sync_operations == 1


def test_gc_affinity_deletes_expired_and_orphaned_entries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "resources.db", KINDS)
    store.apply([service("sticky", "10.96.7.1", sessionAffinity="ClientIP",
                         sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10}}),
                 endpoint_slice("sticky", ["10.1.7.1"])])
    datapath = FakeDatapath()
    services = manager(store, datapath, tmp_path)
    frontend = services.services()[0]["frontends"][0]
    rev_nat, backend = frontend["rev_nat_id"], frontend["backends"][0]["backend_id"]
    affinity = datapath.maps[lbm.AFFINITY_NAME].data
    entries = {AffinityKey(rev_nat, ipaddress.ip_address("10.0.9.1")): (backend, 95),  # fresh
               AffinityKey(rev_nat, 4242): (backend, 80),  # expired (socket path: a netns cookie)
               AffinityKey(rev_nat, ipaddress.ip_address("10.0.9.3")): (backend + 1, 99),  # backend gone
               AffinityKey(rev_nat + 1, ipaddress.ip_address("10.0.9.4")): (backend, 99)}  # no affinity there
    for key, (backend_id, last_used) in entries.items():
        affinity[lbm.pack_affinity_key(key)] = struct.pack("<II", backend_id, last_used)
    assert services.gc_affinity(now=100) == 3
    assert [lbm.unpack_affinity_key(k) for k in affinity] == [AffinityKey(rev_nat, ipaddress.ip_address("10.0.9.1"))]
