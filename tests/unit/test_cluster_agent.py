"""The agent's cluster part without etcd: the node views (local kvstore), GET /v1/nodes, the
identity guard turning "etcd needed and away" into a clear 503, the flags, the CLI's age."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from cilia.agent.api import nodes as nodes_api
from cilia.agent.api.app import create_app
from cilia.agent.cluster import KvGuardedIdentities, LocalCluster, local_record, node_view
from cilia.agent.config import parse_config
from cilia.api.errors import CNI_TRY_AGAIN_LATER, ApiError
from cilia.cli.node_cmds import format_age
from cilia.cluster.model import RoutingMode
from cilia.identity.allocator import Identity
from cilia.identity.labels import LabelSet
from cilia.kvstore.api import KvError

ip = ipaddress.ip_address
BASE = ["--node", "n1", "--ipv4-pod-cidr", "10.200.1.0/24", "--ipv6-pod-cidr", "fd00:200:1::/64"]


def test_local_record_takes_the_first_global_address_of_each_family() -> None:
    config = parse_config([*BASE, "--routing-mode", "tunnel"])
    record = local_record(config, [ip("fe80::1"), ip("127.0.0.1"), ip("192.0.2.11"), ip("192.0.2.99"),
                                   ip("fd00:c1a::b")], 100.0)
    assert (record.ipv4, record.ipv6) == (ip("192.0.2.11"), ip("fd00:c1a::b"))
    assert record.routing_mode is RoutingMode.TUNNEL and record.updated == 100.0
    assert [str(c) for c in record.pod_cidrs] == ["10.200.1.0/24", "fd00:200:1::/64"]
    view = node_view(record, True, 160.5)
    assert view.age_seconds == 60.5 and view.local and view.ipv4 == "192.0.2.11"


def test_nodes_router_with_the_local_kvstore() -> None:
    local = LocalCluster(parse_config(BASE), lambda: [ip("192.0.2.11")])
    with TestClient(create_app([nodes_api.make_router(local)])) as api:
        nodes = api.get("/v1/nodes").json()
    assert [(n["name"], n["local"], n["ipv4"], n["health"]) for n in nodes] == [("n1", True, "192.0.2.11", "ok")]
    assert local.kvstore_status().backend == "local" and local.kvstore_status().reachable


class FakeAllocator:
    def __init__(self, fail: Exception | None) -> None:
        self.fail = fail
        self.listeners: list[Callable[[Identity, bool], None]] = []

    def allocate(self, labels: LabelSet) -> Identity:
        if self.fail is not None:
            raise self.fail
        return Identity(1000, labels, False, 1)

    def release(self, labels: LabelSet) -> bool:
        return True

    def lookup_by_id(self, identity_id: int) -> Identity | None:
        return None

    def all(self) -> list[Identity]:
        return []

    def subscribe(self, listener: Callable[[Identity, bool], None]) -> None:
        self.listeners.append(listener)

    def forget_unreferenced(self) -> int:
        return 3


def test_identity_guard_makes_an_unreachable_kvstore_a_clear_503() -> None:
    labels = LabelSet.parse_many(["k8s:app=web"])
    assert KvGuardedIdentities(FakeAllocator(None)).allocate(labels).id == 1000
    with pytest.raises(ApiError) as info:
        KvGuardedIdentities(FakeAllocator(KvError("etcd: every member failed"))).allocate(labels)
    assert info.value.status == 503 and info.value.code == CNI_TRY_AGAIN_LATER
    assert info.value.message.startswith("kvstore unreachable") and "k8s:app=web" in info.value.message
    assert "every member failed" in info.value.details
    with pytest.raises(ValueError):  # anything else passes through unchanged
        KvGuardedIdentities(FakeAllocator(ValueError("bad"))).allocate(labels)
    inner = FakeAllocator(None)
    guard = KvGuardedIdentities(inner)
    guard.subscribe(lambda _i, _a: None)
    assert inner.listeners and guard.forget_unreferenced() == 3 and guard.release(labels)


def test_kvstore_endpoint_flags() -> None:
    config = parse_config([*BASE, "--kvstore", "etcd", "--kvstore-endpoints",
                           "http://192.0.2.201:2379,unix:/run/cilia/etcd/m0/etcd.sock:23790"])
    assert config.kvstore_endpoints == ("http://192.0.2.201:2379", "unix:/run/cilia/etcd/m0/etcd.sock:23790")
    for bad in ("unix:/run/etcd.sock", "192.0.2.1", "ftp://x:1"):
        with pytest.raises(SystemExit):
            parse_config([*BASE, "--kvstore", "etcd", "--kvstore-endpoints", bad])


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (60, "1m"), (7200, "2h"), (86400 * 3, "3d"),
                                               (-5, "0s")])
def test_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text
