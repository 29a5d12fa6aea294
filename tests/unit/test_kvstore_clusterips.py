"""Cluster-wide ClusterIPs (cilia.kvstore.clusterips through EtcdStore on MemoryKv): a Service
without clusterIP gets one address, written into the stored object so every node reads it; kept on
re-apply, released on delete, never shared (also explicit ones), and several nodes applying at once
never collide; garbage under cilia/clusterips/ does not break allocation."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.kvstore.api import KeyValue
from cilia.kvstore.clusterips import PREFIX, decode_key, decode_owner, first_free, requested_ips
from cilia.kvstore.memory import MemoryKv
from cilia.kvstore.resources import EtcdStore
from cilia.lb import kinds as lb_kinds
from cilia.resources import ResourceError
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.testing.wait import wait_for

KINDS = KindRegistry([*CORE_KINDS, *lb_kinds.KINDS])
CIDRS = (ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00:96::/112"))


def service(name: str, namespace: str = "default", cluster_ip: str | None = None, port: int = 80,
            ) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": name}, "ports": [{"port": port, "protocol": "TCP"}]}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


class SlowReads(MemoryKv):
    """Reading the reservations takes a while: appliers on several nodes interleave between their
    read and their transaction, as over a network (without it threads mostly run one by one)."""

    def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        listed = super().list_prefix(prefix)
        if prefix == PREFIX:
            time.sleep(0.005)
        return listed


@pytest.fixture
def kv() -> Iterator[MemoryKv]:
    store = SlowReads()
    yield store
    store.close()


@pytest.fixture
def stores(kv: MemoryKv, tmp_path: Path) -> Iterator[list[EtcdStore]]:
    made = [EtcdStore(kv, node, tmp_path / f"{node}.db", KINDS, service_cidrs=CIDRS) for node in ("a", "b", "c")]
    for store in made:
        assert store.wait_synced(5)
    yield made
    for store in made:
        store.close()


def cluster_ip(store: EtcdStore, name: str, namespace: str = "default") -> str | None:
    obj = store.get("Service", namespace, name)
    return None if obj is None else obj["spec"].get("clusterIP")


def reservations(kv: MemoryKv) -> dict[str, str]:
    rows, _ = kv.list_prefix(PREFIX)
    return {row.key.removeprefix(PREFIX): decode_owner(row.value) or "?" for row in rows}


def test_the_address_is_allocated_once_and_every_node_reads_it(kv: MemoryKv, stores: list[EtcdStore]) -> None:
    a, b, c = stores
    a.apply([service("web")])
    assert cluster_ip(a, "web") == "10.96.0.2"  # .1 is the kubernetes service's
    stored = a.get("Service", "default", "web")
    assert stored is not None and stored["spec"]["clusterIPs"] == ["10.96.0.2"]
    assert wait_for(lambda: cluster_ip(b, "web") == cluster_ip(c, "web") == "10.96.0.2", 5)
    assert reservations(kv) == {"10.96.0.2": "default/web"}
    # applied again without clusterIP, on another node: unchanged, the same address
    assert [o.action for o in b.apply([service("web")])] == ["unchanged"]
    # changed otherwise: the address is kept
    assert [o.action for o in c.apply([service("web", port=8080)])] == ["configured"]
    assert cluster_ip(c, "web") == "10.96.0.2" and reservations(kv) == {"10.96.0.2": "default/web"}


def test_no_two_services_share_an_address_and_delete_releases_it(kv: MemoryKv, stores: list[EtcdStore]) -> None:
    a, b, _ = stores
    a.apply([service("one"), service("two"), service("fixed", cluster_ip="10.96.0.4")])
    b.apply([service("three", "default")])
    got = {name: cluster_ip(b, name) for name in ("one", "two", "three", "fixed")}
    assert got == {"one": "10.96.0.2", "two": "10.96.0.3", "fixed": "10.96.0.4", "three": "10.96.0.5"}
    with pytest.raises(ResourceError, match=r"10\.96\.0\.3: provided IP is already allocated \(to Service "
                                            r"default/two\)"):
        b.apply([service("copy", cluster_ip="10.96.0.3")])
    assert b.get("Service", "default", "copy") is None
    a.delete([service("two")])
    assert "10.96.0.3" not in reservations(kv)
    b.apply([service("four")])  # the lowest free address again: the released one
    assert cluster_ip(b, "four") == "10.96.0.3"
    # an explicit address replaced by another: the old one is released
    a.apply([service("fixed", cluster_ip="10.96.0.40")])
    assert reservations(kv).get("10.96.0.40") == "default/fixed" and "10.96.0.4" not in reservations(kv)
    # headless now: released too
    a.apply([service("one", cluster_ip="None")])
    assert "10.96.0.2" not in reservations(kv)


def test_two_services_in_one_batch_asking_for_one_address(stores: list[EtcdStore]) -> None:
    a = stores[0]
    with pytest.raises(ResourceError, match="already allocated"):
        a.apply([service("x", cluster_ip="10.96.0.9"), service("y", cluster_ip="10.96.0.9")])
    assert a.get("Service", "default", "x") is None  # the batch wrote nothing


def test_concurrent_applies_on_three_nodes_never_collide(kv: MemoryKv, stores: list[EtcdStore]) -> None:
    per_node = 15
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def run(store: EtcdStore) -> None:
        try:
            start.wait(5)
            for i in range(per_node):
                store.apply([service(f"{store.node}-{i}")])
                store.apply([service("shared")])  # the same Service from every node: one address
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    names = [f"{s.node}-{i}" for s in stores for i in range(per_node)] + ["shared"]
    assert wait_for(lambda: all(cluster_ip(s, n) is not None for s in stores for n in names), 5)
    views = [{n: cluster_ip(s, n) for n in names} for s in stores]
    assert views[0] == views[1] == views[2]
    addresses = list(views[0].values())
    assert len(set(addresses)) == len(names)  # no address shared
    assert reservations(kv) == {ip: f"default/{name}" for name, ip in views[0].items() if ip is not None}


def test_garbage_reservations_are_skipped_or_taken_over(kv: MemoryKv, stores: list[EtcdStore]) -> None:
    a = stores[0]
    kv.put(f"{PREFIX}not-an-ip", b"{}")
    kv.put(f"{PREFIX}10.96.0.2", b"garbage")  # counts as taken for allocation
    kv.put(f"{PREFIX}10.96.0.3", json.dumps({"service": "default/gone"}).encode())  # a Service that is gone
    a.apply([service("web")])
    assert cluster_ip(a, "web") == "10.96.0.4"
    a.apply([service("mine", cluster_ip="10.96.0.3")])  # its owner does not hold it: taken over
    assert reservations(kv)["10.96.0.3"] == "default/mine"


def test_without_ranges_services_are_stored_as_given(kv: MemoryKv, tmp_path: Path) -> None:
    store = EtcdStore(kv, "plain", tmp_path / "plain.db", KINDS)
    try:
        store.apply([service("web")])
        assert cluster_ip(store, "web") is None and reservations(kv) == {}
    finally:
        store.close()


def test_pure_parts() -> None:
    network = ipaddress.ip_network("10.96.0.0/30")
    assert first_free(network, []) == ipaddress.ip_address("10.96.0.2")
    assert first_free(network, [ipaddress.ip_address("10.96.0.2")]) is None  # .3 is the broadcast
    assert first_free(ipaddress.ip_network("fd00::/126"), []) == ipaddress.ip_address("fd00::2")
    assert decode_key(f"{PREFIX}10.96.0.7") == ipaddress.ip_address("10.96.0.7")
    assert decode_key(f"{PREFIX}010.96.0.7") is None and decode_key(f"{PREFIX}fd00:0::1") is None
    assert decode_owner(b'{"service": "a/b"}') == "a/b"
    assert decode_owner(b"[]") is None and decode_owner(b'{"service": 5}') is None and decode_owner(b"\xff") is None
    assert requested_ips(service("h", cluster_ip="None")) is None
    assert requested_ips(service("h", cluster_ip="")) == []
    assert requested_ips(service("h", cluster_ip="10.0.0.1")) == [ipaddress.ip_address("10.0.0.1")]
