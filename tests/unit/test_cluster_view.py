"""The cluster view: built from node and ipcache records (pure), and kept by each node's runtime
on a shared MemoryKv: remote endpoints appear with their identity, vanish with their node's
lease, garbage is skipped, and an outage is made good when the store is back."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cilia.cluster import codec
from cilia.cluster.controller import build_view
from cilia.cluster.model import ClusterView, IpcacheRecord, NodeRecord, RemoteEndpoint, RemoteEndpoints, RoutingMode
from cilia.cluster.runtime import ClusterRuntime
from cilia.endpoint.record import EndpointRecord
from cilia.kvstore.memory import ManualClock, MemoryKv
from cilia.kvstore.session import NodeSession
from cilia.testing.wait import wait_for

ip = ipaddress.ip_address
net = ipaddress.ip_network
TTL = 10


def node(name: str, last: int, mode: RoutingMode = RoutingMode.NATIVE) -> NodeRecord:
    return NodeRecord(name, ipaddress.IPv4Address(f"192.0.2.{last}"), ipaddress.IPv6Address(f"2001:db8::{last}"),
                      (net(f"10.200.{last}.0/24"), net(f"fd00:200:0:{last}::/64")), mode)


def test_build_view_keeps_remote_endpoints_of_registered_nodes() -> None:
    nodes = [node("a", 1), node("b", 2)]
    entries = [
        IpcacheRecord(ip("10.200.2.5"), 1000, "b", ipaddress.IPv4Address("192.0.2.2")),
        IpcacheRecord(ip("fd00:200:0:2::5"), 1000, "b", ipaddress.IPv4Address("192.0.2.2")),
        IpcacheRecord(ip("10.200.1.5"), 1001, "a", ipaddress.IPv4Address("192.0.2.1")),  # local node's own
        IpcacheRecord(ip("10.200.9.5"), 1002, "gone", ipaddress.IPv4Address("192.0.2.9")),  # no node record
        IpcacheRecord(ip("10.200.1.6"), 1003, "b", ipaddress.IPv4Address("192.0.2.2")),  # an IP we host
    ]
    view = build_view("a", RoutingMode.NATIVE, nodes, entries, [ip("10.200.1.6")])
    assert view.nodes == (nodes[1],)
    assert view.remote_endpoints == {net("10.200.2.5/32"): RemoteEndpoint(1000, None),
                                     net("fd00:200:0:2::5/128"): RemoteEndpoint(1000, None)}
    tunnel = build_view("a", RoutingMode.TUNNEL, nodes, entries)
    b_underlay = ipaddress.IPv4Address("192.0.2.2")
    assert tunnel.remote_endpoints[net("fd00:200:0:2::5/128")] == RemoteEndpoint(1000, b_underlay)
    assert build_view("a", RoutingMode.NATIVE, nodes, entries) == build_view("a", RoutingMode.NATIVE,
                                                                               nodes[::-1], entries[::-1])


def test_remote_endpoints_read_as_a_mapping_of_host_networks() -> None:
    a, b = RemoteEndpoint(1000, None), RemoteEndpoint(1001, ipaddress.IPv4Address("192.0.2.2"))
    v4, v6 = ip("10.200.2.5"), ip("fd00:200:0:2::5")
    # an IPv6 address whose int equals an IPv4 one's must not collide with it
    low6 = ipaddress.IPv6Address(int(v4))
    endpoints = RemoteEndpoints([(v4, a), (v6, b), (low6, b)])
    assert len(endpoints) == 3
    assert endpoints[net("10.200.2.5/32")] == a and endpoints[net("fd00:200:0:2::5/128")] == b
    assert endpoints[ipaddress.IPv6Network((int(v4), 128))] == b
    assert list(endpoints) == [net("10.200.2.5/32"), net("fd00:200:0:2::5/128"), ipaddress.IPv6Network((int(v4), 128))]
    assert net("10.200.2.0/24") not in endpoints and net("10.200.2.6/32") not in endpoints
    assert "10.200.2.5/32" not in endpoints
    assert dict(endpoints) == {net("10.200.2.5/32"): a, net("fd00:200:0:2::5/128"): b,
                               ipaddress.IPv6Network((int(v4), 128)): b}
    assert endpoints == dict(endpoints) and endpoints == RemoteEndpoints([(low6, b), (v6, b), (v4, a)])
    assert endpoints != RemoteEndpoints([(v4, a)]) and endpoints != RemoteEndpoints([(v4, b), (v6, b), (low6, b)])
    assert list(endpoints.host_items()) == [(v4, a), (v6, b), (low6, b)]


class FakeDatapath:
    def __init__(self) -> None:
        self.views: list[ClusterView] = []
        self.fail = False
        self._lock = threading.Lock()

    def sync_cluster(self, view: ClusterView) -> None:
        if self.fail:
            raise RuntimeError("map full")
        with self._lock:
            self.views.append(view)

    @property
    def last(self) -> ClusterView | None:
        with self._lock:
            return self.views[-1] if self.views else None


def endpoint(eid: int, v4: str, identity: int, name: str) -> EndpointRecord:
    return EndpointRecord(id=eid, container_id=f"c{eid}", ifname="eth0", netns="/run/netns/x", host_ifname="lxc",
                          host_ifindex=1, mac="", host_mac="", ipv4=v4, ipv6=None, gateway_ipv4=None,
                          gateway_ipv6=None, pod_namespace="default", pod_name=name, identity=identity,
                          identity_labels=[], created_at=0.0)


class Node:
    def __init__(self, kv: MemoryKv, record: NodeRecord) -> None:
        self.endpoints: list[EndpointRecord] = []
        self.datapath = FakeDatapath()
        self.identity_calls = 0
        self.session = NodeSession(kv, record.name, TTL)
        self.runtime = ClusterRuntime(kv=kv, session=self.session, local=record, datapath=self.datapath,
                                      local_endpoints=lambda: list(self.endpoints),
                                      identities_changed=self._identities_changed, debounce=0.01,
                                      retry_interval=0.05)

    def _identities_changed(self) -> int:
        self.identity_calls += 1
        return 0

    def start(self) -> None:  # the session is stepped by hand (the clock is manual)
        self.session.step()
        self.runtime.node_reflector.start()
        self.runtime.ipcache_reflector.start()
        self.runtime.controller.start()

    def stop(self) -> None:
        self.runtime.controller.stop()
        self.runtime.node_reflector.stop()
        self.runtime.ipcache_reflector.stop()

    def add(self, record: EndpointRecord) -> None:
        self.endpoints.append(record)
        self.runtime.endpoints_changed()

    def remote(self) -> dict[ipaddress.IPv4Network | ipaddress.IPv6Network, RemoteEndpoint]:
        view = self.datapath.last
        return dict(view.remote_endpoints) if view else {}

    def node_names(self) -> set[str]:
        view = self.datapath.last
        return {n.name for n in view.nodes} if view else set()


@contextmanager
def cluster(*records: NodeRecord) -> Iterator[tuple[MemoryKv, ManualClock, list[Node]]]:
    clock = ManualClock()
    kv = MemoryKv(clock)
    nodes = [Node(kv, record) for record in records]
    try:
        for n in nodes:
            n.start()
        yield kv, clock, nodes
    finally:
        for n in nodes:
            n.stop()
        kv.close()


def test_endpoints_reach_the_other_nodes_and_leave_with_the_lease() -> None:
    with cluster(node("a", 1, RoutingMode.TUNNEL), node("b", 2, RoutingMode.TUNNEL),
                 node("c", 3, RoutingMode.TUNNEL)) as (kv, clock, (a, b, c)):
        a.add(endpoint(1, "10.200.1.10", 5000, "web"))
        expected = RemoteEndpoint(5000, ipaddress.IPv4Address("192.0.2.1"))
        wait_for(lambda: c.remote().get(net("10.200.1.10/32")) == expected, 5, message="a's endpoint in c's view")
        wait_for(lambda: c.node_names() == {"a", "b"}, 5, message="c sees a and b")
        assert net("10.200.1.10/32") not in a.remote()  # its own endpoint is not remote to a
        # a dies: nothing refreshes its lease; the others keep theirs
        a.stop()
        clock.advance(TTL * 0.6)
        b.session.step()
        c.session.step()
        clock.advance(TTL * 0.6)
        kv.expire_leases()
        wait_for(lambda: not c.remote() and c.node_names() == {"b"}, 5, message="a gone from c")
        wait_for(lambda: b.node_names() == {"c"}, 5, message="a gone from b")


def test_an_endpoint_removed_and_relabelled_is_published_again() -> None:
    with cluster(node("a", 1), node("b", 2)) as (kv, _clock, (a, b)):
        a.add(endpoint(1, "10.200.1.10", 5000, "web"))
        a.add(endpoint(2, "10.200.1.11", 5001, "db"))
        wait_for(lambda: len(b.remote()) == 2, 5, message="both endpoints on b")
        a.endpoints = [endpoint(1, "10.200.1.10", 6000, "web")]
        a.runtime.endpoints_changed()
        wait_for(lambda: b.remote() == {net("10.200.1.10/32"): RemoteEndpoint(6000, None)}, 5,
                 message="relabel and removal on b")
        assert kv.get("cilia/ipcache/10.200.1.11") is None


def test_garbage_in_the_store_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), cluster(node("a", 1), node("b", 2)) as (kv, _clock, (a, b)):
        kv.put("cilia/nodes/evil", b"\x00\x01")
        kv.put("cilia/ipcache/not-an-ip", b"{}")
        kv.put("cilia/ipcache/10.200.1.99", b'{"ip": "10.200.1.99", "identity": "lots"}')
        a.add(endpoint(1, "10.200.1.10", 5000, "web"))
        wait_for(lambda: net("10.200.1.10/32") in b.remote(), 5, message="good entry despite garbage")
        assert b.node_names() == {"a"}
        for key in ("cilia/nodes/evil", "cilia/ipcache/not-an-ip", "cilia/ipcache/10.200.1.99"):
            assert key in caplog.text
        assert set(b.runtime.ipcache.table.garbage()) == {"cilia/ipcache/not-an-ip", "cilia/ipcache/10.200.1.99"}


def test_an_outage_is_made_good_when_the_store_returns() -> None:
    with cluster(node("a", 1), node("b", 2)) as (kv, _clock, (a, b)):
        wait_for(lambda: b.node_names() == {"a"}, 5, message="b sees a")
        kv.set_down(True)
        a.add(endpoint(1, "10.200.1.10", 5000, "web"))
        wait_for(lambda: a.runtime.ipcache.last_error, 5, message="a's publish failed")
        assert a.runtime.controller.pending()
        kv.set_down(False)
        wait_for(lambda: net("10.200.1.10/32") in b.remote(), 10, message="published after the outage")
        wait_for(lambda: not a.runtime.controller.pending(), 5, message="nothing pending on a")


def test_a_lost_lease_is_replaced_and_everything_written_again() -> None:
    with cluster(node("a", 1), node("b", 2)) as (kv, clock, (a, b)):
        a.add(endpoint(1, "10.200.1.10", 5000, "web"))
        wait_for(lambda: net("10.200.1.10/32") in b.remote(), 5, message="published")
        old = a.session.lease
        clock.advance(TTL + 1)  # both leases expire (a long outage)
        kv.expire_leases()
        wait_for(lambda: not b.remote(), 5, message="a's entries expired")
        a.session.step()
        b.session.step()
        assert a.session.lease != old
        wait_for(lambda: net("10.200.1.10/32") in b.remote() and b.node_names() == {"a"}, 5,
                 message="a re-published under its new lease")
        assert kv.get("cilia/nodes/a").lease == a.session.lease  # type: ignore[union-attr]


def test_a_restart_removes_entries_of_endpoints_deleted_meanwhile() -> None:
    with cluster(node("a", 1), node("b", 2)) as (kv, _clock, (a, b)):
        a.add(endpoint(1, "10.200.1.10", 5000, "web"))
        a.add(endpoint(2, "10.200.1.11", 5000, "web2"))
        wait_for(lambda: len(b.remote()) == 2, 5, message="both published")
        a.stop()
        # the agent restarts with one endpoint gone, its lease still alive (same session here)
        restarted = Node(kv, node("a", 1))
        restarted.session = a.session
        restarted.runtime = ClusterRuntime(kv=kv, session=a.session, local=node("a", 1), datapath=restarted.datapath,
                                           local_endpoints=lambda: [endpoint(1, "10.200.1.10", 5000, "web")],
                                           debounce=0.01, retry_interval=0.05)
        restarted.runtime.node_reflector.start()
        restarted.runtime.ipcache_reflector.start()
        restarted.runtime.controller.start()
        try:
            wait_for(lambda: b.remote() == {net("10.200.1.10/32"): RemoteEndpoint(5000, None)}, 5,
                     message="the stale entry removed")
        finally:
            restarted.stop()


def test_view_waits_for_the_first_listing_and_retries_a_failing_datapath() -> None:
    clock = ManualClock()
    kv = MemoryKv(clock)
    kv.set_down(True)
    a = Node(kv, node("a", 1))
    a.start()
    try:
        a.runtime.controller.step()
        assert a.datapath.views == []  # nothing listed yet: the pinned maps keep what they had
        a.datapath.fail = True
        kv.set_down(False)
        a.session.step()
        wait_for(lambda: a.runtime.registry.local.health == "degraded", 5, message="degraded on failure")
        a.datapath.fail = False
        wait_for(lambda: a.datapath.views and a.runtime.registry.local.health == "ok", 5, message="recovered")
        wait_for(lambda: codec.decode_node("cilia/nodes/a", kv.get("cilia/nodes/a").value).health == "ok",  # type: ignore[union-attr]
                 5, message="health published")
    finally:
        a.stop()
        kv.close()


def test_remote_identity_events_become_one_policy_change_per_batch() -> None:
    with cluster(node("a", 1)) as (_kv, _clock, (a,)):
        a.runtime.controller.stop()
        for _ in range(50):
            a.runtime.controller.identity_event(None, True)
        a.runtime.controller.step()
        a.runtime.controller.step()
        assert a.identity_calls == 1
